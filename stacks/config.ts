import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ErrorObject } from 'ajv';
import * as schema from './environment.schema.json';
import * as errors from './errors';
import { schemaValidator } from './schema-validator';
import { DEFAULT_CONNECTION_LIMIT, DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS, DEFAULT_STATEMENT_TIMEOUT_SECONDS } from './statements';
import { accessGrants, REPLICA_PRIVILEGES, TableGrant, TablePrivilege } from './statements';

/** The repository root: environments, .local and cdktf.out hang off it. */
export const REPO_ROOT = path.resolve(__dirname, '..', '..');

/** Where environment files live. PGVAULT_ENVIRONMENTS_DIR overrides it (tests use a temporary one). */
export function environmentsDir(): string {
  return process.env.PGVAULT_ENVIRONMENTS_DIR
    ? path.resolve(process.env.PGVAULT_ENVIRONMENTS_DIR)
    : path.join(REPO_ROOT, 'environments');
}

/** Per-environment local files (generated secrets, state, outputs), mode 0700. */
export function localDir(env: string): string {
  return path.join(process.env.PGVAULT_LOCAL_DIR ? path.resolve(process.env.PGVAULT_LOCAL_DIR) : path.join(REPO_ROOT, '.local'), env);
}

export type Access = 'read' | 'write';

/**
 * How a role is shaped: the `access` shorthands read and write, `access: migrate` (schema
 * migrations as the owner role), or `grants` (the privileges the file lists).
 */
export type RoleAccess = Access | 'migrate' | 'grants';

/** Where a role's users connect: the primary, or its streaming replica. */
export type RoleTarget = 'primary' | 'replica';

export interface RoleConfig {
  readonly name: string;
  readonly access: RoleAccess;
  /** The privileges the role's group role holds: `grants` as declared, or what `access: read|write` stands for; none for migrate. */
  readonly grants: readonly TableGrant[];
  /** The NOLOGIN group role each user is granted: pgvault_<env>_read|_write for the shorthands, pgvault_<env>_g_<role> otherwise. */
  readonly groupRole: string;
  readonly defaultTtlSeconds: number;
  readonly maxTtlSeconds: number;
  /** @default "primary" */
  readonly target: RoleTarget;
  /** CONNECTION LIMIT of each of the role's users. @default 20 */
  readonly connectionLimit: number;
  /** The database its users connect to, one of "postgres.databases". @default postgres.database */
  readonly database: string;
  /** The reaper ends a statement running longer; also the users' statement_timeout. @default 300 */
  readonly statementTimeoutSeconds: number;
  /** The reaper ends a transaction idle longer; also the users' idle_in_transaction_session_timeout. @default 60 */
  readonly idleInTransactionTimeoutSeconds: number;
}

/**
 * One app of the environment: its own AppRole and policy, which reach only its roles' creds
 * and leases. Without "apps" in the file, one app named `api` has every role, under the
 * AppRole name of "appAccess.roleName".
 */
export interface AppConfig {
  readonly name: string;
  /** The names of the roles it may read credentials for, sorted. */
  readonly roles: readonly string[];
  /** The AppRole's and the policy's name: "appAccess.roleName" alone (no "apps"), else "<roleName>-<app>". */
  readonly roleName: string;
  /** apps.<app>.jwt.boundSubject: the subject of the app's own JWT role; undefined: none (api: appAccess.jwt's). */
  readonly jwtBoundSubject?: string;
}

/** The app that the top-level AppRole outputs describe, and that the runtime and `serve` use by default. */
export const DEFAULT_APP = 'api';

/** A Postgres server as Vault (host, port) and as the app and the bootstrap (clientHost, clientPort) reach it. */
export interface PostgresEndpoint {
  readonly host: string;
  readonly port: number;
  readonly clientHost: string;
  readonly clientPort: number;
}

