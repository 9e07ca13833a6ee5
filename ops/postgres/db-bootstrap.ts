/**
 * Prepares Postgres for Vault, as the Postgres superuser (its password read from a file),
 * run by Terraform's terraform_data hooks (ops/hooks.ts):
 *
 *   up    creates what is missing: the NOLOGIN owner, retired and group roles, the app schema
 *         and table, the role Vault connects as (with the setup password, which Vault then
 *         rotates). Idempotent, and it never removes data. Everything it creates carries the
 *         comment `pgvault:<env>`; an object of the same name without that mark is never
 *         adopted, altered or dropped: the deploy stops with an error naming it. It keeps
 *         dynamic users to the app's database (CONNECT revoked from PUBLIC elsewhere: docker,
 *         or "postgres.restrictPublicConnect"; otherwise reported), and drops the roles a
 *         revocation left disarmed.
 *   down  the teardown: drops the dynamic users (disarmed ones too), the group roles and
 *         Vault's role; the schema, its data and the owner roles too for docker environments or
 *         with "postgres.dropDataOnDestroy": true. Only marked objects are touched; what cannot
 *         be dropped is reported, never a reason to fail.
 *
 * It never prints a password.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Client } from 'pg';
import { EnvironmentConfig, roleGroupName } from '../../stacks/config';
import { pgSsl, PgSslOptions } from '@pgvault/runtime/config';
import { readSecretFile } from '../local/local-secrets';
import { accessGrants, CatalogView, disarmedComment, GroupDeclaration, grantPlan, isDisarmedSql, reaperStatement } from '../../stacks/statements';
import { forDatabase, localDir } from '../../stacks/config';

/** The TLS options of the environment's sslmode, with its CA file ("postgres.caCertFile") when it has one. */
export function postgresSsl(env: EnvironmentConfig): PgSslOptions {
  const file = env.postgres.caCertFile;
  if (!file) return pgSsl(env.postgres.sslmode);
  let ca: string;
  try {
    ca = fs.readFileSync(file, 'utf8');
  } catch (e: any) {
    throw new Error(`${env.file}: the Postgres CA file ${file} ("postgres.caCertFile") cannot be read (${e.code}); point the setting at a PEM file${env.infrastructure === 'docker' ? ', or deploy the environment (the deploy makes it)' : ''}`);
  }
  return pgSsl(env.postgres.sslmode, { ca });
}

/** Logs a line to Terraform's output (the local-exec hook's stdout). */
function say(env: EnvironmentConfig, msg: string): void {
  console.log(`bootstrap: ${env.name}: ${msg}`);
}

/**
 * The superuser's connection. Its password must never go out in clear text: a server that
 * asks for cleartext password authentication (an impostor, without verify-full) is refused.
 */
