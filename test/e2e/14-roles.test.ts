/**
 * End to end on `roles`, a copy of `local` on its own ports, with the role model of issue 23:
 * a role shaped by `grants` (orders_writer), one on every table of a schema (reporter), the
 * migrator, and the shorthands. Real Terraform, Vault, Postgres 17; psql for the injections.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { Client } from 'pg';
import { DatabaseCredentials, VaultSession } from '@pgvault/runtime';
import { EnvironmentConfig } from '../../stacks/config';
import { postgresSsl } from '../../ops/postgres/db-bootstrap';
import { verifyRole } from '../../demo/verify';
import * as h from '../harness';

const ENV = 'roles';
const PORTS = { postgres: 15560, vault: 18360 };
const TEST_TIMEOUT_MS = 120_000;
const PSQL_TIMEOUT_MS = 30_000;

/** The issue's example roles; reporter targets the primary here (local has no replica). */
const ROLES = {
  orders_writer: {
    grants: { 'app.orders': ['SELECT', 'INSERT', 'UPDATE'], 'app.customers': { SELECT: ['id', 'name'] } },
    defaultTtlSeconds: 3600,
    maxTtlSeconds: 86400,
  },
  reporter: { grants: { 'app.*': ['SELECT'] }, defaultTtlSeconds: 3600, maxTtlSeconds: 86400 },
  migrator: { access: 'migrate', defaultTtlSeconds: 900, maxTtlSeconds: 3600 },
  readonly: { access: 'read', defaultTtlSeconds: 3600, maxTtlSeconds: 86400 },
  readwrite: { access: 'write', defaultTtlSeconds: 3600, maxTtlSeconds: 86400 },
  // A table of the database's own (not the project's), and a schema the bootstrap makes.
  legacy: { grants: { 'public.legacy': ['SELECT'], 'sales.*': ['SELECT'] }, defaultTtlSeconds: 600, maxTtlSeconds: 600 },
};

/** What a migration run by the migrator creates. */
const MIGRATION = [
  'CREATE TABLE app.customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL, email text NOT NULL)',
  'CREATE TABLE app.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer_id bigint NOT NULL REFERENCES app.customers, amount_cents int NOT NULL)',
  'CREATE TABLE app.secrets (id int PRIMARY KEY, secret text NOT NULL)',
  "INSERT INTO app.customers (name, email) VALUES ('Ada', 'ada@example.com')",
  "INSERT INTO app.secrets VALUES (1, 'the-crown-jewels')",
  // What a careless (or hostile) migration could leave: a function that runs with the owner's rights.
  'CREATE FUNCTION app.wipe_secrets() RETURNS void LANGUAGE sql SECURITY DEFINER AS $$ DELETE FROM app.secrets $$',
];