/** A validated environment with every default resolved. */
export interface EnvironmentConfig {
  readonly name: string;
  readonly file: string;
  readonly infrastructure: 'docker' | 'existing';
  readonly docker?: {
    readonly postgresImage: string;
    readonly vaultImage: string;
    readonly postgresHostPort: number;
    readonly vaultHostPort: number;
    /** Nodes of an OpenBao Raft cluster; undefined: one dev server. */
    readonly vaultNodes?: number;
    /** A cluster node's writable directory (its volume: raft/ and audit/), owned by the image's user. */
    readonly vaultDataDir: string;
    /** Postgres accepts TLS connections only, with certificates from the environment's CA. */
    readonly postgresTls: boolean;
    /** One streaming replica, published on this host port; undefined: none. */
    readonly postgresReplica?: { readonly hostPort: number };
  };
  readonly postgres: {
    /** Host and port as Vault sees them. For docker, the container's name on the private network. */
    readonly host: string;
    readonly port: number;
    /** Host and port as the app and the bootstrap see them. */
    readonly clientHost: string;
    readonly clientPort: number;
    readonly database: string;
    /**
     * Every database the environment's roles use: postgres.database first, then the others the
     * file declares ("postgres.databases"). Each has its own Vault connection and bootstrap.
     */
    readonly databases: readonly string[];
    readonly adminUser: string;
    readonly adminPasswordFile: string;
    readonly sslmode: 'disable' | 'require' | 'verify-ca' | 'verify-full';
    /** The CA bundle (PEM) the app, the bootstrap and the tests verify Postgres with; undefined: Node's CA store. */
    readonly caCertFile?: string;
    /** The same CA as a path where Vault runs (sslrootcert of Vault's connection); undefined: Vault's system store. */
    readonly caCertFileOnVault?: string;
    /** The streaming replica that roles with target "replica" connect to. */
    readonly replica?: PostgresEndpoint;
    /**
     * What `destroy` does with the app's schema and its data. Docker environments are torn
     * down whole (true); on existing servers the schema, its data and its owner role are kept
     * unless the environment file sets "postgres.dropDataOnDestroy": true.
     */
    readonly dropDataOnDestroy: boolean;
    /**
     * The bootstrap revokes CONNECT from PUBLIC on every other database, so dynamic users reach
     * only the app's. Docker: true (the container's postgres and template1); existing: false, and
     * the bootstrap reports each database where PUBLIC still has CONNECT.
     */
    readonly restrictPublicConnect: boolean;
  };
  readonly vault: {
    readonly address: string;
    /** Every address the app may use (a cluster's nodes); [address] otherwise. */
    readonly addresses: readonly string[];
    readonly caCertFile?: string;
    readonly tlsServerName?: string;
    readonly tokenFile: string;
  };
  readonly secretsEngine: {
    readonly mountPath: string;
    readonly connectionName: string;
    readonly vaultUser: string;
    readonly setupPasswordFile: string;
    readonly setupPasswordVersion: number;
    readonly maxOpenConnections: number;
    /**
     * SCRAM-SHA-256 iterations of the passwords Vault sets (PostgreSQL 16+); undefined: Postgres's
     * own 4096. Opt-in speed: see docs/measurements.md, "Where an issuance's time goes".
     */
    readonly scramIterations?: number;
  };
  readonly roles: readonly RoleConfig[];
  /** Where Terraform keeps each stack's state. */
  readonly state: StateConfig;
  readonly appAccess: {
    readonly approleMount: string;
    readonly roleName: string;
    readonly tokenTtlSeconds: number;
    readonly tokenMaxTtlSeconds: number;
    readonly secretIdTtlSeconds: number;
    /** Logins one secret_id serves; 0: unlimited. */
    readonly secretIdNumUses: number;
    /** Where secret_ids may log in from, and where tokens may be used from; empty: anywhere. */
    readonly secretIdBoundCidrs: readonly string[];
    readonly tokenBoundCidrs: readonly string[];
    /** Workload-identity login; undefined: none. */
    readonly jwt?: JwtAccessConfig;
  };
  /** The apps, sorted by name; one (`api`, every role) when the file has no "apps". */
  readonly apps: readonly AppConfig[];
  /** Whether the file declares "apps": then every app's AppRole is named "<roleName>-<app>". */
  readonly appsDeclared: boolean;
  /**
   * Names of the Postgres objects the bootstrap creates, per environment so that several
   * environments can share one server. Each carries the comment `mark`.
   */
  readonly database: {
    readonly schema: string;
    /** Owns the schema and app.items. */
    readonly ownerRole: string;
    /**
     * Takes over what a revoked dynamic user owned. It holds no privilege on any data (only the
     * CREATE in the schema that a change of owner needs) and owns nothing
     * else, so a SECURITY DEFINER function or a view left behind by a writer can do nothing.
     */
    readonly retiredRole: string;
    readonly groupRoles: Readonly<Record<Access, string>>;
    /** The COMMENT that marks an object as created by this environment: `pgvault:<env>`. */
    readonly mark: string;
  };
}

/** appAccess.jwt, resolved: the issuer's key files, or its JWKS or discovery URL. */
export interface JwtAccessConfig {
  readonly mount: string;
  readonly roleName: string;
  /** Exactly one of the three. The files (absolute) are read at synth (stacks/jwt-access.ts). */
  readonly publicKeyFiles?: readonly string[];
  readonly jwksUrl?: string;
  readonly oidcDiscoveryUrl?: string;
  readonly boundIssuer?: string;
  readonly boundAudiences: readonly string[];
  readonly boundSubject: string;
  readonly userClaim: string;
}

/**
 * `local`: one file per stack under `.local/<env>/state/`. `pg`: Terraform's pg backend, one
 * schema per stack, locked with the backend's advisory lock; the connection string is read from
 * `connectionFile` at deploy time only (PG_CONN_STR), never synthesized.
 */
export type StateConfig =
  | { readonly backend: 'local' }
  | { readonly backend: 'pg'; readonly connectionFile: string; readonly schemaPrefix: string };

export const DEFAULT_STATE_SCHEMA_PREFIX = 'pgvault_state';

/**
 * The project's images, the ones every test runs, online and offline: built by the toolchain
 * (toolchain/versions.env names them the same; a unit test checks it). OpenBao serves the
 * single dev server and the cluster alike (seal "static" exists only in OpenBao).
 */
export const DEFAULT_POSTGRES_IMAGE = 'pgvault/postgres:17-trixie-local';
export const DEFAULT_VAULT_IMAGE = 'pgvault/vault:openbao-2.7.2-trixie-local';

