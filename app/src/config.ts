import * as fs from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import { AppConfigError } from './errors';
import { jwtLogin, LoginMethod, readSecretSetting, SecretIdSource, wrappedSecretIdLogin } from './login';

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
  /**
   * How to log in, when not with the secret_id above: a JWT file (PGVAULT_AUTH=jwt) or a
   * response-wrapped secret_id (PGVAULT_SECRET_ID_WRAPPED_FILE). @default AppRole with secretId
   */
  readonly login?: LoginMethod;
  readonly mountPath: string;
  readonly roles: readonly string[];
  /** Each role's max TTL, so leases rotate before they reach it. */
  readonly roleMaxTtlSeconds?: Readonly<Record<string, number>>;
  readonly postgres: {
    readonly host: string;
    readonly port: number;
    readonly database: string;
    readonly sslmode: string;
    /** PEM of the CA bundle that verify-ca and verify-full check Postgres's certificate with. @default Node's CA store */
    readonly caCert?: string;
  };
  /** Where each role's users connect. @default every role at postgres.host:postgres.port, on the primary */
  readonly roleEndpoints?: Readonly<Record<string, RoleEndpoint>>;
}

/** Where one role's users connect: the primary, or a streaming replica (where new users appear with replication lag). */
export interface RoleEndpoint {
  readonly host: string;
  readonly port: number;
  readonly target: 'primary' | 'replica';
  /** The database the role's users may connect to. @default postgres.database */
  readonly database?: string;
}

/** The endpoint of `role`: its own when the deploy gave one, else the primary's. */
export function roleEndpoint(cfg: AppConfig, role: string): RoleEndpoint {
  return cfg.roleEndpoints?.[role] ?? { host: cfg.postgres.host, port: cfg.postgres.port, target: 'primary' };
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
  /** The JWT auth mount and role, when the environment sets appAccess.jwt. */
  readonly jwt_mount?: string;
  readonly jwt_role_name?: string;
  readonly vault_ca_cert_file?: string;
  readonly postgres_ca_cert_file?: string;
  readonly role_endpoints?: Record<string, RoleEndpoint>;
  /** Every app of the environment, by name. */
  readonly apps?: Record<string, DeployApp>;
  /** The app these outputs were read for (readOutputs). */
  readonly app?: string;
  readonly policy_name?: string;
}

/** One app's entry in the outputs: its AppRole and the roles it may read. */
export interface DeployApp {
  readonly approle_role_name: string;
  readonly approle_role_id: string;
  readonly policy_name?: string;
  readonly roles: string[];
  /** The app's JWT role, when it has one. */
  readonly jwt_role_name?: string;
}

/** The app the top-level AppRole outputs describe. */
export const DEFAULT_APP = 'api';

/**
 * Reads a deploy's outputs for one app: its AppRole (`approle_role_name`, `approle_role_id`) and
 * its roles replace the top-level ones. The app is `app`, else PGVAULT_APP, else the top-level
 * AppRole outputs (the app named "api", or the only app of an environment without "apps").
 */
export function readOutputs(file: string, app?: string, env: NodeJS.ProcessEnv = process.env): DeployOutputs {
  let raw: any;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e: any) {
    throw new AppConfigError('APP_OUTPUTS', `cannot read deploy outputs from ${file} (${e.code ?? e.message}); deploy the environment first: npm run deploy -- <env>`);
  }
  for (const k of ['vault_address', 'postgres_host', 'postgres_port', 'postgres_database', 'mount_path', 'roles', 'approle_mount']) {
    if (raw[k] === undefined) {
      throw new AppConfigError('APP_OUTPUTS', `${file}: output "${k}" is missing; redeploy the environment (npm run deploy -- <env>)`);
    }
  }
  const apps: Record<string, DeployApp> | undefined = raw.apps;
  const known = apps ? Object.keys(apps).sort() : [];
  // No app chosen: the one the top-level AppRole outputs describe, with its roles (not every role).
  const name = app ?? (env.PGVAULT_APP || (apps?.[DEFAULT_APP] ? DEFAULT_APP : undefined));
  if (name === undefined) {
    if (raw.approle_role_id === undefined) {
      throw new AppConfigError(
        'APP_NAME',
        `${file}: no app chosen, and the environment has no app named "${DEFAULT_APP}" (its apps: ${known.map((a) => `"${a}"`).join(', ') || 'none'}); ` +
          'set PGVAULT_APP (or pass the app name) to one of them.',
      );
    }
    return raw as DeployOutputs;
  }
  const chosen = apps?.[name];
  if (!chosen) {
    if (!apps && name === DEFAULT_APP && raw.approle_role_id !== undefined) return raw as DeployOutputs;
    throw new AppConfigError(
      'APP_NAME',
      apps
        ? `${file}: app "${name}" (${app !== undefined ? 'as given' : 'PGVAULT_APP'}) is not one of the environment's apps: ${known.map((a) => `"${a}"`).join(', ')}; set it to one of them, or add it under "apps" in the environment file and deploy again.`
        : `${file}: app "${name}" (${app !== undefined ? 'as given' : 'PGVAULT_APP'}) is unknown: these outputs list no apps; redeploy the environment (npm run deploy -- <env>), or leave PGVAULT_APP unset.`,
    );
  }
  return { ...raw, app: name, approle_role_name: chosen.approle_role_name, approle_role_id: chosen.approle_role_id, policy_name: chosen.policy_name, roles: [...chosen.roles], jwt_role_name: chosen.jwt_role_name } as DeployOutputs;
}

