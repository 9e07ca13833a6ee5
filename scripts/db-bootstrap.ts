/**
 * Prepares Postgres for Vault, as the Postgres superuser (its password read from a file),
 * run by Terraform's terraform_data hooks (scripts/hooks.ts):
 *
 *   up    creates what is missing: the NOLOGIN owner, retired and group roles, the app schema
 *         and table, the role Vault connects as (with the setup password, which Vault then
 *         rotates). Idempotent, and it never removes data. Everything it creates carries the
 *         comment `pgvault:<env>`; an object of the same name without that mark is never
 *         adopted, altered or dropped: the deploy stops with an error naming it.
 *   down  the teardown: drops the dynamic users, the group roles and Vault's role; the schema,
 *         its data and the owner roles too for docker environments or with
 *         "postgres.dropDataOnDestroy": true. Only marked objects are touched.
 *
 * It never prints a password.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { Client } from 'pg';
import { EnvironmentConfig } from '../stacks/config';
import { pgSsl, PgSslOptions } from '@pgvault/runtime/config';
import { readSecretFile } from './local-secrets';

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
export async function adminConnect(env: EnvironmentConfig, retryMillis = 60_000): Promise<Client> {
  const secret = readSecretFile(env.postgres.adminPasswordFile, 'the Postgres admin password');
  const deadline = Date.now() + retryMillis;
  for (;;) {
    let cleartextAsked = false;
    const client = new Client({
      host: env.postgres.clientHost,
      port: env.postgres.clientPort,
      database: env.postgres.database,
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
 * Login roles that Vault created for this environment: members of its group roles, granted
 * by its Vault role. Never matched by name pattern.
 */
async function dynamicUsers(client: Client, env: EnvironmentConfig): Promise<string[]> {
  const { groupRoles } = env.database;
  const r = await client.query(
    `SELECT DISTINCT u.rolname FROM pg_catalog.pg_auth_members m
       JOIN pg_catalog.pg_roles u ON u.oid = m.member
       JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
       JOIN pg_catalog.pg_roles v ON v.oid = m.grantor
      WHERE g.rolname = ANY($1) AND v.rolname = $2 AND u.rolcanlogin AND u.rolname <> $2`,
    [[groupRoles.read, groupRoles.write], env.secretsEngine.vaultUser],
  );
  return r.rows.map((x) => x.rolname);
}

/**
 * Drops dynamic users from Postgres's side (the Vault that could revoke them is gone):
 * the same steps as the revocation statements, as the superuser.
 */
export async function dropDynamicUsers(client: Client, env: EnvironmentConfig): Promise<number> {
  const q = (s: string) => client.escapeIdentifier(s);
  const users = await dynamicUsers(client, env);
  for (const u of users) {
    await client.query('SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = $1', [u]);
    const fns = await client.query('SELECT p.oid::regprocedure::text AS f FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_roles r ON r.oid = p.proowner WHERE r.rolname = $1', [u]);
    for (const { f } of fns.rows) await client.query(`REVOKE ALL ON ROUTINE ${f} FROM PUBLIC`);
    await client.query(`REASSIGN OWNED BY ${q(u)} TO ${q(env.database.retiredRole)}`);
    await client.query(`DROP OWNED BY ${q(u)}`);
    await client.query(`DROP ROLE IF EXISTS ${q(u)}`);
  }
  return users.length;
}