/** HashiCorp Vault's images: possible for a single dev server (not tested here), never for a cluster. */
const HASHICORP_VAULT_IMAGE = /^(docker\.io\/)?(hashicorp\/vault|library\/vault|vault)(:|@|$)/;

/**
 * The Vault image: the environment file's docker.vaultImage (the explicit way to another
 * server), else VAULT_IMAGE (the toolchain's name for the project's image), else the default.
 * A cluster takes no VAULT_IMAGE, so no shell variable meant for one server changes it.
 */
export function resolveVaultImage(file: string, fromFile: string | undefined, cluster: boolean, variable = process.env.VAULT_IMAGE): string {
  const image = fromFile || (cluster ? undefined : variable) || DEFAULT_VAULT_IMAGE;
  if (cluster && HASHICORP_VAULT_IMAGE.test(image)) {
    throw errors.schemaViolation(file, 'docker.vaultImage', image, `an OpenBao image (default ${DEFAULT_VAULT_IMAGE}): a cluster auto-unseals with seal "static", which HashiCorp Vault does not have`);
  }
  return image;
}

/**
 * The Postgres image: the environment file's docker.postgresImage (explicit, so it wins), else
 * POSTGRES_IMAGE (a user's own, which the toolchain's environment keeps, else the project's image
 * it exports), else the default.
 */
export function resolvePostgresImage(fromFile: string | undefined, variable = process.env.POSTGRES_IMAGE): string {
  return fromFile || variable || DEFAULT_POSTGRES_IMAGE;
}

const ENV_NAME = /^[a-z][a-z0-9-]{0,31}$/;

const validateSchema = schemaValidator(schema, { allErrors: true, strict: false });

/** Lists the environments: one per `*.json` file (except the schema). */
export function listEnvironments(dir = environmentsDir()): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.json') && !f.endsWith('.schema.json'))
    .map((f) => f.slice(0, -'.json'.length))
    .sort();
}

/** Reads, validates and resolves one environment. Throws a ConfigError that names the file and setting. */
export function loadEnvironment(name: string, dir = environmentsDir()): EnvironmentConfig {
  if (!ENV_NAME.test(name)) throw errors.invalidEnvironmentName(name);
  const file = path.join(dir, `${name}.json`);
  if (!fs.existsSync(file)) throw errors.unknownEnvironment(name, dir, listEnvironments(dir));
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw errors.unreadableFile(file, e);
  }
  return resolveEnvironment(name, file, raw);
}

