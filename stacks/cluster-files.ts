import * as path from 'node:path';
import { EnvironmentConfig, localDir } from './config';

/**
 * Where a Vault cluster's local files live, under `.local/<env>/`. Keys are made outside
 * Terraform (scripts/vault-cluster.ts), so none is ever in state or in cdk.tf.json.
 */
export function clusterFiles(env: EnvironmentConfig) {
  const dir = localDir(env.name);
  return {
    tlsDir: path.join(dir, 'tls'),
    caCert: path.join(dir, 'tls', 'ca.pem'),
    caKey: path.join(dir, 'tls', 'ca-key.pem'),
    sealKey: path.join(dir, 'vault-seal-key'),
    recoveryKeys: path.join(dir, 'vault-recovery-keys.json'),
    nodesDir: path.join(dir, 'vault'),
  };
}

/** Each node's configuration directory (config.hcl, TLS files, the seal key), bind-mounted read-only. */
export function clusterNodeDirs(env: EnvironmentConfig): string[] {
  const { nodesDir } = clusterFiles(env);
  return Array.from({ length: env.docker?.vaultNodes ?? 0 }, (_, i) => path.join(nodesDir, `node-${i}`));
}
