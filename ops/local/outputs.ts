/** `.local/<env>/outputs.json`: what the app needs from a deploy, written by the deploy itself. */
import * as path from 'node:path';
import { EnvironmentConfig, localDir } from '../../stacks/config';
import { writePrivateFile } from './local-secrets';

export function outputsFile(envName: string): string {
  return path.join(localDir(envName), 'outputs.json');
}

/** Writes the outputs file (mode 0600) from the -secrets stack's outputs. No secret is in them. */
export function writeOutputsFile(env: EnvironmentConfig, stackOutputs: Record<string, unknown>): void {
  const outputs: Record<string, unknown> = { ...stackOutputs, environment: env.name };
  if (env.vault.caCertFile) outputs.vault_ca_cert_file = env.vault.caCertFile;
  // Paths of this machine: not Terraform outputs, so a shared state holds none.
  if (env.postgres.caCertFile) outputs.postgres_ca_cert_file = env.postgres.caCertFile;
  writePrivateFile(outputsFile(env.name), JSON.stringify(outputs, null, 2) + '\n');
}
