/**
 * Prepares Postgres for Vault, run by Terraform (terraform_data local-exec) as the
 * Postgres superuser, whose password it reads from a file:
 *
 *   up <env>    the NOLOGIN owner and group roles, the app schema and table, and the
 *               dedicated role Vault connects as (with the setup password, which Vault
 *               then rotates); idempotent.
 *   down <env>  drops all of it again.
 *
 * It never prints a password.
 */
import { Client } from 'pg';
import { EnvironmentConfig, loadEnvironment } from '../stacks/config';
import { pgSsl } from '../app/src/config';
import { readSecretFile } from './ops';

async function connect(env: EnvironmentConfig): Promise<Client> {
  const password = readSecretFile(env.postgres.adminPasswordFile, 'the Postgres admin password');
  // Postgres may still be finishing its first start; retry for a while.
  const deadline = Date.now() + 60_000;
  for (;;) {
    const client = new Client({
      host: env.postgres.clientHost,
      port: env.postgres.clientPort,
      database: env.postgres.database,
      user: env.postgres.adminUser,
      password,
      ssl: pgSsl(env.postgres.sslmode),
      connectionTimeoutMillis: 10_000,
    });
    try {
      await client.connect();
      return client;
    } catch (e: any) {
      await client.end().catch(() => undefined);
      if (Date.now() > deadline) {
        throw new Error(`cannot connect to Postgres at ${env.postgres.clientHost}:${env.postgres.clientPort} as ${env.postgres.adminUser}: ${e.message}`);
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

export async function up(env: EnvironmentConfig): Promise<void> {
  const { schema, ownerRole, groupRoles } = env.database;
  const vaultUser = env.secretsEngine.vaultUser;
  const client = await connect(env);
  const q = (s: string) => client.escapeIdentifier(s);
  try {
    await client.query('BEGIN');
    for (const role of [ownerRole, groupRoles.read, groupRoles.write]) {
      const { rowCount } = await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [role]);
      if (!rowCount) await client.query(`CREATE ROLE ${q(role)} NOLOGIN`);
    }
    const db = q(env.postgres.database);
    const s = q(schema);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${s} AUTHORIZATION ${q(ownerRole)}`);
    await client.query(`CREATE TABLE IF NOT EXISTS ${s}.items (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        created_at timestamptz NOT NULL DEFAULT now())`);
    await client.query(`ALTER TABLE ${s}.items OWNER TO ${q(ownerRole)}`);
    await client.query(`REVOKE ALL ON DATABASE ${db} FROM PUBLIC`);
    await client.query(`REVOKE CREATE ON SCHEMA public FROM PUBLIC`);
    await client.query(`GRANT CONNECT, TEMPORARY ON DATABASE ${db} TO ${q(groupRoles.read)}, ${q(groupRoles.write)}`);
    await client.query(`GRANT USAGE ON SCHEMA ${s} TO ${q(groupRoles.read)}, ${q(groupRoles.write)}`);
    await client.query(`GRANT CREATE ON SCHEMA ${s} TO ${q(groupRoles.write)}`);
    await client.query(`GRANT SELECT ON ALL TABLES IN SCHEMA ${s} TO ${q(groupRoles.read)}`);
    await client.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ${s} TO ${q(groupRoles.write)}`);
    await client.query(`GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA ${s} TO ${q(groupRoles.write)}`);
    await client.query(`ALTER DEFAULT PRIVILEGES FOR ROLE ${q(ownerRole)} IN SCHEMA ${s} GRANT SELECT ON TABLES TO ${q(groupRoles.read)}`);
    await client.query(
      `ALTER DEFAULT PRIVILEGES FOR ROLE ${q(ownerRole)} IN SCHEMA ${s} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ${q(groupRoles.write)}`,
    );

    // The dedicated role Vault connects as: it may create roles and grant the groups, nothing more.
    const setupPassword = readSecretFile(env.secretsEngine.setupPasswordFile, 'the Vault setup password');
    const existing = await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [vaultUser]);
    // The bootstrap runs when the connection is about to be written with the setup password
    // (first deploy, new Postgres, new Vault, or a new setupPasswordVersion), so Postgres must
    // accept that password again; Vault rotates it right after.
    await client.query(
      `${existing.rowCount ? 'ALTER' : 'CREATE'} ROLE ${q(vaultUser)} WITH LOGIN CREATEROLE NOSUPERUSER NOCREATEDB PASSWORD ${client.escapeLiteral(setupPassword)}`,
    );
    await client.query(`GRANT ${q(ownerRole)}, ${q(groupRoles.read)}, ${q(groupRoles.write)} TO ${q(vaultUser)} WITH ADMIN OPTION`);
    await client.query(`GRANT CONNECT ON DATABASE ${db} TO ${q(vaultUser)}`);
    await client.query('COMMIT');
  } catch (e) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw e;
  } finally {
    await client.end();
  }
  console.log(`bootstrap: ${env.name}: roles ${vaultUser}, ${ownerRole}, ${groupRoles.read}, ${groupRoles.write} and schema ${schema} are in place`);
}

export async function down(env: EnvironmentConfig): Promise<void> {
  const { schema, ownerRole, groupRoles } = env.database;
  const client = await connect(env);
  const q = (s: string) => client.escapeIdentifier(s);
  try {
    // Any dynamic user still left (its lease outlived the mount) goes first.
    const dynamic = await client.query(
      `SELECT r.rolname FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid JOIN pg_roles g ON g.oid = m.roleid
        WHERE g.rolname = ANY($1) AND r.rolcanlogin AND r.rolname <> $2`,
      [[groupRoles.read, groupRoles.write], env.secretsEngine.vaultUser],
    );
    for (const { rolname } of dynamic.rows) {
      await client.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [rolname]);
      await client.query(`DROP OWNED BY ${q(rolname)}`);
      await client.query(`DROP ROLE IF EXISTS ${q(rolname)}`);
    }
    await client.query(`DROP SCHEMA IF EXISTS ${q(schema)} CASCADE`);
    for (const role of [env.secretsEngine.vaultUser, groupRoles.read, groupRoles.write, ownerRole]) {
      const { rowCount } = await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [role]);
      if (!rowCount) continue;
      await client.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [role]);
      await client.query(`DROP OWNED BY ${q(role)}`);
      await client.query(`DROP ROLE ${q(role)}`);
    }
  } finally {
    await client.end();
  }
  console.log(`bootstrap: ${env.name}: removed the roles and schema it had created`);
}

async function main(argv: string[]): Promise<void> {
  const [action, name] = argv;
  if ((action !== 'up' && action !== 'down') || !name) {
    throw new Error('usage: db-bootstrap.js up|down <environment>');
  }
  const env = loadEnvironment(name);
  await (action === 'up' ? up(env) : down(env));
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(`bootstrap failed: ${e.message}`);
    process.exit(1);
  });
}