/** A secret_id source that reads `file` at every login, so an orchestrator can refresh it. */
export function secretIdFile(file: string): SecretIdSource {
  return () => readSecretSetting('PGVAULT_SECRET_ID_FILE', file, 'the AppRole secret_id', 'APP_SECRET_ID');
}

/** The login methods other than AppRole with a plain secret_id, chosen by PGVAULT_AUTH and PGVAULT_SECRET_ID_WRAPPED_FILE. */
function loginFromEnv(outputs: DeployOutputs, env: NodeJS.ProcessEnv): LoginMethod | undefined {
  const auth = env.PGVAULT_AUTH || 'approle';
  if (auth !== 'approle' && auth !== 'jwt') {
    throw new AppConfigError('APP_AUTH', `PGVAULT_AUTH is "${auth}"; expected "approle" (the default) or "jwt" (with PGVAULT_JWT_FILE)`);
  }
  if (auth === 'jwt') {
    if (!env.PGVAULT_JWT_FILE) throw new AppConfigError('APP_JWT', 'PGVAULT_AUTH is "jwt" but PGVAULT_JWT_FILE is not set; set it to the file holding the workload\'s identity token (read again at every login)');
    if (!outputs.jwt_mount || !outputs.jwt_role_name) {
      throw new AppConfigError(
        'APP_JWT',
        `PGVAULT_AUTH is "jwt" but the deploy outputs have no ${outputs.jwt_mount ? `JWT role for app "${outputs.app ?? DEFAULT_APP}"` : 'jwt_mount'}: set "appAccess.jwt" in the environment file (and, for an app other than "${DEFAULT_APP}", "apps.<app>.jwt.boundSubject"), then deploy again (npm run deploy -- <env>)`,
      );
    }
    return jwtLogin({ mount: outputs.jwt_mount, role: outputs.jwt_role_name, file: env.PGVAULT_JWT_FILE });
  }
  if (env.PGVAULT_SECRET_ID_WRAPPED_FILE) {
    for (const other of ['PGVAULT_SECRET_ID_FILE', 'PGVAULT_SECRET_ID']) {
      if (env[other]) throw new AppConfigError('APP_SECRET_ID', `both PGVAULT_SECRET_ID_WRAPPED_FILE and ${other} are set; expected one source of the secret_id: unset ${other}`);
    }
    return wrappedSecretIdLogin({ mount: outputs.approle_mount, roleId: outputs.approle_role_id, roleName: outputs.approle_role_name, file: env.PGVAULT_SECRET_ID_WRAPPED_FILE });
  }
  return undefined;
}

/**
 * Builds the app's configuration. The secret_id comes from `secretId` (with
 * `secretIdSource` for later logins), or else from PGVAULT_SECRET_ID_FILE (read again at
 * every login), or else from PGVAULT_SECRET_ID.
 */