/** Warns when CREATEROLE is superuser-equivalent (PostgreSQL before 16). */
export async function warnOldServer(client: Pick<Client, 'query'>, env: EnvironmentConfig): Promise<void> {
  const r = await client.query('SHOW server_version_num');
  const num = Number(r.rows[0].server_version_num);
  if (num < 160000) {
    const v = `${Math.floor(num / 10000)}.${num % 100}`;
    console.log(
      `bootstrap: ${env.name}: WARNING: PostgreSQL ${v} at ${env.postgres.clientHost}:${env.postgres.clientPort}: before PostgreSQL 16 a CREATEROLE role ` +
        `(Vault's ${env.secretsEngine.vaultUser}) can grant itself predefined roles such as pg_execute_server_program, so it is superuser-equivalent. ` +
        'Fix: upgrade the server to PostgreSQL 16 or later.',
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
  const { schema, ownerRole, retiredRole, groupRoles, mark } = env.database;
  const vaultUser = env.secretsEngine.vaultUser;
  const setupPassword = readSecretFile(env.secretsEngine.setupPasswordFile, 'the Vault setup password');
  const client = await adminConnect(env);
  const q = (s: string) => client.escapeIdentifier(s);
  const lit = (s: string) => client.escapeLiteral(s);
  try {
    await warnOldServer(client, env);
    await client.query('BEGIN');
    // 1. Refuse before changing anything: every existing object must carry our mark.
    const nologin = [ownerRole, retiredRole, groupRoles.read, groupRoles.write];
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
          `(If environment ${env.name} made it with a version of pgvault-creds from before objects were marked, see "Upgrading" in the README.)`,
      );
    }
    const table = await client.query(
      `SELECT pg_catalog.obj_description(c.oid, 'pg_class') AS comment FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = 'items'`,
      [schema],
    );
    if (table.rowCount && !isMarked(table.rows[0].comment, mark)) {
      throw new ForeignObjectError(`table "${schema}.items" exists in database "${env.postgres.database}" but was not created by environment ${env.name}; the deploy will not adopt it. Fix: rename or move that table, or set "postgres.database" to another database. Nothing was changed.`);
    }

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

    // 3. Grants: only on what this environment owns.
    const db = q(env.postgres.database);
    const [read, write] = [q(groupRoles.read), q(groupRoles.write)];
    await client.query(`GRANT CONNECT, TEMPORARY ON DATABASE ${db} TO ${read}, ${write}`);
    await client.query(`GRANT USAGE ON SCHEMA ${q(schema)} TO ${read}, ${write}`);
    await client.query(`GRANT CREATE ON SCHEMA ${q(schema)} TO ${write}`);
    // Changing an object's owner needs the new owner to have CREATE in its schema; that is all
    // the retired role holds (no USAGE, nothing on any table), so what it owns can do nothing.
    await client.query(`GRANT CREATE ON SCHEMA ${q(schema)} TO ${q(retiredRole)}`);
    const owned = await client.query(
      `SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace JOIN pg_catalog.pg_roles o ON o.oid = c.relowner
        WHERE n.nspname = $1 AND o.rolname = $2 AND c.relkind IN ('r', 'p', 'v', 'm')`,
      [schema, ownerRole],
    );
    for (const { relname } of owned.rows) {
      const t = `${q(schema)}.${q(relname)}`;
      await client.query(`GRANT SELECT ON ${t} TO ${read}`);
      await client.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON ${t} TO ${write}`);
    }
    await client.query(`ALTER DEFAULT PRIVILEGES FOR ROLE ${q(ownerRole)} IN SCHEMA ${q(schema)} GRANT SELECT ON TABLES TO ${read}`);
    await client.query(`ALTER DEFAULT PRIVILEGES FOR ROLE ${q(ownerRole)} IN SCHEMA ${q(schema)} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ${write}`);

    // 4. Vault's role: CREATEROLE and ADMIN on the group roles, nothing more; membership of the
    // retired role so that revocation can hand it what a user owned. The bootstrap runs when the
    // connection is about to be written with the setup password, so Postgres must accept it again;
    // Vault rotates it right after.
    await client.query(
      `${vault.exists ? 'ALTER' : 'CREATE'} ROLE ${q(vaultUser)} WITH LOGIN CREATEROLE NOSUPERUSER NOCREATEDB NOREPLICATION NOBYPASSRLS INHERIT PASSWORD ${lit(scramVerifier(setupPassword))}`,
    );
    await client.query(`GRANT ${read}, ${write} TO ${q(vaultUser)} WITH ADMIN OPTION`);
    await client.query(`GRANT ${q(retiredRole)} TO ${q(vaultUser)}`);
    await client.query(`GRANT CONNECT ON DATABASE ${db} TO ${q(vaultUser)}`);

    // 5. Users of a Vault mount that no longer exists cannot be revoked by anyone else.
    const recorded = recordedIdentity(vault.comment);
    if (vault.exists && vaultMount && recorded && recorded !== vaultMount) {
      const n = await dropDynamicUsers(client, env);
      say(env, `the Vault mount that created the current dynamic users is gone (a restarted dev server or a recreated mount); dropped its ${n} user(s) from Postgres`);
    }
    await client.query(`COMMENT ON ROLE ${q(vaultUser)} IS ${lit(vaultMount ? `${mark} vault-mount=${vaultMount}` : vault.comment ?? mark)}`);
    await client.query('COMMIT');
  } catch (e) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw e;
  } finally {
    await client.end();
  }
  say(env, `roles ${vaultUser}, ${ownerRole}, ${retiredRole}, ${groupRoles.read}, ${groupRoles.write} and schema ${schema} are in place`);
}

/** The teardown. Only marked objects are touched. */
export async function down(env: EnvironmentConfig): Promise<void> {
  const { schema, ownerRole, retiredRole, groupRoles, mark } = env.database;
  const vaultUser = env.secretsEngine.vaultUser;
  const client = await adminConnect(env);
  const q = (s: string) => client.escapeIdentifier(s);
  const dropRole = async (role: string) => {
    const c = await roleComment(client, role);
    if (!c.exists || !isMarked(c.comment, mark)) return false;
    await client.query('SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = $1', [role]);
    await client.query(`DROP OWNED BY ${q(role)}`);
    await client.query(`DROP ROLE ${q(role)}`);
    return true;
  };
  try {
    // Users are ours only when the roles that identify them are: the group roles, their grantor and the retired role.
    const marked = async (role: string) => {
      const c = await roleComment(client, role);
      return c.exists && isMarked(c.comment, mark);
    };
    const ours = (await marked(vaultUser)) && (await marked(groupRoles.read)) && (await marked(groupRoles.write)) && (await marked(retiredRole));
    const users = ours ? await dropDynamicUsers(client, env) : 0;
    if (users) say(env, `dropped ${users} dynamic user(s) that Vault had not revoked`);
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
      for (const role of [vaultUser, groupRoles.read, groupRoles.write, retiredRole, ownerRole]) await dropRole(role);
      say(env, `removed the roles${ourSchema ? ` and schema ${schema} (with its data)` : ''} it had created`);
    } else {
      for (const role of [vaultUser, groupRoles.read, groupRoles.write]) await dropRole(role);
      const rows = ourSchema ? (await client.query(`SELECT count(*)::int AS n FROM ${q(schema)}.items`).catch(() => ({ rows: [{ n: '?' }] }))).rows[0].n : 0;
      say(
        env,
        `removed Vault's role and the group roles; KEPT schema ${schema} (app.items: ${rows} rows) and its NOLOGIN roles ${ownerRole}, ${retiredRole} ` +
          `in database ${env.postgres.database}: the next deploy takes them up again. To drop them at destroy, set "postgres.dropDataOnDestroy": true in ${env.file}.`,
      );
    }
  } finally {
    await client.end();
  }
}
