import * as path from 'node:path';
import { EnvironmentConfig, localDir } from './config';

/**
 * Where a Vault cluster's local files live, under `.local/<env>/`. Keys are made outside
 * Terraform (ops/vault/vault-cluster.ts), so none is ever in state or in cdk.tf.json.
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

/** The audit log inside each node's volume. */
export const auditLog = (env: EnvironmentConfig) => `${env.docker!.vaultDataDir}/audit/audit.log`;

export const nodeName = (env: EnvironmentConfig, i: number) => `pgvault-${env.name}-vault-${i}`;

/** Node i's config.hcl. Pure and without a secret: the keys are files beside it. */
export function nodeConfig(env: EnvironmentConfig, i: number): string {
  const nodes = env.docker!.vaultNodes!;
  const joins = Array.from({ length: nodes }, (_, j) => j)
    .filter((j) => j !== i)
    .map((j) => `  retry_join {\n    leader_api_addr     = "https://${nodeName(env, j)}:8200"\n    leader_ca_cert_file = "/pgvault/config/ca.pem"\n  }`)
    .join('\n');
  // The text keeps the script's old path (now ops/vault/vault-cluster.ts): its digest is in the
  // -infra stack (configDigests), and any change would restart every node of deployed clusters.
  return `# Made by scripts/vault-cluster.ts; no secret in it (the keys are files beside it).
disable_mlock = true
ui            = false
# Standbys forward every request to the active node: read-after-write, so a secret_id just
# written is valid at once on every node (standby reads are eventually consistent).
disable_standby_reads = true
# What clients reach (published on the host), and what the nodes reach on their network.
api_addr     = "${env.vault.addresses[i]}"
cluster_addr = "https://${nodeName(env, i)}:8201"

listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"
  tls_cert_file   = "/pgvault/config/tls.pem"
  tls_key_file    = "/pgvault/config/tls-key.pem"
  tls_min_version = "tls12"
}

storage "raft" {
  path                   = "${env.docker!.vaultDataDir}/raft"
  node_id                = "${nodeName(env, i)}"
  performance_multiplier = 1
${joins}
}

# OpenBao enables audit devices only from its configuration (the API refuses them).
audit "file" "file" {
  description = "pgvault audit log on the node's volume"
  options {
    file_path = "${auditLog(env)}"
  }
}

seal "static" {
  current_key_id = "pgvault-${env.name}-1"
  current_key    = "file:///pgvault/config/seal.key"
}
`;
}


/**
 * Postgres's TLS and replication files (docker.postgresTls), made by ops/vault/vault-cluster.ts
 * from the environment's CA and bind-mounted read-only at /pgvault/postgres. Each directory is
 * owned by the image's postgres user: Postgres refuses a key that is not its own (mode 0600).
 *   primary/  tls.pem, tls-key.pem, replication.scram (the replication role's SCRAM verifier only)
 *   replica/  tls.pem, tls-key.pem, ca.pem, pgpass (the replication password, for libpq)
 */
export function postgresFiles(env: EnvironmentConfig) {
  const dir = path.join(localDir(env.name), 'postgres');
  return { primaryDir: path.join(dir, 'primary'), replicaDir: path.join(dir, 'replica') };
}

/** The replication role and the primary's slot for the replica; the role carries the environment's mark. */
export function replicationNames(env: EnvironmentConfig): { role: string; slot: string } {
  const prefix = `pgvault_${env.name.replace(/-/g, '_')}`;
  return { role: `${prefix}_replication`, slot: `${prefix}_replica` };
}