export function appConfigFromOutputs(
  outputs: DeployOutputs,
  opts: { secretId?: string; secretIdSource?: SecretIdSource; secretIdFrom?: string; login?: LoginMethod; env?: NodeJS.ProcessEnv } = {},
): AppConfig {
  const env = opts.env ?? process.env;
  let secretId = opts.secretId;
  let secretIdSource = opts.secretIdSource;
  let secretIdFrom = opts.secretIdFrom ?? (secretId ? 'the caller' : undefined);
  const login = opts.login ?? (secretId ? undefined : loginFromEnv(outputs, env));
  if (login) {
    secretId = '';
    secretIdFrom = login.from;
  }
  if (!login && !secretId && env.PGVAULT_SECRET_ID_FILE) {
    secretIdSource ??= secretIdFile(env.PGVAULT_SECRET_ID_FILE);
    secretId = secretIdFile(env.PGVAULT_SECRET_ID_FILE)() as string;
    secretIdFrom = `PGVAULT_SECRET_ID_FILE (${env.PGVAULT_SECRET_ID_FILE})`;
  }
  if (!login && !secretId && env.PGVAULT_SECRET_ID) {
    secretId = env.PGVAULT_SECRET_ID;
    secretIdFrom = 'PGVAULT_SECRET_ID';
  }
  if (!login && !secretId) {
    throw new AppConfigError('APP_SECRET_ID', 'no AppRole secret_id: set PGVAULT_SECRET_ID_FILE (a file holding it), PGVAULT_SECRET_ID_WRAPPED_FILE (a response-wrapped one), or PGVAULT_AUTH=jwt with PGVAULT_JWT_FILE');
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
  let postgresCaCert: string | undefined;
  const pgCaFile = env.PGVAULT_POSTGRES_CACERT || outputs.postgres_ca_cert_file;
  if (pgCaFile) {
    try {
      postgresCaCert = fs.readFileSync(pgCaFile, 'utf8');
    } catch (e: any) {
      throw new AppConfigError('APP_CA', `cannot read Postgres's CA certificate from ${pgCaFile} (${e.code}); set PGVAULT_POSTGRES_CACERT (or "postgres.caCertFile" in the environment) to a PEM file`);
    }
  }
  const cfg: AppConfig = {
    vaultAddress: outputs.vault_address,
    vaultAddresses: outputs.vault_addresses?.length ? outputs.vault_addresses : [outputs.vault_address],
    vaultCaCert,
    approleMount: outputs.approle_mount,
    roleId: outputs.approle_role_id,
    secretId: secretId ?? '',
    secretIdSource,
    secretIdFrom,
    login,
    mountPath: outputs.mount_path,
    roles: outputs.roles,
    roleMaxTtlSeconds: outputs.role_max_ttl_seconds,
    postgres: {
      host: outputs.postgres_host,
      port: Number(outputs.postgres_port),
      database: outputs.postgres_database,
      sslmode: outputs.postgres_sslmode ?? 'disable',
      caCert: postgresCaCert,
    },
    roleEndpoints: outputs.role_endpoints
      ? Object.fromEntries(Object.entries(outputs.role_endpoints).map(([r, e]) => [r, { host: e.host, port: Number(e.port), target: e.target === 'replica' ? 'replica' : 'primary', ...(e.database ? { database: e.database } : {}) }]))
      : undefined,
  };
  // The secret_id must not show when the config is logged or inspected.
  Object.defineProperty(cfg, 'secretId', { value: secretId ?? '', enumerable: false });
  return cfg;
}

/** The TLS options of a pg connection: false for none. */
export type PgSslOptions = false | ConnectionOptions;

/**
 * The pg `ssl` option for a libpq sslmode, with libpq's meanings:
 * - `disable`: no TLS.
 * - `require`: TLS, the certificate not checked; with a CA given, as `verify-ca` (libpq does
 *   the same when a root CA file exists).
 * - `verify-ca`: TLS, the chain checked against the CA; the host name NOT checked.
 * - `verify-full`: TLS, the chain and the host name (or IP) checked.
 * Without `ca`, the chains are checked against Node's CA store.
 */
export function pgSsl(sslmode: string | undefined, opts: { ca?: string | Buffer } = {}): PgSslOptions {
  const ca = opts.ca ? { ca: opts.ca } : {};
  switch (sslmode ?? 'disable') {
    case 'disable':
      return false;
    case 'require':
      return opts.ca ? pgSsl('verify-ca', opts) : { rejectUnauthorized: false };
    case 'verify-ca':
      return { rejectUnauthorized: true, ...ca, checkServerIdentity: () => undefined };
    case 'verify-full':
      return { rejectUnauthorized: true, ...ca };
    default:
      throw new AppConfigError('APP_SSLMODE', `sslmode is "${sslmode}"; expected one of disable, require, verify-ca, verify-full (libpq's prefer and allow fall back to plain text, which this client never does)`);
  }
}