describe('roles shaped by grants, and the migrator', { timeout: 15 * 60_000 }, () => {
  let env: EnvironmentConfig;
  let admin: Client;
  let session: VaultSession;
  let mount: string;
  const opened: Client[] = [];
  const leases: string[] = [];

  async function issue(role: string): Promise<DatabaseCredentials> {
    const creds = await session.issue(mount, role);
    leases.push(creds.leaseId);
    return creds;
  }

  async function connect(creds: DatabaseCredentials): Promise<Client> {
    const c = new Client({
      host: env.postgres.clientHost, port: env.postgres.clientPort, database: env.postgres.database,
      user: creds.username, password: creds.password, ssl: postgresSsl(env), connectionTimeoutMillis: 5000, query_timeout: 30_000,
    });
    c.on('error', () => undefined);
    opened.push(c);
    await c.connect();
    return c;
  }

  /** 'ok', or the SQLSTATE Postgres refused the statement with. */
  async function attempt(c: Client, sql: string): Promise<string> {
    try {
      await c.query(sql);
      return 'ok';
    } catch (e: any) {
      return e.code ?? e.message;
    }
  }

  /** psql, the standard client, as the dynamic user: its exit code and what it printed. */
  function psql(creds: DatabaseCredentials, sql: string): { status: number | null; output: string } {
    const r = spawnSync(h.psqlBinary(), ['-X', '-v', 'ON_ERROR_STOP=1', '-h', env.postgres.clientHost, '-p', String(env.postgres.clientPort), '-U', creds.username, '-d', env.postgres.database, '-c', sql], {
      encoding: 'utf8', timeout: PSQL_TIMEOUT_MS, killSignal: 'SIGKILL', env: { ...process.env, PGPASSWORD: creds.password, PGCONNECT_TIMEOUT: '5' },
    });
    if (r.error) throw new Error(`psql: ${r.error.message}`);
    return { status: r.status, output: `${r.stdout}${r.stderr}` };
  }

  async function deployLogged(): Promise<string> {
    const out: string[] = [];
    const log = console.log;
    console.log = (...a: unknown[]) => {
      out.push(a.join(' '));
      log(...a);
    };
    const from = h.cdktfLogSize();
    try {
      await h.deploy(ENV);
    } finally {
      console.log = log;
    }
    return `${out.join('\n')}\n${h.cdktfLogSince(from)}`;
  }

  before(async () => {
    h.requireToolchain();
    h.localCopy(ENV, PORTS, (doc) => (doc.roles = ROLES));
    env = h.loadEnvironment(ENV);
    await h.destroy(ENV);
    const { value: output, seconds } = await h.timed(deployLogged);
    console.log(`# figure: cold deploy of ${ENV}: ${seconds.toFixed(1)}s`);
    assert.match(output, /app\.customers, app\.orders, public\.legacy; their grants wait[^]*run the migration/, 'the tables the migration has not made yet are reported, and the deploy goes on');
    admin = await h.adminClient(env);
    const app = await h.appSession(ENV);
    session = app.session;
    mount = app.cfg.mountPath;
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  after(async () => {
    for (const c of opened) await c.end().catch(() => undefined);
    for (const l of leases) await session?.revoke(l).catch(() => undefined);
    await session?.revokeSelf().catch(() => undefined);
    await admin?.end().catch(() => undefined);
    await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  test('the migrator creates tables and a function as the owner role, not as its short-lived user', { timeout: TEST_TIMEOUT_MS }, async () => {
    const creds = await issue('migrator');
    const c = await connect(creds);
    const who = (await c.query('SELECT current_user AS acting, session_user AS login')).rows[0];
    assert.deepEqual(who, { acting: env.database.ownerRole, login: creds.username });
    for (const stmt of MIGRATION) await c.query(stmt);
    const owners = await admin.query(
      `SELECT c.relname, pg_get_userbyid(c.relowner) AS owner FROM pg_class c WHERE c.relnamespace = 'app'::regnamespace AND c.relname IN ('orders', 'customers', 'secrets') ORDER BY 1`,
    );
    assert.deepEqual(owners.rows.map((x) => x.owner), [env.database.ownerRole, env.database.ownerRole, env.database.ownerRole], JSON.stringify(owners.rows));
    const fn = await admin.query(`SELECT pg_get_userbyid(proowner) AS owner, proacl::text AS acl FROM pg_proc WHERE proname = 'wipe_secrets'`);
    assert.equal(fn.rows[0].owner, env.database.ownerRole);
    assert.doesNotMatch(fn.rows[0].acl ?? '', /(^|[{,])=X/, 'PUBLIC may not run it (the owner\'s default privileges)');
    assert.equal((await admin.query('SELECT count(*)::int AS n FROM pg_shdepend s JOIN pg_roles r ON r.oid = s.refobjid WHERE r.rolname = $1 AND s.deptype = $2', [creds.username, 'o'])).rows[0].n, 0, 'the user owns nothing');
    await c.end();
  });

  test('a deploy grants the declared privileges on the new tables and revokes what was granted by hand', { timeout: h.DEPLOY_HOOK_TIMEOUT_MS }, async () => {
    const group = env.roles.find((r) => r.name === 'orders_writer')!.groupRole;
    await admin.query(`GRANT DELETE ON app.orders TO ${group}`);
    await admin.query(`GRANT SELECT (email) ON app.customers TO ${group}`);
    await admin.query(`GRANT SELECT ON app.items TO ${group}`);
    await admin.query(`GRANT INSERT ON app.secrets TO ${env.database.groupRoles.read}`);
    // What a migration could do to the owner's defaults: functions made later open to PUBLIC.
    await admin.query(`ALTER DEFAULT PRIVILEGES FOR ROLE ${env.database.ownerRole} GRANT EXECUTE ON FUNCTIONS TO PUBLIC`);
    // The database's own table, with a grant of its own that the deploy must leave alone.
    await admin.query('CREATE ROLE legacy_app NOLOGIN');
    await admin.query('CREATE TABLE public.legacy (id int)');
    await admin.query('GRANT SELECT, INSERT ON public.legacy TO legacy_app');
    // A migrator, acting as the owner, opens its SECURITY DEFINER function to everyone by hand:
    // a grant that would outlive its lease.
    const m = await connect(await issue('migrator'));
    await m.query('GRANT EXECUTE ON FUNCTION app.wipe_secrets() TO PUBLIC');
    // An ordinary function (it runs with the caller's rights): a grant the deploy leaves alone.
    await m.query("CREATE FUNCTION app.slug(t text) RETURNS text LANGUAGE sql AS $$ SELECT lower(t) $$");
    await m.query('GRANT EXECUTE ON FUNCTION app.slug(text) TO PUBLIC');
    await m.end();
    const output = await deployLogged();
    const fn = await admin.query(`SELECT proacl::text AS acl FROM pg_proc WHERE proname = 'wipe_secrets'`);
    assert.doesNotMatch(fn.rows[0].acl ?? '', /(^|[{,])=X/, 'the deploy took EXECUTE on the migrator\'s function from PUBLIC again');
    const slug = await admin.query(`SELECT proacl::text AS acl FROM pg_proc WHERE proname = 'slug'`);
    assert.match(slug.rows[0].acl ?? '', /(^|[{,])=X/, 'EXECUTE on an ordinary function stays as the migration granted it');
    const legacy = await admin.query(`SELECT pg_get_userbyid(relowner) AS owner, relacl::text AS acl FROM pg_class WHERE oid = 'public.legacy'::regclass`);
    assert.equal(legacy.rows[0].owner, 'postgres', 'its owner is unchanged');
    assert.match(legacy.rows[0].acl, /legacy_app=ar\/postgres/, 'its own grants are unchanged');
    assert.match(legacy.rows[0].acl, new RegExp(`${env.roles.find((r) => r.name === 'legacy')!.groupRole}=r/postgres`), 'the declared SELECT is granted');
    const sales = await admin.query(`SELECT pg_get_userbyid(nspowner) AS owner, obj_description(oid, 'pg_namespace') AS comment FROM pg_namespace WHERE nspname = 'sales'`);
    assert.deepEqual(sales.rows[0], { owner: env.database.ownerRole, comment: env.database.mark }, 'a schema named in grants is made, owned by the owner role and marked');
    const defaults = await admin.query(`SELECT defaclacl::text AS acl FROM pg_default_acl WHERE defaclrole = $1::regrole AND defaclobjtype = 'f' AND defaclnamespace = 0`, [env.database.ownerRole]);
    assert.doesNotMatch(defaults.rows[0]?.acl ?? '', /(^|[{,])=X/, 'the deploy took EXECUTE on future functions from PUBLIC again');
    assert.doesNotMatch(output, /do not exist yet/, 'the migration made the named tables');
    const privileges = async (role: string) =>
      (await admin.query(
        `SELECT c.relname || ':' || a.privilege_type AS p FROM pg_class c, aclexplode(c.relacl) a WHERE a.grantee = $1::regrole AND c.relnamespace = 'app'::regnamespace
         UNION ALL SELECT c.relname || '.' || t.attname || ':' || a.privilege_type FROM pg_attribute t JOIN pg_class c ON c.oid = t.attrelid, aclexplode(t.attacl) a
          WHERE a.grantee = $1::regrole AND c.relnamespace = 'app'::regnamespace ORDER BY 1`,
        [role],
      )).rows.map((x) => x.p);
    assert.deepEqual(await privileges(group), ['customers.id:SELECT', 'customers.name:SELECT', 'orders:INSERT', 'orders:SELECT', 'orders:UPDATE']);
    assert.deepEqual(await privileges(env.database.groupRoles.read), ['customers:SELECT', 'idempotency_keys:SELECT', 'items:SELECT', 'orders:SELECT', 'secrets:SELECT']);
    const reporter = env.roles.find((r) => r.name === 'reporter')!.groupRole;
    assert.deepEqual(await privileges(reporter), ['customers:SELECT', 'idempotency_keys:SELECT', 'items:SELECT', 'orders:SELECT', 'secrets:SELECT'], 'app.* covers the tables the migrator made');
  });

  test('orders_writer writes orders, reads two columns of customers, and nothing else', { timeout: TEST_TIMEOUT_MS }, async () => {
    const c = await connect(await issue('orders_writer'));
    assert.equal(await attempt(c, 'INSERT INTO app.orders (customer_id, amount_cents) SELECT id, 1200 FROM app.customers WHERE name = \'Ada\''), 'ok');
    assert.equal(await attempt(c, 'UPDATE app.orders SET amount_cents = 1300'), 'ok');
    assert.equal(await attempt(c, 'SELECT id, name FROM app.customers'), 'ok');
    assert.equal(await attempt(c, 'SELECT email FROM app.customers'), '42501', 'customers.email');
    assert.equal(await attempt(c, 'SELECT * FROM app.customers'), '42501', 'customers.*');
    assert.equal(await attempt(c, 'DELETE FROM app.orders'), '42501', 'DELETE');
    assert.equal(await attempt(c, 'TRUNCATE app.orders'), '42501', 'TRUNCATE');
    for (const t of ['app.items', 'app.secrets', 'app.idempotency_keys']) assert.equal(await attempt(c, `SELECT * FROM ${t}`), '42501', t);
    assert.equal(await attempt(c, 'INSERT INTO app.customers (name, email) VALUES (\'x\', \'y\')'), '42501', 'INSERT into customers');
    assert.equal(await attempt(c, 'CREATE TABLE app.mine (x int)'), '42501', 'CREATE in the schema');
    assert.equal(await attempt(c, 'SELECT app.wipe_secrets()'), '42501', 'the migrator\'s SECURITY DEFINER function');
  });

  test('an SQL injection through orders_writer is refused by Postgres (psql)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const creds = await issue('orders_writer');
    const id = "1; DELETE FROM app.customers";
    const stacked = psql(creds, `SELECT id FROM app.orders WHERE id = ${id}`);
    assert.notEqual(stacked.status, 0);
    assert.match(stacked.output, /permission denied for table customers/);
    const union = psql(creds, `SELECT id, amount_cents::text FROM app.orders WHERE id = 0 UNION SELECT id, secret FROM app.secrets`);
    assert.notEqual(union.status, 0);
    assert.match(union.output, /permission denied for table secrets/);
    assert.doesNotMatch(union.output, /crown-jewels/);
    assert.equal((await admin.query('SELECT count(*)::int AS n FROM app.customers')).rows[0].n, 1, 'the customers are all there');
  });

  test('a reader cannot run the SECURITY DEFINER function the migrator made', { timeout: TEST_TIMEOUT_MS }, async () => {
    for (const role of ['readonly', 'reporter', 'readwrite']) {
      const c = await connect(await issue(role));
      assert.equal(await attempt(c, 'SELECT app.wipe_secrets()'), '42501', role);
    }
    assert.equal((await admin.query('SELECT count(*)::int AS n FROM app.secrets')).rows[0].n, 1);
  });

  test('the demo\'s report: each role\'s permitted statement runs, and its injected one is refused', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { cfg } = await h.appSession(ENV);
    for (const role of env.roles) {
      const report = await verifyRole(session, cfg, role.name, role.access, role.grants);
      const names = report.checks.map((c) => c.name);
      assert.ok(names.some((n) => n.startsWith('injection: ')), `${role.name}: ${names.join(', ')}`);
      assert.deepEqual(report.checks.filter((c) => !c.ok), [], role.name);
      for (const c of report.checks.filter((x) => x.name.startsWith('injection: '))) assert.match(c.detail, /refused \(42501/, `${role.name}: ${c.detail}`);
    }
  });

  test('revoking a user of each new role leaves nothing: no role, no login, no dependency', { timeout: TEST_TIMEOUT_MS }, async () => {
    for (const role of ['orders_writer', 'reporter', 'migrator']) {
      const creds = await issue(role);
      const c = await connect(creds);
      await c.query('CREATE TEMP TABLE scratch (x int)');
      await c.query('SELECT lo_create(0)');
      await session.revoke(creds.leaseId);
      const left = await admin.query(
        `SELECT (SELECT count(*)::int FROM pg_roles WHERE rolname = $1) AS roles,
                (SELECT count(*)::int FROM pg_shdepend s JOIN pg_roles r ON r.oid = s.refobjid WHERE r.rolname = $1) AS dependencies`,
        [creds.username],
      );
      assert.deepEqual(left.rows[0], { roles: 0, dependencies: 0 }, role);
      assert.notEqual(await h.tryLogin(env, creds.username, creds.password), 'ok', `${role}: no login`);
    }
    const tables = await admin.query(`SELECT count(*)::int AS n FROM pg_class WHERE relnamespace = 'app'::regnamespace AND relname IN ('orders', 'customers', 'secrets')`);
    assert.equal(tables.rows[0].n, 3, 'the migrator\'s tables stay: they are the owner role\'s');
  });
});