/** Validates a parsed environment document and resolves its defaults. Pure: no file access. */
export function resolveEnvironment(name: string, file: string, raw: unknown): EnvironmentConfig {
  if (!validateSchema(raw)) throw fromAjv(file, raw, validateSchema.errors ?? []);
  const doc = raw as any;
  const local = localDir(name);
  const fromRepo = (p: string) => path.resolve(REPO_ROOT, p);

  const databaseName: string = doc.postgres?.database ?? 'app';
  const roles: RoleConfig[] = Object.entries(doc.roles as Record<string, any>)
    .map(([roleName, r]) => ({
      name: roleName,
      ...roleShape(file, name, roleName, r),
      defaultTtlSeconds: r.defaultTtlSeconds,
      maxTtlSeconds: r.maxTtlSeconds,
      target: r.target ?? 'primary',
      connectionLimit: r.connectionLimit ?? DEFAULT_CONNECTION_LIMIT,
      database: r.database ?? databaseName,
      statementTimeoutSeconds: r.statementTimeoutSeconds ?? DEFAULT_STATEMENT_TIMEOUT_SECONDS,
      idleInTransactionTimeoutSeconds: r.idleInTransactionTimeoutSeconds ?? DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS,
    }))
    .sort((a, b) => a.name.localeCompare(b.name));
  for (const r of roles) {
    if (r.defaultTtlSeconds > r.maxTtlSeconds) throw errors.ttlOrder(file, r.name, r.defaultTtlSeconds, r.maxTtlSeconds);
    const twin = roles.find((o) => o !== r && o.groupRole === r.groupRole && (o.access === 'grants' || o.access === 'migrate'));
    if (twin && r.name < twin.name) {
      throw errors.schemaViolation(file, `roles.${twin.name}`, twin.name, `a name that differs from "${r.name}" by more than "-" and "_": both would get the group role ${r.groupRole}. Rename one`);
    }
  }

  const pg = doc.postgres ?? {};
  const vault = doc.vault ?? {};
  const databases: string[] = [databaseName, ...((pg.databases ?? []) as string[]).filter((d) => d !== databaseName)];
  for (const r of roles) {
    if (!databases.includes(r.database)) {
      throw errors.schemaViolation(file, `roles.${r.name}.database`, r.database, `one of the environment's databases (${databases.map((d) => `"${d}"`).join(', ')}): add "${r.database}" to "postgres.databases", or name one of those`);
    }
  }
  for (const [i, r] of roles.entries()) {
    if (r.database === databaseName) continue;
    if (r.access === 'grants' || r.access === 'migrate') {
      throw errors.schemaViolation(
        file,
        `roles.${r.name}.database`,
        r.database,
        `"${databaseName}" (postgres.database) for a role with ${r.access === 'grants' ? '"grants"' : '"access": "migrate"'}: shaped and migrate roles live in the environment's first database for now. Use "access": "read" or "write" in "${r.database}", or move the role to "${databaseName}"`,
      );
    }
    // Another database's shorthand roles have that database's group roles (see forDatabase).
    roles[i] = { ...r, groupRole: `pgvault_${name.replace(/-/g, '_')}_${r.database}_${r.access}` };
  }
  let docker: EnvironmentConfig['docker'];
  let postgres: EnvironmentConfig['postgres'];
  let vaultResolved: EnvironmentConfig['vault'];

  if (doc.infrastructure === 'docker') {
    const d = doc.docker ?? {};
    docker = {
      postgresImage: resolvePostgresImage(d.postgresImage),
      vaultImage: resolveVaultImage(file, d.vaultImage, d.vaultNodes !== undefined),
      postgresHostPort: d.postgresHostPort ?? 15432,
      vaultHostPort: d.vaultHostPort ?? 18200,
      vaultNodes: d.vaultNodes,
      vaultDataDir: '',
      postgresTls: d.postgresTls ?? false,
      postgresReplica: d.postgresReplica ? { hostPort: d.postgresReplica.hostPort ?? (d.postgresHostPort ?? 15432) + 1 } : undefined,
    };
    // The official OpenBao image's user owns /openbao/file; the offline image's user owns /vault.
    docker = { ...docker, vaultDataDir: d.vaultDataDir ?? (/(^|\/)openbao\/openbao(:|@|$)/.test(docker.vaultImage) ? '/openbao/file' : '/vault') };
    const vaultPorts = Array.from({ length: docker.vaultNodes ?? 1 }, (_, i) => docker!.vaultHostPort + i);
    if (vaultPorts.includes(docker.postgresHostPort)) throw errors.portClash(file, docker.postgresHostPort);
    const replicaPort = docker.postgresReplica?.hostPort;
    if (replicaPort !== undefined && [...vaultPorts, docker.postgresHostPort].includes(replicaPort)) {
      throw errors.schemaViolation(file, 'docker.postgresReplica.hostPort', replicaPort, `a port other than docker.postgresHostPort (${docker.postgresHostPort}) and the Vault ports (${vaultPorts.join(', ')})`);
    }
    if (docker.postgresTls && !docker.vaultNodes) {
      throw errors.schemaViolation(file, 'docker.postgresTls', true, 'false, or "docker.vaultNodes" set as well: the certificates come from the CA the deploy makes for a Vault cluster');
    }
    if (docker.postgresReplica && !docker.postgresTls) {
      throw errors.schemaViolation(file, 'docker.postgresTls', d.postgresTls, 'true when "docker.postgresReplica" is set: replication and the replica\'s clients use TLS');
    }
    if (docker.postgresTls && pg.sslmode === 'disable') {
      throw errors.schemaViolation(file, 'postgres.sslmode', 'disable', '"require", "verify-ca" or "verify-full": with "docker.postgresTls" Postgres accepts TLS connections only');
    }
    for (const s of ['host', 'port', 'adminPasswordFile', 'dropDataOnDestroy', 'caCertFile', 'caCertFileOnVault', 'replica'] as const) {
      if (pg[s] !== undefined) throw errors.schemaViolation(file, `postgres.${s}`, pg[s], 'no value: with "infrastructure": "docker" it is set by the container');
    }
    for (const s of ['address', 'tokenFile'] as const) {
      if (vault[s] !== undefined) throw errors.schemaViolation(file, `vault.${s}`, vault[s], 'no value: with "infrastructure": "docker" it is set by the container');
    }
    postgres = {
      host: `pgvault-${name}-postgres`,
      port: 5432,
      clientHost: pg.clientHost ?? '127.0.0.1',
      clientPort: pg.clientPort ?? docker.postgresHostPort,
      database: databaseName,
      databases,
      adminUser: pg.adminUser ?? 'postgres',
      adminPasswordFile: path.join(local, 'postgres-password'),
      sslmode: pg.sslmode ?? (docker.postgresTls ? 'verify-full' : 'disable'),
      // The environment's CA (ops/vault/vault-cluster.ts); each Vault node has a copy in its configuration directory.
      caCertFile: docker.postgresTls ? path.join(local, 'tls', 'ca.pem') : undefined,
      caCertFileOnVault: docker.postgresTls ? '/pgvault/config/postgres-ca.pem' : undefined,
      replica: docker.postgresReplica
        ? { host: `pgvault-${name}-postgres-replica`, port: 5432, clientHost: pg.clientHost ?? '127.0.0.1', clientPort: docker.postgresReplica.hostPort }
        : undefined,
      dropDataOnDestroy: true,
      restrictPublicConnect: pg.restrictPublicConnect ?? true,
    };
    // A cluster serves TLS with the environment's own CA (made by the deploy, ops/vault/vault-cluster.ts).
    const addresses = docker.vaultNodes ? vaultPorts.map((p) => `https://127.0.0.1:${p}`) : [`http://127.0.0.1:${docker.vaultHostPort}`];
    vaultResolved = {
      address: addresses[0],
      addresses,
      caCertFile: docker.vaultNodes ? path.join(local, 'tls', 'ca.pem') : vault.caCertFile ? fromRepo(vault.caCertFile) : undefined,
      tlsServerName: vault.tlsServerName,
      tokenFile: path.join(local, 'vault-token'),
    };
  } else {
    if (doc.docker !== undefined) throw errors.schemaViolation(file, 'docker', doc.docker, 'no value: "infrastructure" is "existing"');
    if (!pg.host) throw errors.missingSetting(file, 'postgres.host', 'when "infrastructure" is "existing"');
    if (!pg.adminPasswordFile) throw errors.missingSetting(file, 'postgres.adminPasswordFile', 'when "infrastructure" is "existing"');
    if (!vault.address) throw errors.missingSetting(file, 'vault.address', 'when "infrastructure" is "existing"');
    postgres = {
      host: pg.host,
      port: pg.port ?? 5432,
      clientHost: pg.clientHost ?? pg.host,
      clientPort: pg.clientPort ?? pg.port ?? 5432,
      database: databaseName,
      databases,
      adminUser: pg.adminUser ?? 'postgres',
      adminPasswordFile: fromRepo(pg.adminPasswordFile),
      // verify-full: an unverified server could ask for the superuser's password in clear text.
      sslmode: pg.sslmode ?? 'verify-full',
      caCertFile: pg.caCertFile ? fromRepo(pg.caCertFile) : undefined,
      caCertFileOnVault: pg.caCertFileOnVault,
      // Vault never connects to the replica: only the app does.
      replica: pg.replica ? { host: pg.replica.clientHost, port: pg.replica.clientPort ?? 5432, clientHost: pg.replica.clientHost, clientPort: pg.replica.clientPort ?? 5432 } : undefined,
      dropDataOnDestroy: pg.dropDataOnDestroy ?? false,
      restrictPublicConnect: pg.restrictPublicConnect ?? false,
    };
    vaultResolved = {
      address: vault.address.replace(/\/+$/, ''),
      addresses: [vault.address.replace(/\/+$/, '')],
      caCertFile: vault.caCertFile ? fromRepo(vault.caCertFile) : undefined,
      tlsServerName: vault.tlsServerName,
      tokenFile: vault.tokenFile ? fromRepo(vault.tokenFile) : path.join(local, 'vault-token'),
    };
  }

  for (const r of roles) {
    if (r.target !== 'replica') continue;
    if (!postgres.replica) {
      throw errors.schemaViolation(file, `roles.${r.name}.target`, 'replica', `"primary", or a replica to connect to: ${doc.infrastructure === 'docker' ? '"docker.postgresReplica": {}' : '"postgres.replica": { "clientHost": ... }'}`);
    }
    if (r.access !== 'read' && r.access !== 'grants') {
      throw errors.schemaViolation(file, `roles.${r.name}.target`, 'replica', `"primary" for a role with "access": "${r.access}": a replica is read-only`);
    }
  }

  const se = doc.secretsEngine ?? {};
  // Cluster-wide role names carry the environment's name, so two environments can share a server.
  const prefix = `pgvault_${name.replace(/-/g, '_')}`;
  const vaultUser: string = se.vaultUser ?? `${prefix}_vault`;
  const database = {
    schema: 'app',
    ownerRole: `${prefix}_owner`,
    retiredRole: `${prefix}_retired`,
    groupRoles: { read: `${prefix}_read`, write: `${prefix}_write` },
    mark: `pgvault:${name}`,
  };
  if (vaultUser === postgres.adminUser) {
    throw errors.schemaViolation(file, 'secretsEngine.vaultUser', vaultUser, `a role other than "postgres.adminUser" (${postgres.adminUser}): Vault's role is reset and given CREATEROLE by the bootstrap, the superuser must not be`);
  }
  if ([database.ownerRole, database.retiredRole, database.groupRoles.read, database.groupRoles.write].includes(vaultUser)) {
    throw errors.schemaViolation(file, 'secretsEngine.vaultUser', vaultUser, `a role name other than the environment's own NOLOGIN roles (${prefix}_*)`);
  }
  for (const db of postgres.databases.slice(1)) {
    const longest = [`${prefix}_${db}_write`, `${vaultUser}_${db}`].find((n) => n.length > 63);
    if (longest) {
      throw errors.schemaViolation(file, 'postgres.databases', db, `a shorter database name: its Postgres role "${longest}" would be longer than Postgres's 63 characters (shorten the database name, the environment name or "secretsEngine.vaultUser")`);
    }
  }
  // Every Postgres role the environment makes, with the setting that names it: two settings must
  // never land on one role (a database named "g" and a grants role "write" would both give
  // pgvault_<env>_g_write), or one role would carry both sets of privileges.
  const named = new Map<string, string>();
  const claim = (role: string, setting: string) => {
    const other = named.get(role);
    if (other !== undefined && other !== setting) {
      throw errors.schemaViolation(file, setting, role, `a name whose Postgres role differs from that of "${other}" (both would be "${role}", and one role would hold both's privileges). Rename one of them`);
    }
    named.set(role, setting);
  };
  claim(database.ownerRole, 'the owner role');
  claim(database.retiredRole, 'the retired role');
  claim(vaultUser, 'secretsEngine.vaultUser');
  claim(database.groupRoles.read, 'roles (access: read)');
  claim(database.groupRoles.write, 'roles (access: write)');
  for (const db of postgres.databases.slice(1)) {
    for (const n of [`${prefix}_${db}_read`, `${prefix}_${db}_write`]) claim(n, `postgres.databases (${db})`);
    claim(`${vaultUser}_${db}`, `postgres.databases (${db}: Vault's role there)`);
  }
  for (const r of roles) if (r.access === 'grants' || r.access === 'migrate') claim(r.groupRole, `roles.${r.name}`);
  if (doc.infrastructure === 'existing' && postgres.databases.length > 1 && !postgres.restrictPublicConnect && roles.some((r) => r.access === 'migrate')) {
    throw errors.schemaViolation(
      file,
      'postgres.restrictPublicConnect',
      false,
      `true for an environment with several databases and a role with "access": "migrate": a migrate user acts as the owner role, which owns the app schema of every database of the environment, so PUBLIC's CONNECT on ${postgres.databases.slice(1).join(', ')} would let it in there. Set it to true (the bootstrap then revokes PUBLIC's CONNECT on the server's other databases), or use one database`,
    );
  }
  const state = resolveState(file, doc);
  const aa = doc.appAccess ?? {};
  const roleName: string = aa.roleName ?? 'pgvault-app';
  const apps = resolveApps(file, doc, roles, roleName);
  // One JWT subject, one app: a workload whose token two apps' roles accept could pick either policy.
  const subjects = new Map<string, string>();
  for (const app of apps) {
    const subject = app.jwtBoundSubject ?? (app.name === DEFAULT_APP ? doc.appAccess?.jwt?.boundSubject : undefined);
    if (subject === undefined) continue;
    const other = subjects.get(subject);
    if (other !== undefined) {
      throw errors.schemaViolation(file, `apps.${app.name}.jwt.boundSubject`, subject, `a subject no other app's JWT role is bound to (app "${other}" has it too), so that a token logs in as one app only. Give each app its own service account`);
    }
    subjects.set(subject, app.name);
  }
  const tokenTtlSeconds = aa.tokenTtlSeconds ?? 3600;
  const tokenMaxTtlSeconds = aa.tokenMaxTtlSeconds ?? 86400;
  if (tokenTtlSeconds > tokenMaxTtlSeconds) {
    throw errors.schemaViolation(file, 'appAccess.tokenTtlSeconds', tokenTtlSeconds, `at most appAccess.tokenMaxTtlSeconds (${tokenMaxTtlSeconds})`);
  }
  return {
    name,
    file,
    infrastructure: doc.infrastructure,
    docker,
    postgres,
    vault: vaultResolved,
    secretsEngine: {
      mountPath: se.mountPath ?? 'database',
      connectionName: se.connectionName ?? 'postgres',
      vaultUser,
      setupPasswordFile: path.join(local, 'vault-setup-password'),
      setupPasswordVersion: se.setupPasswordVersion ?? 1,
      maxOpenConnections: se.maxOpenConnections ?? 4,
      scramIterations: se.scramIterations,
    },
    roles,
    state,
    appAccess: {
      approleMount: aa.approleMount ?? 'approle',
      roleName,
      tokenTtlSeconds,
      tokenMaxTtlSeconds,
      secretIdTtlSeconds: aa.secretIdTtlSeconds ?? 86400,
      secretIdNumUses: aa.secretIdNumUses ?? 0,
      secretIdBoundCidrs: aa.secretIdBoundCidrs ?? [],
      tokenBoundCidrs: aa.tokenBoundCidrs ?? [],
      jwt: aa.jwt ? resolveJwt(file, aa.jwt, aa.roleName ?? 'pgvault-app') : undefined,
    },
    apps,
    appsDeclared: doc.apps !== undefined,
    database,
  };
}