export async function adminConnect(env: EnvironmentConfig, retryMillis = 60_000, database = env.postgres.database): Promise<Client> {
  const secret = readSecretFile(env.postgres.adminPasswordFile, 'the Postgres admin password');
  const deadline = Date.now() + retryMillis;
  for (;;) {
    let cleartextAsked = false;
    const client = new Client({
      host: env.postgres.clientHost,
      port: env.postgres.clientPort,
      database,
      user: env.postgres.adminUser,
      // node-postgres asks for the password only when the server requests authentication;
      // this listener runs before the client's own, so a cleartext request is seen first.
      password: async () => {
        if (cleartextAsked) {
          throw new Error(`the server at ${env.postgres.clientHost}:${env.postgres.clientPort} asked for the superuser's password in clear text; refused (use SCRAM authentication, and sslmode verify-full)`);
        }
        return secret;
      },
      ssl: postgresSsl(env),
      connectionTimeoutMillis: 10_000,
    });
    (client as any).connection.on('authenticationCleartextPassword', () => {
      cleartextAsked = true;
    });
    try {
      await client.connect();
      return client;
    } catch (e: any) {
      await client.end().catch(() => undefined);
      // Only a server that is not up yet is worth waiting for; a refusal will not go away.
      const transient = ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EAI_AGAIN', '57P03'].includes(e?.code) || /timeout|terminated/i.test(String(e?.message));
      if (cleartextAsked || !transient || Date.now() > deadline) {
        throw new Error(`cannot connect to Postgres at ${env.postgres.clientHost}:${env.postgres.clientPort} as ${env.postgres.adminUser}: ${e.message}`);
      }
      // Postgres may still be finishing its first start.
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

/**
 * A SCRAM-SHA-256 verifier of the password (RFC 5802/7677, as Postgres stores it), so the
 * password itself never reaches the server's statement log. Our passwords are ASCII, so
 * SASLprep leaves them unchanged.
 */
export function scramVerifier(password: string, salt = crypto.randomBytes(16), iterations = 4096): string {
  const salted = crypto.pbkdf2Sync(password, salt, iterations, 32, 'sha256');
  const hmac = (key: Buffer, text: string) => crypto.createHmac('sha256', key).update(text).digest();
  const storedKey = crypto.createHash('sha256').update(hmac(salted, 'Client Key')).digest();
  const serverKey = hmac(salted, 'Server Key');
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

/** The object exists, but this environment did not create it. */
export class ForeignObjectError extends Error {
  readonly code = 'BOOTSTRAP_FOREIGN_OBJECT';
}

function isMarked(comment: string | null | undefined, mark: string): boolean {
  return comment === mark || Boolean(comment?.startsWith(`${mark} `));
}

/** The Vault mount that created the dynamic users, as recorded on Vault's role. */
function recordedIdentity(comment: string | null | undefined): string | undefined {
  return comment?.match(/ vault-mount=(\S+)/)?.[1];
}

async function roleComment(client: Client, role: string): Promise<{ exists: boolean; comment?: string }> {
  const r = await client.query(`SELECT pg_catalog.shobj_description(oid, 'pg_authid') AS comment FROM pg_catalog.pg_roles WHERE rolname = $1`, [role]);
  return r.rowCount ? { exists: true, comment: r.rows[0].comment ?? undefined } : { exists: false };
}

function foreignRole(env: EnvironmentConfig, role: string, setting: string): ForeignObjectError {
  return new ForeignObjectError(
    `role "${role}" already exists on ${env.postgres.clientHost}:${env.postgres.clientPort} and was not created by environment ${env.name} ` +
      `(it lacks the comment '${env.database.mark}'); the deploy will not adopt, alter or drop it. ` +
      `Fix: set ${setting} in ${env.file} to a name that is free, or remove that role yourself if it is really unused. Nothing was changed.`,
  );
}

/**
 * Roles that Vault created for this environment: members of its group roles granted by its
 * Vault role, or roles carrying the environment's user or disarmed comment (which only a role
 * with CREATEROLE can set: a user cannot comment on itself). Never matched by name pattern.
 */
async function dynamicUsers(client: Client, env: EnvironmentConfig, disarmedOnly = false): Promise<{ name: string; access: 'read' | 'write' }[]> {
  const { groupRoles, mark } = env.database;
  const disarmed = isDisarmedSql("pg_catalog.shobj_description(u.oid, 'pg_authid')", mark);
  const r = await client.query(
    `SELECT u.rolname, bool_or(g.rolname = $2) AS writer, bool_or(g.rolname = ANY($7)) AS reader,
            pg_catalog.shobj_description(u.oid, 'pg_authid') = $4 AS disarmed_reader
       FROM pg_catalog.pg_roles u
       LEFT JOIN pg_catalog.pg_auth_members m ON m.member = u.oid
       LEFT JOIN pg_catalog.pg_roles g ON g.oid = m.roleid AND g.rolname = ANY($1)
       LEFT JOIN pg_catalog.pg_roles v ON v.oid = m.grantor AND v.rolname = $3
      WHERE u.rolname <> $3 AND NOT u.rolsuper AND (NOT $6 OR ${disarmed})
        AND ((u.rolcanlogin AND g.oid IS NOT NULL AND v.oid IS NOT NULL)
          OR ${disarmed}
          OR pg_catalog.starts_with(pg_catalog.shobj_description(u.oid, 'pg_authid'), $5))
      GROUP BY u.rolname, u.oid`,
    // The roles shaped by grants or migrate can create nothing worth keeping: their users are dropped like readers'.
    [[groupRoles.read, groupRoles.write, ...shapedGroupRoles(env)], groupRoles.write, env.secretsEngine.vaultUser, disarmedComment(mark, 'read'), `${mark} user `, disarmedOnly, [groupRoles.read, ...shapedGroupRoles(env)]],
  );
  // A disarmed role has lost its membership: its comment records the access. A role whose access
  // is unknown (no membership, an older disarmed comment) is treated as a writer: its objects are
  // handed over, never dropped.
  return r.rows.map((x) => ({ name: x.rolname, access: x.writer || !(x.reader || x.disarmed_reader) ? 'write' : 'read' }));
}

/** Databases other than the current one where a role owns objects or holds privileges (only the superuser reaches them). */
async function otherDatabasesOf(client: Client, role: string): Promise<string[]> {
  const r = await client.query(
    `SELECT DISTINCT d.datname FROM pg_catalog.pg_shdepend s JOIN pg_catalog.pg_database d ON d.oid = s.dbid JOIN pg_catalog.pg_roles r ON r.oid = s.refobjid
      WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass AND r.rolname = $1 AND d.datname <> pg_catalog.current_database() AND d.datallowconn
      ORDER BY 1`,
    [role],
  );
  return r.rows.map((x) => x.datname);
}

/** How long the superuser's clean-up of a dynamic user waits for a lock (a reader of a writer's table) before leaving the role for the next pass. */
const CLEAN_UP_LOCK_TIMEOUT_SECONDS = 10;

/**
 * Drops dynamic users from Postgres's side (the Vault that could revoke them is gone, or a
 * revocation left them disarmed): the revocation's steps, as the superuser, in every database
 * where they own something. A role that still cannot be dropped is reported and kept disarmed,
 * never a reason to fail. Returns the dropped and the kept roles.
 */
export async function dropDynamicUsers(client: Client, env: EnvironmentConfig, opts: { disarmedOnly?: boolean } = {}): Promise<{ dropped: string[]; kept: string[] }> {
  const q = (s: string) => client.escapeIdentifier(s);
  const lit = (s: string) => client.escapeLiteral(s);
  const dropped: string[] = [];
  const kept: string[] = [];
  // Bounded: a reader holding a lock on a writer's table must not hold up a deploy or a teardown.
  await client.query(`SET lock_timeout = '${CLEAN_UP_LOCK_TIMEOUT_SECONDS}s'`);
  try {
    await dropEach();
  } finally {
    await client.query('RESET lock_timeout');
  }
  return { dropped, kept };

  async function dropEach(): Promise<void> {
    for (const u of await dynamicUsers(client, env, opts.disarmedOnly)) {
      const user = q(u.name);
      // A writer's objects go to the retired role (a migration's tables keep their data), in every
      // database; only a reader's are dropped. The retired role may then own something in another
      // database: the teardown reports it rather than dropping it.
      const cleanUp = async (c: Client) => {
        if (u.access === 'write') {
          const fns = await c.query('SELECT p.oid::regprocedure::text AS f FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_roles r ON r.oid = p.proowner WHERE r.rolname = $1', [u.name]);
          for (const { f } of fns.rows) await c.query(`REVOKE ALL ON ROUTINE ${f} FROM PUBLIC`);
          await c.query(`REASSIGN OWNED BY ${user} TO ${q(env.database.retiredRole)}`);
        }
        await c.query(`DROP OWNED BY ${user}`);
      };
      // Disarmed first, each statement on its own (the client is not in a transaction): memberships, login, sessions.
      const grants = await client.query(
        `SELECT g.rolname AS role, w.rolname AS grantor FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
           JOIN pg_catalog.pg_roles x ON x.oid = m.member LEFT JOIN pg_catalog.pg_roles w ON w.oid = m.grantor WHERE x.rolname = $1`,
        [u.name],
      );
      for (const g of grants.rows) await client.query(`REVOKE ${q(g.role)} FROM ${user}${g.grantor ? ` GRANTED BY ${q(g.grantor)}` : ''}`);
      await client.query(`ALTER ROLE ${user} NOLOGIN PASSWORD NULL VALID UNTIL '1970-01-01 00:00:00+00'`);
      await client.query(`COMMENT ON ROLE ${user} IS ${lit(disarmedComment(env.database.mark, u.access))}`);
      await client.query('SELECT pg_catalog.pg_terminate_backend(pid, 5000) FROM pg_catalog.pg_stat_activity WHERE usename = $1', [u.name]);
      try {
        await cleanUp(client);
      } catch (e: any) {
        // A lock held past the timeout (a long reader of a writer's table): the role stays disarmed, with its access recorded, for the next pass.
        say(env, `kept role ${u.name} disarmed: its objects in database ${env.postgres.database} could not be handed over or dropped now (${e.message}); the next bootstrap or teardown tries again`);
        kept.push(u.name);
        continue;
      }
      for (const db of await otherDatabasesOf(client, u.name)) {
        let other: Client | undefined;
        try {
          other = await adminConnect(env, 10_000, db);
          await other.query("SET statement_timeout = '60s'");
          await cleanUp(other);
        } catch (e: any) {
          say(env, `could not clean up role ${u.name} in database ${db} (${e.message}); it stays disarmed`);
        } finally {
          await other?.end();
        }
      }
      try {
        await client.query(`DROP ROLE ${user}`);
        dropped.push(u.name);
      } catch (e: any) {
        say(env, `kept role ${u.name} disarmed (NOLOGIN, no membership, comment '${disarmedComment(env.database.mark, u.access)}'): ${e.message}${e.detail ? ` (${e.detail.replace(/\n/g, '; ')})` : ''}`);
        kept.push(u.name);
      }
    }
  }
}

/** The server's version as server_version_num (170002 for 17.2). */
export async function serverVersion(client: Pick<Client, 'query'>): Promise<number> {
  const r = await client.query('SHOW server_version_num');
  return Number(r.rows[0].server_version_num);
}

/** Warns when CREATEROLE is superuser-equivalent (PostgreSQL before 16). */
export function warnOldServer(env: EnvironmentConfig, num: number): void {
  if (num < 160000) {
    const v = `${Math.floor(num / 10000)}.${num % 100}`;
    console.log(
      `bootstrap: ${env.name}: WARNING: PostgreSQL ${v} at ${env.postgres.clientHost}:${env.postgres.clientPort}: before PostgreSQL 16 a CREATEROLE role ` +
        `(Vault's ${env.secretsEngine.vaultUser}) can grant itself predefined roles such as pg_execute_server_program, so it is superuser-equivalent. ` +
        'Fix: upgrade the server to PostgreSQL 16 or later.',
    );
  }
}

/** Drops the roles revocations left disarmed (by the superuser, in every database where they own something). */
async function dropDisarmed(client: Client, env: EnvironmentConfig): Promise<{ dropped: string[]; kept: string[] }> {
  const r = await client.query(`SELECT 1 FROM pg_catalog.pg_roles WHERE ${isDisarmedSql("pg_catalog.shobj_description(oid, 'pg_authid')", env.database.mark)} LIMIT 1`);
  return r.rowCount ? dropDynamicUsers(client, env, { disarmedOnly: true }) : { dropped: [], kept: [] };
}

/** Existing servers: where the bootstrap writes the reaper's SQL for the operator to schedule (the teardown removes it). */
export function reaperJobFile(env: EnvironmentConfig): string {
  return path.join(localDir(env.name), 'reaper.sql');
}

/**
 * Says what bounds a flood or a lost credential, where this server does not: databases open to
 * PUBLIC, too few reserved connections for Vault (16+), and, for existing servers, the reaper
 * job the operator schedules (written to .local/<env>/reaper.sql).
 */
async function reportLimits(client: Client, env: EnvironmentConfig, version: number, openDatabases: string[]): Promise<void> {
  if (openDatabases.length && !env.postgres.restrictPublicConnect) {
    say(
      env,
      `WARNING: PUBLIC may connect to database(s) ${openDatabases.join(', ')}: a dynamic user can create objects there (a large object, default privileges) that keep its role from being dropped ` +
        `(its revocation then leaves it disarmed: no login, no membership). Fix: set "postgres.restrictPublicConnect": true in ${env.file} to revoke that CONNECT from PUBLIC (grant it to the roles that need it), or revoke it yourself.`,
    );
  }
  if (version >= 160000) {
    const reserved = Number((await client.query('SHOW reserved_connections')).rows[0].reserved_connections);
    if (reserved < env.secretsEngine.maxOpenConnections) {
      say(
        env,
        `WARNING: reserved_connections is ${reserved} on ${env.postgres.clientHost}:${env.postgres.clientPort}, fewer than Vault's ${env.secretsEngine.maxOpenConnections} connections ("secretsEngine.maxOpenConnections"): ` +
          'users that fill every other slot can stop issuance and revocation. Fix: set reserved_connections to at least that in postgresql.conf and restart the server (Vault\'s role holds pg_use_reserved_connections).',
      );
    }
  }
  if (env.infrastructure === 'existing') {
    const file = reaperJobFile(env);
    fs.mkdirSync(localDir(env.name), { recursive: true, mode: 0o700 });
    fs.writeFileSync(file, `-- pgvault ${env.name}: run as a superuser every second, on the primary and on each replica.\n${reaperStatement(env.database.mark)}\n`, { mode: 0o600 });
    say(
      env,
      `the reaper (sessions of revoked or disarmed roles, and users past their statement or idle-in-transaction bound) is not running on an existing server: schedule ${file} ` +
        'every second as a superuser, on the primary and on each replica (for example a loop of psql -f, or pg_cron).',
    );
  }
}

/**
 * Creates what is missing and re-sends the setup password. `vaultMount` identifies the
 * Vault mount the users belong to (its accessor): when it differs from the one recorded,
 * the Vault that created the current dynamic users is gone (a restarted dev server, a
 * recreated mount), and nobody can revoke them any more, so they are dropped here.
 */
export async function up(env: EnvironmentConfig, vaultMount?: string): Promise<void> {
  await ensureDatabases(env);
  for (const db of env.postgres.databases) await upDatabase(forDatabase(env, db), vaultMount);
}

/** A database named in "postgres.databases" is missing on an existing server. */
export class MissingDatabaseError extends Error {
  readonly code = 'BOOTSTRAP_MISSING_DATABASE';
}

/**
 * The environment's other databases: on docker a missing one is created and marked (it goes with
 * the data volume at destroy); on an existing server a missing one stops the deploy, saying how
 * to create it. The project never drops a database.
 */
async function ensureDatabases(env: EnvironmentConfig): Promise<void> {
  const more = env.postgres.databases.slice(1);
  if (!more.length) return;
  const client = await adminConnect(env);
  try {
    for (const db of more) {
      const r = await client.query('SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1', [db]);
      if (r.rowCount) continue;
      if (env.infrastructure !== 'docker') {
        throw new MissingDatabaseError(
          `database "${db}" ("postgres.databases" in ${env.file}) does not exist on ${env.postgres.clientHost}:${env.postgres.clientPort}; ` +
            `the project creates no database on an existing server. Fix: create it as a superuser (CREATE DATABASE ${client.escapeIdentifier(db)};), then deploy again, ` +
            'or remove it from "postgres.databases" and from the roles that name it. Nothing was changed.',
        );
      }
      // Not in a transaction: CREATE DATABASE cannot run in one.
      await client.query(`CREATE DATABASE ${client.escapeIdentifier(db)}`);
      await client.query(`COMMENT ON DATABASE ${client.escapeIdentifier(db)} IS ${client.escapeLiteral(env.database.mark)}`);
      say(env, `created database ${db} (comment '${env.database.mark}'); it goes with the data volume at destroy`);
    }
  } finally {
    await client.end();
  }
}

/** One database's bootstrap, with the environment as that database sees it (forDatabase). */
async function upDatabase(env: EnvironmentConfig, vaultMount?: string): Promise<void> {
  const { schema, ownerRole, retiredRole, groupRoles, mark } = env.database;
  const vaultUser = env.secretsEngine.vaultUser;
  const setupPassword = readSecretFile(env.secretsEngine.setupPasswordFile, 'the Vault setup password');
  const client = await adminConnect(env);
  const q = (s: string) => client.escapeIdentifier(s);
  const lit = (s: string) => client.escapeLiteral(s);
  try {
    const version = await serverVersion(client);
    warnOldServer(env, version);
    await client.query('BEGIN');
    // 1. Refuse before changing anything: every existing object must carry our mark.
    const shaped = shapedGroupRoles(env);
    const nologin = [ownerRole, retiredRole, groupRoles.read, groupRoles.write, ...shaped];
    const existing = new Map<string, boolean>();
    for (const role of nologin) {
      const c = await roleComment(client, role);
      if (c.exists && !isMarked(c.comment, mark)) throw foreignRole(env, role, 'a different environment name (the roles are named pgvault_<env>_*)');
      existing.set(role, c.exists);
    }
    const vault = await roleComment(client, vaultUser);
    if (vault.exists && !isMarked(vault.comment, mark)) throw foreignRole(env, vaultUser, '"secretsEngine.vaultUser"');
    const ns = await client.query(`SELECT pg_catalog.obj_description(oid, 'pg_namespace') AS comment FROM pg_catalog.pg_namespace WHERE nspname = $1`, [schema]);
    if (ns.rowCount && !isMarked(ns.rows[0].comment, mark)) {
      throw new ForeignObjectError(
        `schema "${schema}" already exists in database "${env.postgres.database}" and was not created by environment ${env.name} ` +
          `(it lacks the comment '${mark}'); the deploy will not adopt, alter or drop it, nor grant anything in it. ` +
          `Fix: set "postgres.database" in ${env.file} to a database of the environment's own. Nothing was changed. ` +
          `(If environment ${env.name} made it with a version of pgvault-creds from before objects were marked, see "Upgrading" in docs/troubleshooting.md.)`,
      );
    }
    const table = await client.query(
      `SELECT pg_catalog.obj_description(c.oid, 'pg_class') AS comment FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = 'items'`,
      [schema],
    );
    if (table.rowCount && !isMarked(table.rows[0].comment, mark)) {
      throw new ForeignObjectError(`table "${schema}.items" exists in database "${env.postgres.database}" but was not created by environment ${env.name}; the deploy will not adopt it. Fix: rename or move that table, or set "postgres.database" to another database. Nothing was changed.`);
    }
    const keysTableExists = await checkIdempotencyKeysTable(client, env);

    // 2. Create what is missing, and mark it.
    for (const role of nologin) {
      if (existing.get(role)) continue;
      await client.query(`CREATE ROLE ${q(role)} NOLOGIN`);
      await client.query(`COMMENT ON ROLE ${q(role)} IS ${lit(mark)}`);
    }
    if (!ns.rowCount) {
      await client.query(`CREATE SCHEMA ${q(schema)} AUTHORIZATION ${q(ownerRole)}`);
      await client.query(`COMMENT ON SCHEMA ${q(schema)} IS ${lit(mark)}`);
    }
    if (!table.rowCount) {
      await client.query(`CREATE TABLE ${q(schema)}.items (
          id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
          name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
          created_at timestamptz NOT NULL DEFAULT now())`);
      await client.query(`ALTER TABLE ${q(schema)}.items OWNER TO ${q(ownerRole)}`);
      await client.query(`COMMENT ON TABLE ${q(schema)}.items IS ${lit(mark)}`);
    }
    if (!keysTableExists) await createIdempotencyKeysTable(client, env);
    await createDeclaredSchemas(client, env);

    // 3. Grants: only on what this environment owns.
    const db = q(env.postgres.database);
    const [read, write] = [q(groupRoles.read), q(groupRoles.write)];
    await client.query(`GRANT CONNECT, TEMPORARY ON DATABASE ${db} TO ${read}, ${write}`);
    await client.query(`GRANT USAGE ON SCHEMA ${q(schema)} TO ${read}, ${write}`);
    await client.query(`GRANT CREATE ON SCHEMA ${q(schema)} TO ${write}`);
    // Changing an object's owner needs the new owner to have CREATE in its schema; that is all
    // the retired role holds (no USAGE, nothing on any table), so what it owns can do nothing.
    await client.query(`GRANT CREATE ON SCHEMA ${q(schema)} TO ${q(retiredRole)}`);
    // Every group role's privileges are brought back to what the file declares (the shorthands included).
    for (const g of shaped) await client.query(`GRANT CONNECT ON DATABASE ${db} TO ${q(g)}`);
    const missing = await convergeGroups(client, env);

    // 4. Vault's role: CREATEROLE and ADMIN on the group roles, nothing more; membership of the
    // retired role so that revocation can hand it what a user owned. The bootstrap runs when the
    // connection is about to be written with the setup password, so Postgres must accept it again;
    // Vault rotates it right after.
    await client.query(
      `${vault.exists ? 'ALTER' : 'CREATE'} ROLE ${q(vaultUser)} WITH LOGIN CREATEROLE NOSUPERUSER NOCREATEDB NOREPLICATION NOBYPASSRLS INHERIT PASSWORD ${lit(scramVerifier(setupPassword))}`,
    );
    if (version >= 160000) {
      // ADMIN OPTION alone: Vault's role may grant and revoke the groups, but neither inherits
      // nor SETs them, so it reads and changes no app data. A re-grant updates an older grant's options.
      await client.query(`GRANT ${[read, write, ...shaped.map(q)].join(', ')} TO ${q(vaultUser)} WITH ADMIN OPTION, INHERIT FALSE, SET FALSE`);
      await grantOwnerForMigrators(client, env);
      // A flood of users' connections must not stop issuance and revocation: Vault's role may use the reserved slots.
      await client.query(`GRANT pg_use_reserved_connections TO ${q(vaultUser)}`);
    } else {
      const migrator = env.roles.find((r) => r.access === 'migrate');
      if (migrator) {
        throw new Error(
          `${env.file}: role "${migrator.name}" has "access": "migrate", which needs PostgreSQL 16 or later on ${env.postgres.clientHost}:${env.postgres.clientPort} ` +
            '(its users hold the owner role without inheriting it: GRANT ... WITH INHERIT FALSE). Fix: upgrade the server, or remove the role. Nothing was changed.',
        );
      }
      await client.query(`GRANT ${[read, write, ...shaped.map(q)].join(', ')} TO ${q(vaultUser)} WITH ADMIN OPTION`);
    }
    // The retired role owns every table handed over at revocation: on 16+ Vault's role holds it
    // without its privileges, and lends it to itself inside a revocation for the REASSIGN only.
    await client.query(`GRANT ${q(retiredRole)} TO ${q(vaultUser)}${version >= 160000 ? ' WITH ADMIN OPTION, INHERIT FALSE, SET FALSE' : ''}`);
    await convergeVaultRoleSettings(client, env, version);
    // Names only, no data: revocation looks up a writer's routines in the schema to revoke EXECUTE on them.
    await client.query(`GRANT USAGE ON SCHEMA ${q(schema)} TO ${q(vaultUser)}`);
    await client.query(`GRANT CONNECT ON DATABASE ${db} TO ${q(vaultUser)}`);

    // 5. Dynamic users reach the app's database only: every other database PUBLIC may connect to
    // is closed to PUBLIC (docker, or the opt-in), or reported.
    const open = await client.query(
      `SELECT d.datname FROM pg_catalog.pg_database d
        WHERE d.datallowconn AND d.datname <> $1
          AND (d.datacl IS NULL OR EXISTS (SELECT 1 FROM pg_catalog.aclexplode(d.datacl) a WHERE a.grantee = 0 AND a.privilege_type = 'CONNECT'))
        ORDER BY 1`,
      [env.postgres.database],
    );
    const openDatabases: string[] = open.rows.map((x) => x.datname);
    if (env.postgres.restrictPublicConnect) {
      for (const other of openDatabases) await client.query(`REVOKE CONNECT ON DATABASE ${q(other)} FROM PUBLIC`);
    }

    await client.query(`COMMENT ON ROLE ${q(vaultUser)} IS ${lit(vaultMount ? `${mark} vault-mount=${vaultMount}` : vault.comment ?? mark)}`);
    await client.query('COMMIT');

    // 6. Users of a Vault mount that no longer exists cannot be revoked by anyone else; roles a
    // revocation left disarmed (an object in another database held them) need the superuser,
    // the only one that reaches other databases. Outside the transaction: other databases are
    // other connections, and each user's steps stand on their own.
    const recorded = recordedIdentity(vault.comment);
    if (vault.exists && vaultMount && recorded && recorded !== vaultMount) {
      const { dropped, kept } = await dropDynamicUsers(client, env);
      say(env, `the Vault mount that created the current dynamic users is gone (a restarted dev server or a recreated mount); dropped its ${dropped.length} user(s) from Postgres${kept.length ? `, kept ${kept.length} disarmed` : ''}`);
    } else {
      const { dropped, kept } = await dropDisarmed(client, env);
      if (dropped.length || kept.length) say(env, `roles left disarmed by a revocation: dropped ${dropped.length}${kept.length ? `, kept ${kept.length} (${kept.join(', ')})` : ''}`);
    }
    await reportLimits(client, env, version, openDatabases);
    reportMissing(env, missing);
  } catch (e) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw e;
  } finally {
    await client.end();
  }
  say(env, `roles ${[vaultUser, ownerRole, retiredRole, groupRoles.read, groupRoles.write, ...shapedGroupRoles(env)].join(', ')} and schema ${schema} are in place`);
}

// --- Roles shaped by `grants` and `access: migrate` ------------------------------------------
// Each has a NOLOGIN group role of its own (pgvault_<env>_g_<role>), marked like the others. Every
// bootstrap, and every `npm run deploy` after Terraform, brings each of the project's group roles
// back to what the file declares (stacks/statements.ts grantPlan). Only those roles are named: an
// existing database's own tables may be declared, their owner and other grants stay as they are.

/** The group roles of the roles that are not shorthands, in a stable order. */
/** The roles whose users connect to the database `env` stands for (see forDatabase). */
function rolesHere(env: EnvironmentConfig): EnvironmentConfig['roles'] {
  return env.roles.filter((r) => r.database === env.postgres.database);
}

export function shapedGroupRoles(env: EnvironmentConfig): string[] {
  return [...new Set(rolesHere(env).filter((r) => r.access === 'grants' || r.access === 'migrate').map((r) => r.groupRole))].sort();
}

/** Every group role's declaration: the shorthands' (whether or not a role uses them) and each role's own. */
export function groupDeclarations(env: EnvironmentConfig): GroupDeclaration[] {
  const { schema, groupRoles } = env.database;
  const shaped = rolesHere(env).filter((r) => r.access === 'grants' || r.access === 'migrate');
  return [
    { group: groupRoles.read, grants: accessGrants('read', schema) },
    { group: groupRoles.write, grants: accessGrants('write', schema), createIn: [schema] },
    ...shaped.map((r) => ({ group: r.groupRole, grants: r.grants })),
  ];
}

/** Schemas named in `grants` that do not exist: created, owned by the owner role and marked, as the app schema is. */
async function createDeclaredSchemas(client: Client, env: EnvironmentConfig): Promise<void> {
  const q = (s: string) => client.escapeIdentifier(s);
  const named = [...new Set(rolesHere(env).flatMap((r) => r.grants.map((g) => g.schema)))];
  const present = new Set((await client.query('SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname = ANY($1)', [named])).rows.map((x) => x.nspname));
  for (const s of named.filter((x) => !present.has(x))) {
    await client.query(`CREATE SCHEMA ${q(s)} AUTHORIZATION ${q(env.database.ownerRole)}`);
    await client.query(`COMMENT ON SCHEMA ${q(s)} IS ${client.escapeLiteral(env.database.mark)}`);
    say(env, `created schema ${s} (named in grants), owned by ${env.database.ownerRole}`);
  }
}

/** What Postgres holds for one group role: the view grantPlan works from. */
async function readCatalog(client: Client, env: EnvironmentConfig, decl: GroupDeclaration): Promise<CatalogView> {
  const schemas = [...new Set([...decl.grants.map((g) => g.schema), ...(decl.createIn ?? [])])];
  const kinds = `c.relkind IN ('r', 'p', 'v', 'm', 'f')`;
  const group = `(SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1)`;
  // One query at a time: a client runs its queries in turn anyway.
  const tables = await client.query(
    `SELECT n.nspname AS schema, c.relname AS table, pg_catalog.pg_get_userbyid(c.relowner) AS owner
       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE ${kinds} AND n.nspname = ANY($1)`,
    [schemas],
  );
  const held = await client.query(
    `SELECT n.nspname AS schema, c.relname AS table, a.privilege_type AS privilege, a.is_grantable AS grantable,
            pg_catalog.pg_get_userbyid(a.grantor) AS grantor, pg_catalog.pg_get_userbyid(c.relowner) AS owner
       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace, LATERAL pg_catalog.aclexplode(c.relacl) a
      WHERE ${kinds} AND a.grantee = ${group}`,
    [decl.group],
  );
  const columns = await client.query(
    `SELECT n.nspname AS schema, c.relname AS table, t.attname AS column, a.privilege_type AS privilege, a.is_grantable AS grantable,
            pg_catalog.pg_get_userbyid(a.grantor) AS grantor, pg_catalog.pg_get_userbyid(c.relowner) AS owner
       FROM pg_catalog.pg_attribute t JOIN pg_catalog.pg_class c ON c.oid = t.attrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace,
            LATERAL pg_catalog.aclexplode(t.attacl) a
      WHERE ${kinds} AND NOT t.attisdropped AND a.grantee = ${group}`,
    [decl.group],
  );
  const nsp = await client.query(`SELECT n.nspname AS schema, a.privilege_type AS privilege FROM pg_catalog.pg_namespace n, LATERAL pg_catalog.aclexplode(n.nspacl) a WHERE a.grantee = ${group}`, [decl.group]);
  const defaults = await client.query(
    `SELECT n.nspname AS schema, a.privilege_type AS privilege FROM pg_catalog.pg_default_acl d LEFT JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace,
            LATERAL pg_catalog.aclexplode(d.defaclacl) a
      WHERE d.defaclobjtype = 'r' AND d.defaclrole = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $2) AND a.grantee = ${group}`,
    [decl.group, env.database.ownerRole],
  );
  const ours = await client.query(`SELECT nspname, pg_catalog.obj_description(oid, 'pg_namespace') AS comment FROM pg_catalog.pg_namespace WHERE nspname = ANY($1)`, [schemas]);
  return {
    ownerRole: env.database.ownerRole,
    ourSchemas: ours.rows.filter((x) => isMarked(x.comment, env.database.mark)).map((x) => x.nspname),
    tables: tables.rows,
    held: [...held.rows, ...columns.rows],
    heldSchemas: nsp.rows,
    heldDefaults: defaults.rows,
  };
}

/** Brings every existing group role to its declaration; returns the named tables that do not exist. */
async function convergeGroups(client: Client, env: EnvironmentConfig): Promise<string[]> {
  const missing = new Set<string>();
  const declared = groupDeclarations(env);
  // A role since removed from the file, or no longer shaped, keeps its marked group role until
  // teardown: its live users must lose what it granted, so it converges to nothing.
  const gone = (await markedGroupRoles(client, env)).filter((g) => !declared.some((d) => d.group === g));
  for (const decl of [...declared, ...gone.map((group) => ({ group, grants: [] }))]) {
    if (!(await client.query('SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1', [decl.group])).rowCount) continue;
    const plan = grantPlan(decl, await readCatalog(client, env, decl));
    for (const stmt of [...plan.revoke, ...plan.grant]) await client.query(stmt);
    if (plan.revoke.length) say(env, `${decl.group}: revoked ${plan.revoke.filter((x) => x.startsWith('REVOKE') || x.startsWith('ALTER')).length} privilege(s) the file does not declare`);
    for (const t of plan.missing) missing.add(t);
  }
  // A SECURITY DEFINER function a migrator makes (as the owner) must not be PUBLIC's to run, even
  // if a migration changed the owner's defaults. Only the global form can revoke a built-in
  // default; a per-schema default can only add.
  await client.query(`ALTER DEFAULT PRIVILEGES FOR ROLE ${client.escapeIdentifier(env.database.ownerRole)} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC`);
  // A migrator acts as the owner, so it can also GRANT EXECUTE on a SECURITY DEFINER routine of
  // the owner's to PUBLIC or to a group role by hand, and that grant (the owner's rights for
  // anyone) outlives its lease: every deploy takes it back. Only those routines, in the schemas
  // this environment made (marked), and none of an extension: EXECUTE on any other routine runs
  // with the caller's own rights, and extensions' are not ours to change.
  const q = (x: string) => client.escapeIdentifier(x);
  const schemas = [...new Set([env.database.schema, ...rolesHere(env).flatMap((r) => r.grants.map((g) => g.schema))])];
  const found = await client.query(`SELECT nspname, pg_catalog.obj_description(oid, 'pg_namespace') AS comment FROM pg_catalog.pg_namespace WHERE nspname = ANY($1)`, [schemas]);
  const marked = found.rows.filter((x) => isMarked(x.comment, env.database.mark)).map((x) => x.nspname);
  const definers = await client.query(
    `SELECT p.oid::pg_catalog.regprocedure::text AS routine FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
      WHERE n.nspname = ANY($1) AND p.prosecdef AND p.proowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $2)
        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid AND d.deptype = 'e')`,
    [marked, env.database.ownerRole],
  );
  if (definers.rowCount) {
    const existing = await client.query('SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY($1)', [[...new Set([...declared.map((d) => d.group), ...gone])]]);
    const groups = ['PUBLIC', ...existing.rows.map((x) => q(x.rolname))].join(', ');
    for (const { routine } of definers.rows) await client.query(`REVOKE EXECUTE ON ROUTINE ${routine} FROM ${groups}`);
  }
  return [...missing].sort();
}

function reportMissing(env: EnvironmentConfig, missing: string[]): void {
  if (!missing.length) return;
  say(
    env,
    `table(s) named in grants do not exist yet: ${missing.join(', ')}; their grants wait. ` +
      `Fix: run the migration that creates them (a role with "access": "migrate" creates them as the owner role), then deploy again (npm run deploy -- ${env.name}).`,
  );
}

/**
 * Vault's role may grant the owner role to migrate users only while a migrate role is declared
 * (opt-in: it makes Vault's role owner-equivalent); otherwise that grant is taken back.
 */
async function grantOwnerForMigrators(client: Client, env: EnvironmentConfig): Promise<void> {
  const q = (s: string) => client.escapeIdentifier(s);
  const [owner, vaultUser] = [q(env.database.ownerRole), q(env.secretsEngine.vaultUser)];
  if (rolesHere(env).some((r) => r.access === 'migrate')) {
    await client.query(`GRANT ${owner} TO ${vaultUser} WITH ADMIN OPTION, INHERIT FALSE, SET FALSE`);
    return;
  }
  const held = await client.query(
    `SELECT 1 FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles g ON g.oid = m.roleid JOIN pg_catalog.pg_roles u ON u.oid = m.member WHERE g.rolname = $1 AND u.rolname = $2`,
    [env.database.ownerRole, env.secretsEngine.vaultUser],
  );
  if (held.rowCount) await client.query(`REVOKE ${owner} FROM ${vaultUser}`);
}

/**
 * The grants of every group role, brought back to the file, as the superuser: `npm run deploy`
 * runs it after Terraform whether or not the bootstrap ran, so a privilege added by hand is gone
 * and a table a migration made since is granted. Group roles that do not exist yet are the
 * bootstrap's. Returns the named tables that do not exist.
 */
export async function convergeGrants(env: EnvironmentConfig): Promise<string[]> {
  const missing: string[] = [];
  for (const db of env.postgres.databases) missing.push(...(await convergeDatabaseGrants(forDatabase(env, db))));
  return missing;
}

async function convergeDatabaseGrants(env: EnvironmentConfig): Promise<string[]> {
  const client = await adminConnect(env);
  try {
    await client.query('BEGIN');
    await client.query("SET LOCAL lock_timeout = '10s'");
    const missing = await convergeGroups(client, env);
    await convergeVaultRoleSettings(client, env, await serverVersion(client));
    await client.query('COMMIT');
    reportMissing(env, missing);
    return missing;
  } catch (e) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw e;
  } finally {
    await client.end();
  }
}

/**
 * `secretsEngine.scramIterations`: the SCRAM-SHA-256 iteration count of the passwords Vault's role
 * sets (its users' at creation, its own at rotation), as a default of that role, so it applies
 * from Vault's next connection on. Unset: Postgres's own (4096). A role Vault's role does not
 * have yet is the bootstrap's.
 */
async function convergeVaultRoleSettings(client: Client, env: EnvironmentConfig, version: number): Promise<void> {
  const iterations = env.secretsEngine.scramIterations;
  if (version < 160000) {
    if (iterations === undefined) return;
    throw new Error(
      `${env.file}: "secretsEngine.scramIterations" is ${iterations}, which needs PostgreSQL 16 or later (the scram_iterations setting); ` +
        `${env.postgres.clientHost}:${env.postgres.clientPort} runs ${Math.floor(version / 10000)}. Fix: remove the setting, or upgrade the server. Nothing was changed.`,
    );
  }
  const vaultUser = env.secretsEngine.vaultUser;
  const exists = await client.query('SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1', [vaultUser]);
  if (!exists.rowCount) return;
  const role = client.escapeIdentifier(vaultUser);
  await client.query(iterations === undefined ? `ALTER ROLE ${role} RESET scram_iterations` : `ALTER ROLE ${role} SET scram_iterations = ${iterations}`);
}

// --- The API's idempotency keys (POST /items with an Idempotency-Key header) ---------------
// A table of the app schema, owned by the owner role like app.items, so the grants below give
// the write group SELECT, INSERT, UPDATE and DELETE on it (the API inserts a key in the same
// statement as its item, reads it for a retry, and deletes expired ones). The teardown treats it
// as it treats app.items: kept with the schema, or dropped with it under dropDataOnDestroy.

const IDEMPOTENCY_KEYS_TABLE = 'idempotency_keys';

/** Whether the keys table exists; one of the same name this environment did not create stops the deploy. */
async function checkIdempotencyKeysTable(client: Client, env: EnvironmentConfig): Promise<boolean> {
  const { schema, mark } = env.database;
  const r = await client.query(
    `SELECT pg_catalog.obj_description(c.oid, 'pg_class') AS comment FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
    [schema, IDEMPOTENCY_KEYS_TABLE],
  );
  if (r.rowCount && !isMarked(r.rows[0].comment, mark)) {
    throw new ForeignObjectError(
      `table "${schema}.${IDEMPOTENCY_KEYS_TABLE}" exists in database "${env.postgres.database}" but was not created by environment ${env.name}; the deploy will not adopt it. ` +
        'Fix: rename or move that table, or set "postgres.database" to another database. Nothing was changed.',
    );
  }
  return Boolean(r.rowCount);
}

async function createIdempotencyKeysTable(client: Client, env: EnvironmentConfig): Promise<void> {
  const { schema, ownerRole, mark } = env.database;
  const table = `${client.escapeIdentifier(schema)}.${client.escapeIdentifier(IDEMPOTENCY_KEYS_TABLE)}`;
  await client.query(`CREATE TABLE ${table} (
      key text PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 255),
      request_sha256 text NOT NULL,
      status smallint NOT NULL,
      response jsonb NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now())`);
  await client.query(`ALTER TABLE ${table} OWNER TO ${client.escapeIdentifier(ownerRole)}`);
  await client.query(`COMMENT ON TABLE ${table} IS ${client.escapeLiteral(mark)}`);
}

/** The group roles of roles shaped by grants or migrate: the declared ones, and marked ones of roles removed from the file since. */
async function markedGroupRoles(client: Client, env: EnvironmentConfig): Promise<string[]> {
  const prefix = roleGroupName(env.name, '');
  const r = await client.query(
    `SELECT rolname FROM pg_catalog.pg_roles WHERE NOT rolcanlogin AND pg_catalog.starts_with(rolname, $1) AND pg_catalog.shobj_description(oid, 'pg_authid') = $2`,
    [prefix, env.database.mark],
  );
  return [...new Set([...shapedGroupRoles(env), ...r.rows.map((x) => x.rolname)])];
}

/** The teardown, of every database (the first, which holds the environment's shared roles, last). Only marked objects are touched. */
export async function down(env: EnvironmentConfig): Promise<void> {
  for (const db of env.postgres.databases.slice(1)) await downDatabase(forDatabase(env, db), { sharedRoles: false });
  await downDatabase(env, { sharedRoles: true });
}

/** One database's teardown; `sharedRoles`: also drop the owner and retired roles (with dropDataOnDestroy). */
async function downDatabase(env: EnvironmentConfig, opts: { sharedRoles: boolean }): Promise<void> {
  const { schema, ownerRole, retiredRole, groupRoles, mark } = env.database;
  const vaultUser = env.secretsEngine.vaultUser;
  const client = await adminConnect(env);
  const q = (s: string) => client.escapeIdentifier(s);
  const marked = async (role: string) => {
    const c = await roleComment(client, role);
    return c.exists && isMarked(c.comment, mark);
  };
  const dropRole = async (role: string) => {
    const c = await roleComment(client, role);
    if (!c.exists || !isMarked(c.comment, mark)) return false;
    await client.query('SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = $1', [role]);
    await client.query(`DROP OWNED BY ${q(role)}`);
    try {
      await client.query(`DROP ROLE ${q(role)}`);
    } catch (e: any) {
      // Something in another database still depends on it: a leftover is reported, never a reason to fail.
      if (e?.code !== '2BP01') throw e;
      say(env, `LEFT role ${role}: ${e.message}${e.detail ? ` (${String(e.detail).replace(/\n/g, '; ')})` : ''}`);
      return false;
    }
    return true;
  };
  try {
    // Users are ours only when the roles that identify them are: the group roles, their grantor and the retired role.
    const ours = (await marked(vaultUser)) && (await marked(groupRoles.read)) && (await marked(groupRoles.write)) && (await marked(retiredRole));
    const users = ours ? await dropDynamicUsers(client, env) : { dropped: [], kept: [] };
    if (users.dropped.length) say(env, `dropped ${users.dropped.length} dynamic user(s) that Vault had not revoked or had left disarmed`);
    if (users.kept.length) say(env, `LEFT ${users.kept.length} disarmed role(s) that could not be dropped (they cannot log in and hold no membership): ${users.kept.join(', ')}`);
    // What a writer made as the write group (before PostgreSQL 16, or before its users lost SET on it) is a
    // writer's: it goes with the retired role's objects (kept, or dropped with dropDataOnDestroy), never on its own.
    if ((await marked(groupRoles.write)) && (await marked(retiredRole))) await client.query(`REASSIGN OWNED BY ${q(groupRoles.write)} TO ${q(retiredRole)}`);
    const ns = await client.query(`SELECT pg_catalog.obj_description(oid, 'pg_namespace') AS comment FROM pg_catalog.pg_namespace WHERE nspname = $1`, [schema]);
    const ourSchema = Boolean(ns.rowCount && isMarked(ns.rows[0].comment, mark));
    if (env.postgres.dropDataOnDestroy) {
      // RESTRICT, not CASCADE: what others built on or inside the schema stops the teardown instead of going with it.
      const owners = [];
      for (const role of [retiredRole, ownerRole]) if (await marked(role)) owners.push(q(role));
      try {
        if (owners.length) await client.query(`DROP OWNED BY ${owners.join(', ')}`);
        if (ourSchema) await client.query(`DROP SCHEMA IF EXISTS ${q(schema)} RESTRICT`);
      } catch (e: any) {
        if (e?.code !== '2BP01') throw e;
        throw new Error(
          `schema ${schema} in database ${env.postgres.database} holds or is used by objects that environment ${env.name} did not create (${e.detail ?? e.message}); ` +
            'the teardown does not drop them. Move or drop those objects yourself, then run the destroy again.',
        );
      }
      for (const role of [vaultUser, groupRoles.read, groupRoles.write, ...(opts.sharedRoles ? [...(await markedGroupRoles(client, env)), retiredRole, ownerRole] : [])]) await dropRole(role);
      say(env, `removed the roles${ourSchema ? ` and schema ${schema} (with its data)` : ''} it had created in database ${env.postgres.database}`);
    } else {
      for (const role of [vaultUser, groupRoles.read, groupRoles.write, ...(opts.sharedRoles ? await markedGroupRoles(client, env) : [])]) await dropRole(role);
      const rows = ourSchema ? (await client.query(`SELECT count(*)::int AS n FROM ${q(schema)}.items`).catch(() => ({ rows: [{ n: '?' }] }))).rows[0].n : 0;
      const keys = ourSchema ? (await client.query(`SELECT count(*)::int AS n FROM ${q(schema)}.${q(IDEMPOTENCY_KEYS_TABLE)}`).catch(() => ({ rows: [{ n: '?' }] }))).rows[0].n : 0;
      say(
        env,
        `removed Vault's role and the group roles; KEPT schema ${schema} (app.items: ${rows} rows) with its ${keys} idempotency key(s), and its NOLOGIN roles ${ownerRole}, ${retiredRole} ` +
          `in database ${env.postgres.database}: the next deploy takes them up again. To drop them at destroy, set "postgres.dropDataOnDestroy": true in ${env.file}.`,
      );
    }
  } finally {
    await client.end();
  }
  fs.rmSync(reaperJobFile(env), { force: true });
}
