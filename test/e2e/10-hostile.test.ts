/**
 * End to end on `hostile`, a copy of `local` on its own ports: a holder of one dynamic
 * credential, readonly or readwrite, tries what the security review tried. Every attack runs
 * against the real deploy (Terraform, Vault, Postgres 17 in Docker, the reaper); the assertions
 * are Postgres's view afterwards: no login, no session, nothing owned by the revoked role.
 */
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { Client } from 'pg';
import { DatabaseCredentials, VaultSession } from '@pgvault/runtime';
import { EnvironmentConfig, REPO_ROOT } from '../../stacks/config';
import { adminConnect, dropDynamicUsers, postgresSsl } from '../../ops/postgres/db-bootstrap';
import * as h from '../harness';

const ENV = 'hostile';
/** The bounds given to both roles: short, so the reaper's work shows within seconds. */
const STATEMENT_SECONDS = 4;
const IDLE_SECONDS = 3;
/** The reaper's bound beyond a role's own: its interval (0.5 s) and a pass's run time. */
const REAPER_SLACK_MILLIS = 2000;
/** Another team's database on the same server, open to PUBLIC as CREATE DATABASE leaves it. */
const OTHER_DB = 'hostile_other';
/** A database that allows no connections (as a template or a database being restored): the superuser's clean-up cannot reach it. */
const CLOSED_DB = 'hostile_closed';