/** appAccess.jwt: exactly one way to check signatures; key files are relative to the repository root. */
function resolveJwt(file: string, j: any, defaultRoleName: string): JwtAccessConfig {
  const given = (['publicKeyFiles', 'jwksUrl', 'oidcDiscoveryUrl'] as const).filter((k) => j[k] !== undefined);
  if (given.length !== 1) {
    throw errors.schemaViolation(
      file,
      'appAccess.jwt',
      Object.fromEntries(given.map((k) => [k, j[k]])),
      `exactly one of "publicKeyFiles", "jwksUrl" or "oidcDiscoveryUrl" (${given.length ? `${given.length} are given: ${given.join(', ')}` : 'none is given'}); keys work offline, the URLs need the issuer reachable from Vault`,
    );
  }
  const publicKeyFiles = (j.publicKeyFiles as string[] | undefined)?.map((f) => path.resolve(REPO_ROOT, f));
  return {
    mount: j.mount ?? 'jwt',
    roleName: j.roleName ?? defaultRoleName,
    publicKeyFiles,
    jwksUrl: j.jwksUrl,
    oidcDiscoveryUrl: j.oidcDiscoveryUrl,
    boundIssuer: j.boundIssuer,
    boundAudiences: j.boundAudiences,
    boundSubject: j.boundSubject,
    userClaim: j.userClaim ?? 'sub',
  };
}

