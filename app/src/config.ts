import * as fs from 'node:fs';
import { AppConfigError } from './errors';
import type { SecretIdSource } from './vault';

/** What the app needs, from a deployed environment's outputs.json plus its secret_id. */
export interface AppConfig {
  readonly vaultAddress: string;
  /** Every node of a Vault cluster, tried in turn; [vaultAddress] for a single server. */
  readonly vaultAddresses?: readonly string[];
  /** PEM of a CA to trust for Vault's TLS, if any. TLS verification is never switched off. */
  readonly vaultCaCert?: string;
  readonly approleMount: string;
  readonly roleId: string;
  /** The secret_id read when the config was built. */
  readonly secretId: string;
  /** Where every login gets its secret_id (a file is read again each time). @default the fixed secretId */
  readonly secretIdSource?: SecretIdSource;
  /** Where the secret_id comes from, for messages (never the value). */
  readonly secretIdFrom?: string;
  readonly mountPath: string;
  readonly roles: readonly string[];
  /** Each role's max TTL, so leases rotate before they reach it. */
  readonly roleMaxTtlSeconds?: Readonly<Record<string, number>>;
  readonly postgres: {
    readonly host: string;
    readonly port: number;
    readonly database: string;
    readonly sslmode: string;
  };
}

/** The flat outputs a deploy writes to `.local/<env>/outputs.json`. */
export interface DeployOutputs {
  readonly vault_address: string;
  readonly vault_addresses?: string[];
  readonly postgres_host: string;
  readonly postgres_port: number;
  readonly postgres_database: string;
  readonly postgres_sslmode: string;
  readonly mount_path: string;
  readonly roles: string[];
  readonly role_max_ttl_seconds?: Record<string, number>;
  readonly approle_mount: string;
  readonly approle_role_name: string;
  readonly approle_role_id: string;
  readonly vault_ca_cert_file?: string;
}

export function readOutputs(file: string): DeployOutputs {
  let raw: any;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e: any) {
    throw new AppConfigError('APP_OUTPUTS', `cannot read deploy outputs from ${file} (${e.code ?? e.message}); deploy the environment first: npm run deploy -- <env>`);
  }
  for (const k of ['vault_address', 'postgres_host', 'postgres_port', 'postgres_database', 'mount_path', 'roles', 'approle_mount', 'approle_role_id']) {
    if (raw[k] === undefined) {
      throw new AppConfigError('APP_OUTPUTS', `${file}: output "${k}" is missing; redeploy the environment (npm run deploy -- <env>)`);
    }
  }
  return raw as DeployOutputs;
}

/** A secret_id source that reads `file` at every login, so an orchestrator can refresh it. */
export function secretIdFile(file: string): SecretIdSource {
  return () => {
    let value: string;
    try {
      value = fs.readFileSync(file, 'utf8').trim();
    } catch (e: any) {
      throw new AppConfigError('APP_SECRET_ID', `PGVAULT_SECRET_ID_FILE names ${file}, which cannot be read (${e.code}); point it at a file holding the AppRole secret_id`);
    }
    if (!value) throw new AppConfigError('APP_SECRET_ID', `PGVAULT_SECRET_ID_FILE names ${file}, which is empty; write the AppRole secret_id into it`);
    return value;
  };
}

/**
 * Builds the app's configuration. The secret_id comes from `secretId` (with
 * `secretIdSource` for later logins), or else from PGVAULT_SECRET_ID_FILE (read again at
 * every login), or else from PGVAULT_SECRET_ID.
 */
export function appConfigFromOutputs(
  outputs: DeployOutputs,
  opts: { secretId?: string; secretIdSource?: SecretIdSource; secretIdFrom?: string; env?: NodeJS.ProcessEnv } = {},
): AppConfig {
  const env = opts.env ?? process.env;
  let secretId = opts.secretId;
  let secretIdSource = opts.secretIdSource;
  let secretIdFrom = opts.secretIdFrom ?? (secretId ? 'the caller' : undefined);
  if (!secretId && env.PGVAULT_SECRET_ID_FILE) {
    secretIdSource ??= secretIdFile(env.PGVAULT_SECRET_ID_FILE);
    secretId = secretIdFile(env.PGVAULT_SECRET_ID_FILE)() as string;
    secretIdFrom = `PGVAULT_SECRET_ID_FILE (${env.PGVAULT_SECRET_ID_FILE})`;
  }
  if (!secretId && env.PGVAULT_SECRET_ID) {
    secretId = env.PGVAULT_SECRET_ID;
    secretIdFrom = 'PGVAULT_SECRET_ID';
  }
  if (!secretId) {
    throw new AppConfigError('APP_SECRET_ID', 'no AppRole secret_id: set PGVAULT_SECRET_ID_FILE (a file holding it) or PGVAULT_SECRET_ID');
  }
  let vaultCaCert: string | undefined;
  const caFile = env.PGVAULT_VAULT_CACERT || outputs.vault_ca_cert_file;
  if (caFile) {
    try {
      vaultCaCert = fs.readFileSync(caFile, 'utf8');
    } catch (e: any) {
      throw new AppConfigError('APP_CA', `cannot read Vault's CA certificate from ${caFile} (${e.code}); set PGVAULT_VAULT_CACERT to a PEM file`);
    }
  }
  const cfg: AppConfig = {
    vaultAddress: outputs.vault_address,
    vaultAddresses: outputs.vault_addresses?.length ? outputs.vault_addresses : [outputs.vault_address],
    vaultCaCert,
    approleMount: outputs.approle_mount,
    roleId: outputs.approle_role_id,
    secretId,
    secretIdSource,
    secretIdFrom,
    mountPath: outputs.mount_path,
    roles: outputs.roles,
    roleMaxTtlSeconds: outputs.role_max_ttl_seconds,
    postgres: {
      host: outputs.postgres_host,
      port: Number(outputs.postgres_port),
      database: outputs.postgres_database,
      sslmode: outputs.postgres_sslmode ?? 'disable',
    },
  };
  // The secret_id must not show when the config is logged or inspected.
  Object.defineProperty(cfg, 'secretId', { value: secretId, enumerable: false });
  return cfg;
}

/** The pg `ssl` option for a libpq-style sslmode: off for "disable", certificate checks for "verify-*". */
export function pgSsl(sslmode: string | undefined): false | { rejectUnauthorized: boolean } {
  return !sslmode || sslmode === 'disable' ? false : { rejectUnauthorized: sslmode.startsWith('verify') };
}