describe('hostile dynamic users', { timeout: 20 * 60_000 }, () => {
  let env: EnvironmentConfig;
  let admin: Client;
  /** The last test destroys the environment itself, with its admin connection ended first. */
  let adminEnded = false;
  let session: VaultSession;
  let mount: string;
  const opened: Client[] = [];

  /** A client for `creds` in `database`; its errors (a terminated session) are kept for the test to see. */
  async function connect(creds: DatabaseCredentials, database = env.postgres.database): Promise<Client & { lost?: Error }> {
    const c: Client & { lost?: Error } = new Client({
      host: env.postgres.clientHost,
      port: env.postgres.clientPort,
      database,
      user: creds.username,
      password: creds.password,
      ssl: postgresSsl(env),
      connectionTimeoutMillis: 5000,
      query_timeout: 60_000,
    });
    c.on('error', (e) => (c.lost = e));
    opened.push(c);
    await c.connect();
    return c;
  }

  /** The SQLSTATE a connection attempt ends with, or 'ok'. */
  async function connectState(creds: DatabaseCredentials, database?: string): Promise<string> {
    try {
      await connect(creds, database);
      return 'ok';
    } catch (e: any) {
      return e.code ?? e.message;
    }
  }

  async function role(name: string): Promise<{ canlogin: boolean; comment: string | null; memberships: number } | undefined> {
    const r = await admin.query(
      `SELECT r.rolcanlogin AS canlogin, shobj_description(r.oid, 'pg_authid') AS comment,
              (SELECT count(*)::int FROM pg_auth_members m WHERE m.member = r.oid) AS memberships
         FROM pg_roles r WHERE r.rolname = $1`,
      [name],
    );
    return r.rows[0];
  }

  /** Sessions of a role on the primary, by name or by the pids it had (a dropped role has no name). */
  async function sessions(pids: number[]): Promise<number> {
    const r = await admin.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ANY($1)', [pids]);
    return r.rows[0].n;
  }

  /** What the role owns or holds anywhere on the server (pg_shdepend covers every database). */
  async function dependencies(name: string): Promise<number> {
    const r = await admin.query(
      `SELECT count(*)::int AS n FROM pg_shdepend s JOIN pg_roles r ON r.oid = s.refobjid
        WHERE s.refclassid = 'pg_authid'::regclass AND r.rolname = $1`,
      [name],
    );
    return r.rows[0].n;
  }

  before(async () => {
    h.requireToolchain();
    h.scratchEnvironment(
      'local',
      (doc) => {
        doc.docker = { postgresHostPort: 15520, vaultHostPort: 18320 };
        for (const r of Object.values<any>(doc.roles)) Object.assign(r, { statementTimeoutSeconds: STATEMENT_SECONDS, idleInTransactionTimeoutSeconds: IDLE_SECONDS });
      },
      ENV,
    );
    env = h.loadEnvironment(ENV);
    await h.destroy(ENV);
    const { seconds } = await h.timed(() => h.deploy(ENV));
    console.log(`# figure: cold deploy of ${ENV}: ${seconds.toFixed(1)}s`);
    admin = await h.adminClient(env);
    await admin.query(`CREATE DATABASE ${OTHER_DB}`);
    const app = await h.appSession(ENV);
    session = app.session;
    mount = app.cfg.mountPath;
  }, { timeout: 10 * 60_000 });

  after(async () => {
    for (const c of opened) await c.end().catch(() => undefined);
    await session?.revokeSelf().catch(() => undefined);
    if (!adminEnded) await admin?.end().catch(() => undefined);
    await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
  }, { timeout: 5 * 60_000 });

  test('dynamic users reach the app\'s database only; the superuser still reaches the others', { timeout: 60_000 }, async () => {
    for (const r of ['readonly', 'readwrite']) {
      const creds = await session.issue(mount, r);
      assert.equal(await connectState(creds), 'ok');
      for (const db of ['postgres', 'template1']) assert.equal(await connectState(creds, db), '42501', `${r} cannot connect to ${db}`);
      await session.revoke(creds.leaseId);
    }
    const open = await admin.query(
      `SELECT datname FROM pg_database d WHERE datallowconn AND datname IN ('postgres', 'template1')
          AND (datacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(datacl) a WHERE a.grantee = 0 AND a.privilege_type = 'CONNECT'))`,
    );
    assert.deepEqual(open.rows, [], 'PUBLIC has no CONNECT on postgres and template1');
    const su = await adminConnect(env, 10_000, 'postgres');
    await su.end();
  });

  test('Vault\'s role can read or change no app data (PostgreSQL 16+: ADMIN OPTION only)', { timeout: 30_000 }, async () => {
    const vault = env.secretsEngine.vaultUser;
    const p = await admin.query(
      `SELECT has_table_privilege($1, 'app.items', 'SELECT') AS s, has_table_privilege($1, 'app.items', 'DELETE') AS d,
              has_table_privilege($1, 'app.items', 'INSERT') AS i, has_table_privilege($1, 'app.items', 'UPDATE') AS u`,
      [vault],
    );
    assert.deepEqual(p.rows[0], { s: false, d: false, i: false, u: false });
    await admin.query("INSERT INTO app.items (name) VALUES ('hostile-canary')");
    await admin.query('BEGIN');
    try {
      await admin.query(`SET LOCAL ROLE ${admin.escapeIdentifier(vault)}`);
      await admin.query('SAVEPOINT a');
      await assert.rejects(admin.query('SELECT count(*) FROM app.items'), { code: '42501' });
      await admin.query('ROLLBACK TO SAVEPOINT a');
      await assert.rejects(admin.query('DELETE FROM app.items'), { code: '42501' });
      await admin.query('ROLLBACK TO SAVEPOINT a');
    } finally {
      await admin.query('ROLLBACK');
    }
    // Nor through a group: it holds them with ADMIN OPTION only, neither inherited nor SET-able.
    for (const group of [env.database.groupRoles.read, env.database.groupRoles.write]) {
      const m = await admin.query(`SELECT pg_has_role($1, $2, 'USAGE') AS usage, pg_has_role($1, $2, 'SET') AS set, pg_has_role($1, $2, 'USAGE WITH ADMIN OPTION') AS admin`, [vault, group]);
      assert.deepEqual(m.rows[0], { usage: false, set: false, admin: true }, group);
    }
    // Nor through the retired role, which owns every table handed over at revocation: it lends it to itself only inside a revocation.
    const retired = await admin.query(`SELECT pg_has_role($1, $2, 'USAGE') AS usage, pg_has_role($1, $2, 'SET') AS set`, [vault, env.database.retiredRole]);
    assert.deepEqual(retired.rows[0], { usage: false, set: false }, env.database.retiredRole);
    const left = await admin.query("SELECT count(*)::int AS n FROM app.items WHERE name = 'hostile-canary'");
    assert.equal(left.rows[0].n, 1);
  });

  test('a readonly user that leaves objects in another database is still disarmed by its revocation; the superuser drops it later', { timeout: 90_000 }, async () => {
    const creds = await session.issue(mount, 'readonly');
    const other = await connect(creds, OTHER_DB);
    await other.query("SELECT lo_from_bytea(0, 'kept elsewhere')");
    await other.query('ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC');
    const c = await connect(creds);
    const lo = await c.query("SELECT lo_from_bytea(0, repeat('x', 1024 * 1024)::bytea) AS oid");
    await c.query('CREATE TEMP TABLE scratch (x int)');
    await c.query('CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$');
    await assert.rejects(c.query('CREATE TABLE app.mine (x int)'), { code: '42501' }, 'readonly cannot create in the app schema');
    await assert.rejects(c.query('CREATE TABLE public.mine (x int)'), { code: '42501' });
    const pids = [(await c.query('SELECT pg_backend_pid() AS p')).rows[0].p, (await other.query('SELECT pg_backend_pid() AS p')).rows[0].p];

    await session.revoke(creds.leaseId);

    const after = await role(creds.username);
    assert.ok(after, 'the role is kept: an object in another database holds it');
    assert.equal(after.canlogin, false);
    assert.equal(after.memberships, 0, 'no group membership');
    assert.equal(after.comment, `${env.database.mark} disarmed read`);
    assert.notEqual(await h.tryLogin(env, creds.username, creds.password), 'ok', 'no login');
    await h.waitFor('the sessions to end', async () => (await sessions(pids)) === 0, 5000);
    const los = await admin.query('SELECT count(*)::int AS n FROM pg_largeobject_metadata WHERE oid = $1', [lo.rows[0].oid]);
    assert.equal(los.rows[0].n, 0, 'its large object in app was dropped, not handed over');
    const inApp = await admin.query(
      `SELECT count(*)::int AS n FROM pg_shdepend s JOIN pg_roles r ON r.oid = s.refobjid
        WHERE r.rolname = $1 AND s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())`,
      [creds.username],
    );
    assert.equal(inApp.rows[0].n, 0, 'it owns nothing in app');

    const { dropped, kept } = await dropDynamicUsers(admin, env, { disarmedOnly: true });
    assert.deepEqual({ dropped, kept }, { dropped: [creds.username], kept: [] }, 'the bootstrap and the teardown drop it, in every database');
    assert.equal(await role(creds.username), undefined);
  });

  test('a readwrite user\'s tables go to the retired role; its routines lose EXECUTE for PUBLIC; nothing stays owned by it', { timeout: 90_000 }, async () => {
    const creds = await session.issue(mount, 'readwrite');
    const c = await connect(creds);
    await c.query('CREATE TABLE app.hostile_kept (x int)');
    await c.query("INSERT INTO app.hostile_kept VALUES (1)");
    await c.query('CREATE FUNCTION app.hostile_f() RETURNS int LANGUAGE sql SECURITY DEFINER AS $$ SELECT count(*)::int FROM app.items $$');
    await c.query('CREATE PROCEDURE app.hostile_p() LANGUAGE sql AS $$ SELECT 1 $$');
    await c.query('ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT ALL ON TABLES TO PUBLIC');
    await c.query("SELECT lo_from_bytea(0, 'w')");
    await c.query('CREATE TEMP TABLE scratch (x int)');
    assert.equal(await connectState(creds, OTHER_DB), 'ok');
    const pid = (await c.query('SELECT pg_backend_pid() AS p')).rows[0].p;

    await session.revoke(creds.leaseId);

    assert.equal(await role(creds.username), undefined, 'dropped: nothing outside app held it');
    assert.notEqual(await h.tryLogin(env, creds.username, creds.password), 'ok');
    await h.waitFor('the session to end', async () => (await sessions([pid])) === 0, 5000);
    const owners = await admin.query(
      `SELECT c.relname AS what, pg_get_userbyid(c.relowner) AS owner FROM pg_class c WHERE c.relname = 'hostile_kept'
       UNION ALL SELECT p.proname, pg_get_userbyid(p.proowner) FROM pg_proc p WHERE p.proname IN ('hostile_f', 'hostile_p') ORDER BY 1`,
    );
    assert.deepEqual(owners.rows, ['hostile_f', 'hostile_kept', 'hostile_p'].map((what) => ({ what, owner: env.database.retiredRole })));
    const vaultUses = await admin.query(`SELECT has_table_privilege($1, 'app.hostile_kept', 'SELECT') AS s, has_table_privilege($1, 'app.hostile_kept', 'DELETE') AS d`, [env.secretsEngine.vaultUser]);
    assert.deepEqual(vaultUses.rows[0], { s: false, d: false }, 'Vault\'s role cannot read or change a handed-over table');
    const exec = await admin.query(
      `SELECT count(*)::int AS n FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
        WHERE p.proname IN ('hostile_f', 'hostile_p') AND a.grantee = 0`,
    );
    assert.equal(exec.rows[0].n, 0, 'PUBLIC cannot run the SECURITY DEFINER function or the procedure');
    const defaults = await admin.query("SELECT count(*)::int AS n FROM pg_default_acl WHERE pg_get_userbyid(defaclrole) NOT LIKE 'pgvault_%'");
    assert.equal(defaults.rows[0].n, 0, 'its default privileges are gone');
    await admin.query('DROP TABLE app.hostile_kept; DROP FUNCTION app.hostile_f(); DROP PROCEDURE app.hostile_p()');
  });

  test('a readwrite user whose hand-over is stopped by a lock is still disarmed; the superuser later hands its table over, rows intact', { timeout: 120_000 }, async () => {
    const creds = await session.issue(mount, 'readwrite');
    const c = await connect(creds);
    await c.query('CREATE TABLE app.hostile_migrated (x int)');
    await c.query('INSERT INTO app.hostile_migrated SELECT generate_series(1, 100)');
    // A reader past the revocation's lock_timeout (2 s): a backup holds ACCESS SHARE on every table it dumps.
    const backup = await h.adminClient(env);
    try {
      await backup.query('BEGIN');
      await backup.query('LOCK TABLE app.hostile_migrated IN ACCESS SHARE MODE');
      const { seconds } = await h.timed(() => session.revoke(creds.leaseId));
      console.log(`# figure: revocation of a writer whose table a reader locks took ${seconds.toFixed(2)}s (lock_timeout 2 s)`);
      const after = await role(creds.username);
      assert.ok(after, 'kept: the lock stopped the hand-over, so its table holds it');
      assert.deepEqual({ canlogin: after.canlogin, memberships: after.memberships, comment: after.comment }, { canlogin: false, memberships: 0, comment: `${env.database.mark} disarmed write` });
      assert.notEqual(await h.tryLogin(env, creds.username, creds.password), 'ok', 'no login');
      const member = await admin.query(`SELECT pg_has_role($1, $2, 'USAGE') AS usage, pg_has_role($1, $2, 'SET') AS set`, [env.secretsEngine.vaultUser, creds.username]);
      assert.deepEqual(member.rows[0], { usage: false, set: false }, 'Vault\'s role gave up the membership that would give it the owner\'s rights on the table');
      // The superuser's clean-up waits for the lock a bounded time too, then leaves the role for the next pass.
      const { value: early, seconds: cleanUpSeconds } = await h.timed(() => dropDynamicUsers(admin, env, { disarmedOnly: true }));
      console.log(`# figure: the superuser's clean-up of that writer, its table still locked, gave up after ${cleanUpSeconds.toFixed(2)}s`);
      assert.deepEqual(early, { dropped: [], kept: [creds.username] });
      assert.equal((await role(creds.username))?.comment, `${env.database.mark} disarmed write`);
    } finally {
      await backup.query('ROLLBACK').catch(() => undefined);
      await backup.end().catch(() => undefined);
    }

    // The bootstrap's (and the teardown's) clean-up: its table must survive.
    const { dropped, kept } = await dropDynamicUsers(admin, env, { disarmedOnly: true });
    assert.deepEqual({ dropped, kept }, { dropped: [creds.username], kept: [] });
    const t = await admin.query(
      `SELECT pg_get_userbyid(c.relowner) AS owner, (SELECT count(*)::int FROM app.hostile_migrated) AS rows, (SELECT sum(x)::int FROM app.hostile_migrated) AS total
         FROM pg_class c WHERE c.oid = 'app.hostile_migrated'::regclass`,
    );
    assert.deepEqual(t.rows[0], { owner: env.database.retiredRole, rows: 100, total: 5050 }, 'handed to the retired role, never dropped');
    await admin.query('DROP TABLE app.hostile_migrated');
  });

  test('SET ROLE to the group role is refused (42501), as readonly and as readwrite; what the user then makes is its own, and goes with its revocation', { timeout: 90_000 }, async () => {
    for (const [r, group] of [['readonly', env.database.groupRoles.read], ['readwrite', env.database.groupRoles.write]] as const) {
      const creds = await session.issue(mount, r);
      const c = await connect(creds);
      await assert.rejects(c.query(`SET ROLE ${c.escapeIdentifier(group)}`), { code: '42501' }, `${r}: SET ROLE ${group}`);
      assert.equal((await c.query('SELECT current_user AS u')).rows[0].u, creds.username);
      // Still the group's privileges, by inheritance.
      assert.ok((await c.query("SELECT has_table_privilege('app.items', 'SELECT') AS s")).rows[0].s);
      const lo = (await c.query("SELECT lo_from_bytea(0, repeat('y', 1024 * 1024)::bytea) AS oid")).rows[0].oid;
      const owner = await admin.query('SELECT pg_get_userbyid(lomowner) AS o FROM pg_largeobject_metadata WHERE oid = $1', [lo]);
      assert.equal(owner.rows[0].o, creds.username, 'the large object is the user\'s own, not the group\'s');
      await session.revoke(creds.leaseId);
      assert.equal(await role(creds.username), undefined);
      const los = await admin.query('SELECT count(*)::int AS n FROM pg_largeobject_metadata WHERE oid = $1', [lo]);
      // A reader's is dropped; a writer's is handed to the retired role (a large object can be data), never kept by the group.
      assert.deepEqual(
        { n: los.rows[0].n, owner: (await admin.query('SELECT pg_get_userbyid(lomowner) AS o FROM pg_largeobject_metadata WHERE oid = $1', [lo])).rows[0]?.o },
        r === 'readonly' ? { n: 0, owner: undefined } : { n: 1, owner: env.database.retiredRole },
        r,
      );
      if (r === 'readwrite') await admin.query('SELECT lo_unlink($1)', [lo]);
    }
    const groupOwned = await admin.query(
      `SELECT count(*)::int AS n FROM pg_shdepend s JOIN pg_roles r ON r.oid = s.refobjid WHERE s.deptype = 'o' AND r.rolname = ANY($1)`,
      [[env.database.groupRoles.read, env.database.groupRoles.write]],
    );
    assert.equal(groupOwned.rows[0].n, 0, 'the group roles own nothing');
  });

  test('a readwrite user that leaves objects in another database is still disarmed; the superuser hands them over there, rows intact', { timeout: 90_000 }, async () => {
    // Another team's database where anyone may create (as public was before PostgreSQL 15).
    const su = await adminConnect(env, 10_000, OTHER_DB);
    await su.query('GRANT CREATE ON SCHEMA public TO PUBLIC');
    const creds = await session.issue(mount, 'readwrite');
    const other = await connect(creds, OTHER_DB);
    await other.query('CREATE TABLE public.hostile_elsewhere (x int)');
    await other.query('INSERT INTO public.hostile_elsewhere SELECT generate_series(1, 10)');
    await other.query('CREATE FUNCTION public.hostile_elsewhere_f() RETURNS int LANGUAGE sql SECURITY DEFINER AS $$ SELECT 1 $$');
    const lo = (await other.query("SELECT lo_from_bytea(0, 'kept data') AS oid")).rows[0].oid;
    const pid = (await other.query('SELECT pg_backend_pid() AS p')).rows[0].p;

    await session.revoke(creds.leaseId);

    const after = await role(creds.username);
    assert.ok(after, 'kept: its table in another database holds it');
    assert.deepEqual({ canlogin: after.canlogin, memberships: after.memberships, comment: after.comment }, { canlogin: false, memberships: 0, comment: `${env.database.mark} disarmed write` });
    assert.notEqual(await h.tryLogin(env, creds.username, creds.password, { ...env.postgres, database: OTHER_DB }), 'ok', 'no login, there either');
    await h.waitFor('its session in the other database to end', async () => (await sessions([pid])) === 0, 5000);

    try {
      const { dropped, kept } = await dropDynamicUsers(admin, env, { disarmedOnly: true });
      assert.deepEqual({ dropped, kept }, { dropped: [creds.username], kept: [] });
      const t = await su.query(
        `SELECT pg_get_userbyid(c.relowner) AS owner, (SELECT sum(x)::int FROM public.hostile_elsewhere) AS total,
                (SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'hostile_elsewhere_f') AS fowner,
                (SELECT pg_get_userbyid(lomowner) FROM pg_largeobject_metadata WHERE oid = $1) AS loowner,
                convert_from(lo_get($1), 'UTF8') AS lo
           FROM pg_class c WHERE c.oid = 'public.hostile_elsewhere'::regclass`,
        [lo],
      );
      assert.deepEqual(t.rows[0], { owner: env.database.retiredRole, total: 55, fowner: env.database.retiredRole, loowner: env.database.retiredRole, lo: 'kept data' }, 'handed to the retired role, never dropped');
    } finally {
      // The retired role must own nothing outside the app's database when the environment is destroyed.
      await su.query('DROP TABLE IF EXISTS public.hostile_elsewhere; DROP FUNCTION IF EXISTS public.hostile_elsewhere_f(); REVOKE CREATE ON SCHEMA public FROM PUBLIC').catch(() => undefined);
      await su.query('SELECT lo_unlink($1)', [lo]).catch(() => undefined);
      await su.end();
    }
  });

  test('SET statement_timeout = 0 does not escape the statement bound: the reaper ends the statement', { timeout: 60_000 }, async () => {
    const creds = await session.issue(mount, 'readonly');
    const c = await connect(creds);
    assert.equal((await c.query('SHOW statement_timeout')).rows[0].statement_timeout, `${STATEMENT_SECONDS}s`, 'the role\'s default');
    await c.query('SET statement_timeout = 0');
    const t = Date.now();
    await assert.rejects(c.query('SELECT pg_sleep(60)'), (e: any) => e.code === '57P01' || /terminat/i.test(e.message));
    const seconds = (Date.now() - t) / 1000;
    console.log(`# figure: a statement with statement_timeout = 0 ended by the reaper after ${seconds.toFixed(2)}s (bound ${STATEMENT_SECONDS}s)`);
    assert.ok(seconds >= STATEMENT_SECONDS - 0.5 && seconds <= STATEMENT_SECONDS + REAPER_SLACK_MILLIS / 1000, `${seconds}s`);
    await session.revoke(creds.leaseId);
  });

  test('a long idle transaction is ended by the reaper, whatever the session set', { timeout: 60_000 }, async () => {
    const creds = await session.issue(mount, 'readwrite');
    const c = await connect(creds);
    await c.query('SET idle_in_transaction_session_timeout = 0');
    await c.query('BEGIN');
    await c.query('SELECT count(*) FROM app.items');
    const pid = (await c.query('SELECT pg_backend_pid() AS p')).rows[0].p;
    const t = Date.now();
    await h.waitFor('the reaper to end the idle transaction', async () => (await sessions([pid])) === 0, (IDLE_SECONDS + 10) * 1000);
    const seconds = (Date.now() - t) / 1000;
    console.log(`# figure: an idle transaction (timeout set to 0) ended after ${seconds.toFixed(2)}s (bound ${IDLE_SECONDS}s)`);
    assert.ok(seconds <= IDLE_SECONDS + REAPER_SLACK_MILLIS / 1000, `${seconds}s`);
    await assert.rejects(c.query('SELECT 1'));
    await session.revoke(creds.leaseId);
  });

  test('a connection flood: one user gets its connection limit; many fill the server, and issuance and revocation keep working', { timeout: 180_000 }, async () => {
    try {
      const limit = env.roles.find((r) => r.name === 'readonly')!.connectionLimit;
      const one = await session.issue(mount, 'readonly');
      const states = await Promise.all(Array.from({ length: limit + 20 }, () => connectState(one)));
      const ok = states.filter((s) => s === 'ok').length;
      console.log(`# figure: one user opening ${limit + 20} connections got ${ok} (CONNECTION LIMIT ${limit}); refusals: ${[...new Set(states.filter((s) => s !== 'ok'))].join(', ')}`);
      assert.equal(ok, limit);
      assert.ok(states.filter((s) => s !== 'ok').every((s) => s === '53300'), 'the rest: too many connections for role');

      // Several leaked credentials: together they fill every slot but the reserved ones.
      const flood = [one];
      for (let i = 0; i < 5; i++) flood.push(await session.issue(mount, 'readonly'));
      for (const creds of flood.slice(1)) await Promise.all(Array.from({ length: limit }, () => connectState(creds)));
      const late = await session.issue(mount, 'readonly');
      // A slot can come free after the flood (a backend that another session held while the flood
      // ran, Vault's pool changing): a holder would take it, so the test does too, and the server
      // must then refuse ordinary roles within a few tries.
      const lateStates: string[] = [];
      for (let i = 0; i < 5 && lateStates.at(-1) !== '53300'; i++) lateStates.push(await connectState(late));
      const slots = await admin.query(
        "SELECT CASE WHEN usename LIKE 'v-%' THEN 'dynamic users' ELSE coalesce(usename, backend_type) END AS who, count(*)::int AS n FROM pg_stat_activity GROUP BY 1 ORDER BY 2 DESC",
      );
      console.log(`# figure: the flood holds ${slots.rows.map((r) => `${r.who}=${r.n}`).join(', ')}; a late user's tries: ${lateStates.join(', ')}`);
      assert.equal(lateStates.at(-1), '53300', 'the server is full for ordinary roles');
      // Vault's pooled connections could hide the point: end them, so issuance needs a new one.
      await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [env.secretsEngine.vaultUser]);
      const { value: fresh, seconds: issueSeconds } = await h.timed(() => session.issue(mount, 'readwrite'));
      const { seconds: revokeSeconds } = await h.timed(() => session.revoke(flood[1].leaseId));
      console.log(`# figure: during the flood, issuance took ${issueSeconds.toFixed(2)}s and a revocation ${revokeSeconds.toFixed(2)}s`);
      assert.ok((await role(fresh.username))?.canlogin, 'the new user exists');
      assert.equal(await role(flood[1].username), undefined, 'the revoked user is dropped');
      const vaultSlots = await admin.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1', [env.secretsEngine.vaultUser]);
      assert.ok(vaultSlots.rows[0].n >= 1, 'Vault connected again, into a reserved slot');
      for (const creds of [...flood.slice(0, 1), ...flood.slice(2), late, fresh]) await session.revoke(creds.leaseId);
      for (const c of opened.splice(0)) await c.end().catch(() => undefined);
      const left = await admin.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE backend_type = 'client backend' AND usename LIKE 'v-%'");
      assert.equal(left.rows[0].n, 0, 'every flood session ended with its revocation');
    } finally {
      // A failure must not leave the server full for the tests after this one.
      for (const c of opened.splice(0)) await c.end().catch(() => undefined);
    }
  });

  test('logins racing the revocation do not keep a session', { timeout: 90_000 }, async () => {
    const creds = await session.issue(mount, 'readwrite');
    const pids: number[] = [];
    let stop = false;
    const racer = async () => {
      while (!stop) {
        try {
          const c = await connect(creds);
          pids.push((await c.query('SELECT pg_backend_pid() AS p')).rows[0].p);
        } catch {
          // refused (revoked) or terminated while starting: what the race is about
        }
      }
    };
    const racers = Array.from({ length: 8 }, racer);
    let revokedAt: number;
    try {
      await new Promise((r) => setTimeout(r, 300));
      const { seconds } = await h.timed(() => session.revoke(creds.leaseId));
      revokedAt = Date.now();
      console.log(`# figure: revocation under 8 racing login loops took ${seconds.toFixed(2)}s`);
      await new Promise((r) => setTimeout(r, 300));
    } finally {
      stop = true;
      await Promise.all(racers);
    }
    assert.ok(pids.length > 0, 'some logins landed');
    await h.waitFor('every racing session to end', async () => (await sessions(pids)) === 0, 2000 + 300);
    console.log(`# figure: ${pids.length} racing logins; none alive ${((Date.now() - revokedAt) / 1000).toFixed(2)}s after the revocation returned (bound 2 s)`);
    assert.equal(await role(creds.username), undefined);
    assert.equal(await dependencies(creds.username), 0);
    assert.notEqual(await h.tryLogin(env, creds.username, creds.password), 'ok');
  });

  // Last: it destroys the environment (the after() hook then finds nothing deployed).
  test('destroy with a role the clean-up cannot drop exits 0 and says what it left', { timeout: 6 * 60_000 }, async () => {
    await admin.query(`CREATE DATABASE ${CLOSED_DB}`);
    const creds = await session.issue(mount, 'readonly');
    const c = await connect(creds, CLOSED_DB);
    await c.query("SELECT lo_from_bytea(0, 'out of reach')");
    await session.revoke(creds.leaseId);
    assert.equal((await role(creds.username))?.comment, `${env.database.mark} disarmed read`);
    // Closed now (a database being restored, say): the superuser's clean-up cannot connect there, so the role stays.
    await admin.query(`ALTER DATABASE ${CLOSED_DB} ALLOW_CONNECTIONS false`);
    // A table the write group owns, as a writer could make before PostgreSQL 16 (SET ROLE): the teardown hands it
    // to the retired role with the rest, so it does not stop DROP SCHEMA ... RESTRICT.
    await admin.query(`CREATE TABLE app.hostile_group_owned (x int); ALTER TABLE app.hostile_group_owned OWNER TO ${admin.escapeIdentifier(env.database.groupRoles.write)}`);
    for (const x of opened.splice(0)) await x.end().catch(() => undefined);
    await admin.end();
    adminEnded = true;

    // The CLI a user runs, its output on its own stdout (not the test's cdktf log).
    const { code, out, seconds } = await new Promise<{ code: number | null; out: string; seconds: number }>((resolve, reject) => {
      const t = Date.now();
      const child = spawn(process.execPath, [path.join(REPO_ROOT, 'dist', 'scripts', 'cli.js'), 'destroy', ENV], { cwd: REPO_ROOT, env: { ...process.env, PGVAULT_CDKTF_LOG: '' } });
      let text = '';
      child.stdout.on('data', (d) => (text += d));
      child.stderr.on('data', (d) => (text += d));
      const timer = setTimeout(() => (child.kill('SIGKILL'), reject(new Error(`destroy of ${ENV} hung, killed after 300 s; its output:\n${text}`))), 300_000);
      child.on('close', (code) => (clearTimeout(timer), resolve({ code, out: text, seconds: (Date.now() - t) / 1000 })));
    });
    console.log(`# figure: destroy of ${ENV} with a role left over took ${seconds.toFixed(1)}s`);
    assert.equal(code, 0, out);
    assert.match(out, new RegExp(`LEFT 1 disarmed role\\(s\\) that could not be dropped[^\\n]*${creds.username.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`), out);
    assert.equal(h.docker('ps', '-a', '--filter', `name=pgvault-${ENV}-`, '--format', '{{.Names}}'), '', 'its containers are gone (the leftover with them)');
    assert.equal(h.docker('volume', 'ls', '--filter', `name=pgvault-${ENV}-`, '--format', '{{.Name}}'), '');
  });
});