/** The PEM public keys of appAccess.jwt.publicKeyFiles, read at synth; a missing or private key is a ConfigError. */
export function readJwtPublicKeys(env: EnvironmentConfig): string[] | undefined {
  return env.appAccess.jwt?.publicKeyFiles?.map((f, i) => {
    const setting = `appAccess.jwt.publicKeyFiles.${i}`;
    let pem: string;
    try {
      pem = fs.readFileSync(f, 'utf8');
    } catch (e: any) {
      throw errors.schemaViolation(env.file, setting, f, `a readable PEM public key file, relative to the repository root (${e.code ?? e.message})`);
    }
    if (/PRIVATE KEY/.test(pem) || !/-----BEGIN (RSA )?PUBLIC KEY-----/.test(pem)) {
      throw errors.schemaViolation(env.file, setting, f, 'a PEM public key ("-----BEGIN PUBLIC KEY-----"); never a private key, which only the issuer keeps');
    }
    return pem.trim() + '\n';
  });
}

/** The Postgres group role of a role that is not one of the shorthands. */
export function roleGroupName(envName: string, roleName: string): string {
  return `pgvault_${envName.replace(/-/g, '_')}_g_${roleName.replace(/-/g, '_')}`;
}

const COLUMN_PRIVILEGES: readonly TablePrivilege[] = ['SELECT', 'INSERT', 'UPDATE', 'REFERENCES'];

/** A role's access, grants and group role, from its entry; `access` and `grants` exclude each other. */
function roleShape(file: string, envName: string, roleName: string, r: any): Pick<RoleConfig, 'access' | 'grants' | 'groupRole'> {
  const at = `roles.${roleName}`;
  const prefix = `pgvault_${envName.replace(/-/g, '_')}`;
  if (r.access !== undefined && r.grants !== undefined) {
    throw errors.schemaViolation(file, `${at}.grants`, r.grants, `no value when "${at}.access" is set: a role has "access" (read, write or migrate) or "grants", not both. Keep one`);
  }
  if (r.access === 'read' || r.access === 'write') return { access: r.access, grants: accessGrants(r.access, 'app'), groupRole: `${prefix}_${r.access}` };
  if (r.access === undefined && r.grants === undefined) {
    throw errors.missingSetting(file, `${at}.access`, 'unless "grants" is set: "access": "read", "write" or "migrate", or "grants": { "<schema>.<table>": ["SELECT", ...] }');
  }
  const groupRole = roleGroupName(envName, roleName);
  if (groupRole.length > 63) {
    throw errors.schemaViolation(file, at, roleName, `a role name short enough for its Postgres group role ${groupRole} (${groupRole.length} characters, at most 63). Shorten the role's name or the environment's`);
  }
  if (r.access === 'migrate') {
    if ((r.target ?? 'primary') !== 'primary') throw errors.schemaViolation(file, `${at}.target`, r.target, '"primary" for a role with "access": "migrate": a replica is read-only');
    return { access: 'migrate', grants: [], groupRole };
  }
  const grants: TableGrant[] = [];
  for (const [on, value] of Object.entries<any>(r.grants)) {
    const [schema, table] = on.split('.');
    const setting = `${at}.grants.${on}`;
    if (schema.startsWith('pg_') || schema === 'information_schema') {
      throw errors.schemaViolation(file, `${at}.grants`, on, `a table of an application schema, not of the system schema "${schema}": the bootstrap grants as the superuser, and Postgres's catalogs are not the app's to hand out. Name the app's own tables`);
    }
    const perColumn = !Array.isArray(value);
    const privileges: [TablePrivilege, string[] | undefined][] = perColumn ? Object.entries<string[]>(value).map(([p, cols]) => [p as TablePrivilege, cols]) : value.map((p: TablePrivilege) => [p, undefined]);
    for (const [privilege, columns] of privileges) {
      if (columns && table === '*') throw errors.schemaViolation(file, setting, value, `a list of privileges: column privileges need a named table, not "${schema}.*"`);
      if (columns && !COLUMN_PRIVILEGES.includes(privilege)) {
        throw errors.schemaViolation(file, `${setting}.${privilege}`, columns, `no column list: Postgres has column privileges for ${COLUMN_PRIVILEGES.join(', ')} only. Put "${privilege}" in a list for the whole table`);
      }
      if ((r.target ?? 'primary') === 'replica' && !REPLICA_PRIVILEGES.includes(privilege)) {
        throw errors.schemaViolation(file, setting, value, `${REPLICA_PRIVILEGES.join(', ')} only, for a role with "target": "replica": a replica is read-only, "${privilege}" is a write. Drop it, or target the primary`);
      }
      grants.push({ schema, table, privilege, ...(columns ? { columns } : {}) });
    }
  }
  return { access: 'grants', grants, groupRole };
}

/** The file's "apps", each naming roles the file declares; without it, one app with every role. */
function resolveApps(file: string, doc: any, roles: readonly RoleConfig[], roleName: string): AppConfig[] {
  const known = roles.map((r) => r.name);
  if (doc.apps === undefined) return [{ name: DEFAULT_APP, roles: known, roleName }];
  return Object.entries(doc.apps as Record<string, { roles: string[]; jwt?: { boundSubject: string } }>)
    .map(([name, a]) => {
      for (const [i, role] of a.roles.entries()) {
        if (!known.includes(role)) throw errors.unknownAppRole(file, name, i, role, known);
      }
      if (a.jwt && !doc.appAccess?.jwt) {
        throw errors.schemaViolation(file, `apps.${name}.jwt`, a.jwt, '"appAccess.jwt" to be set too: it holds the jwt mount and the keys the app\'s JWT role checks tokens with. Set it, or remove the app\'s "jwt"');
      }
      return { name, roles: [...a.roles].sort(), roleName: `${roleName}-${name}`, ...(a.jwt ? { jwtBoundSubject: a.jwt.boundSubject } : {}) };
    })
    .sort((a, b) => a.name.localeCompare(b.name));
}

/**
 * The environment as one of its databases sees it: the bootstrap, the teardown and the Vault
 * connection of `db` use it. postgres.database keeps the environment's own names; another
 * database has its own Vault role (`<vaultUser>_<db>`), connection (`<connectionName>-<db>`) and
 * group roles (`pgvault_<env>_<db>_read|write`), so that its users can connect to it alone: CONNECT
 * comes with the group role. The schema, its owner and the retired role are the environment's.
 */
export function forDatabase(env: EnvironmentConfig, db: string): EnvironmentConfig {
  if (!env.postgres.databases.includes(db)) throw new Error(`database "${db}" is not one of environment ${env.name}'s (${env.postgres.databases.join(', ')})`);
  if (db === env.postgres.databases[0]) return env;
  const prefix = `pgvault_${env.name.replace(/-/g, '_')}_${db}`;
  return {
    ...env,
    postgres: { ...env.postgres, database: db },
    secretsEngine: { ...env.secretsEngine, vaultUser: `${env.secretsEngine.vaultUser}_${db}`, connectionName: `${env.secretsEngine.connectionName}-${db}` },
    database: { ...env.database, groupRoles: { read: `${prefix}_read`, write: `${prefix}_write` } },
  };
}

/** The app of that name, or an error that lists the environment's apps. */
export function findApp(env: EnvironmentConfig, name: string): AppConfig {
  const app = env.apps.find((a) => a.name === name);
  if (!app) throw errors.unknownApp(env.file, name, env.apps.map((a) => a.name));
  return app;
}

function resolveState(file: string, doc: any): StateConfig {
  const st = doc.state ?? { backend: 'local' };
  if (st.backend === 'local') {
    for (const s of ['connectionFile', 'schemaPrefix'] as const) {
      if (st[s] !== undefined) throw errors.schemaViolation(file, `state.${s}`, st[s], 'no value: it belongs to "state.backend": "pg" (set the backend to "pg", or remove the setting)');
    }
    return { backend: 'local' };
  }
  if (!st.connectionFile) throw errors.missingSetting(file, 'state.connectionFile', 'when "state.backend" is "pg": a file (mode 0600) holding the state database\'s connection string');
  // The Docker provider keeps a container's env in state, and the dev server takes its root token only from there.
  if (doc.infrastructure === 'docker') {
    throw errors.schemaViolation(file, 'state.backend', 'pg', '"local" for an environment with "infrastructure": "docker": its -infra state holds the Vault dev server\'s root token, which must not go to a shared database; use shared state for "existing" environments');
  }
  return { backend: 'pg', connectionFile: path.resolve(REPO_ROOT, st.connectionFile), schemaPrefix: st.schemaPrefix ?? DEFAULT_STATE_SCHEMA_PREFIX };
}

function fromAjv(file: string, raw: unknown, errs: ErrorObject[]): errors.ConfigError {
  // Report the most specific error: prefer a named property over its parent object.
  const e =
    errs.find((x) => x.keyword === 'propertyNames') ??
    [...errs].sort((a, b) => b.instancePath.length - a.instancePath.length)[0];
  const base = e.instancePath.replace(/^\//, '').split('/').filter(Boolean);
  let setting = base.join('.');
  let value: unknown = base.reduce((v: any, k) => (v == null ? undefined : v[k]), raw as any);
  let expected: string;
  switch (e.keyword) {
    case 'required':
      setting = [...base, (e.params as any).missingProperty].join('.');
      value = undefined;
      expected = 'a value (it is required)';
      break;
    case 'additionalProperties':
      setting = [...base, (e.params as any).additionalProperty].join('.');
      value = (value as any)?.[(e.params as any).additionalProperty];
      expected = 'no such setting (it is unknown; check the spelling against stacks/environment.schema.json)';
      break;
    case 'propertyNames':
      value = errs.map((x) => (x as any).propertyName).find((n) => n !== undefined) ?? (e.params as any).propertyName;
      setting = [...base, value].join('.');
      expected =
        base[base.length - 1] === 'grants'
          ? 'a table as "<schema>.<table>", or "<schema>.*" for every table of the schema, in lower-case letters, digits and "_" (safe Postgres identifiers)'
          : base[base.length - 2] === 'grants'
            ? 'a table privilege with a column list: "SELECT", "INSERT", "UPDATE" or "REFERENCES"'
            : `${base[0] === 'apps' ? 'an app' : 'a role'} name of lower-case letters, digits, "_" or "-", starting with a letter, at most 32 characters (a safe Postgres and Vault identifier)`;
      break;
    case 'enum':
      expected = `one of ${((e.params as any).allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
      break;
    case 'pattern':
      expected = `a string matching ${(e.params as any).pattern}`;
      break;
    default:
      expected = e.message ?? 'a valid value';
  }
  return errors.schemaViolation(file, setting || '(the document)', value, expected);
}
