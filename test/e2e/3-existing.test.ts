/**
 * End to end on the existing-infrastructure environment: no containers. The test
 * starts a real Postgres (the host's PostgreSQL 15 binaries) and a real Vault-compatible
 * server (OpenBao, dev mode with TLS) as plain host processes, points a copy of
 * environments/existing-example.json at them, deploys, verifies, and destroys.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Client } from 'pg';
import { EnvironmentConfig, localDir } from '../../stacks/config';
import { verifyRole } from '../../demo/verify';
import { connectWith } from '../../demo/verify';
import * as h from '../harness';

const ENV = 'existing-example';
const PG_PORT = 25432;
const VAULT_PORT = 28200;
const EXTRA_ENVS = ['existing-b', 'existing-c', 'existing-d', 'existing-tls', 'existing-clear'];

/**
 * The host's PostgreSQL from Debian's packages, whatever its major: 15 on bookworm (the
 * "older server" case, CREATEROLE before 16, which the deploy warns about), 17 on trixie.
 */
const hostPg = h.hostPostgres();

/** One more environment file beside the scratch one, built from existing-example's settings. */
function addEnvironment(name: string, base: any, edit: (doc: any) => void): void {
  const doc = JSON.parse(JSON.stringify(base));
  edit(doc);
  fs.writeFileSync(path.join(process.env.PGVAULT_ENVIRONMENTS_DIR!, `${name}.json`), JSON.stringify(doc, null, 2));
}

describe('existing-infrastructure environment, end to end', () => {
  let work: string;
  let env: EnvironmentConfig;
  let postgres: h.HostProcess | undefined;
  let vault: h.HostProcess | undefined;
  let destroyed = false;
  let base: any;
  let superuser: Client;
  let secrets: string;

  before(async () => {
    h.requireToolchain();
    const bin = hostPg.bin;
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-existing-'));
    fs.chmodSync(work, 0o755);
    secrets = path.join(work, 'secrets');
    fs.mkdirSync(secrets, { mode: 0o700 });
    const pgPassword = crypto.randomBytes(18).toString('base64url');
    const rootToken = crypto.randomBytes(16).toString('hex');
    fs.writeFileSync(path.join(secrets, 'postgres-admin-password'), pgPassword, { mode: 0o600 });
    fs.writeFileSync(path.join(secrets, 'vault-token'), rootToken, { mode: 0o600 });

    // Postgres as a plain process, owned by the postgres user when running as root.
    const pg = await h.startHostPostgres({ bin, work, port: PG_PORT, password: pgPassword });
    postgres = pg.server;
    superuser = pg.superuser;
    const data = pg.dataDir;
    for (const db of ['app', 'app_b', 'app_c']) await superuser.query(`CREATE DATABASE ${db}`);
    // A superuser that the server asks for a cleartext password (what an impostor would do).
    const hba = path.join(data, 'pg_hba.conf');
    fs.writeFileSync(hba, `host all cleartext_admin 127.0.0.1/32 password\n${fs.readFileSync(hba, 'utf8')}`);
    await superuser.query(`CREATE ROLE cleartext_admin LOGIN SUPERUSER PASSWORD '${pgPassword}'`);
    await superuser.query('SELECT pg_reload_conf()');

    // A Vault-compatible server in dev mode, with TLS and its own CA.
    const tls = path.join(work, 'vault-tls');
    fs.mkdirSync(tls);
    // Its log holds the root token: it goes in the 0700 secrets directory.
    vault = h.startProcess(process.env.VAULT_SERVER_BIN!, ['server', '-dev', '-dev-tls', `-dev-tls-cert-dir=${tls}`, `-dev-listen-address=127.0.0.1:${VAULT_PORT}`], {
      env: { BAO_DEV_ROOT_TOKEN_ID: rootToken, VAULT_DEV_ROOT_TOKEN_ID: rootToken, HOME: work },
      logFile: path.join(secrets, 'vault.log'),
    });
    await h.waitFor('Vault to write its CA', async () => fs.existsSync(path.join(tls, 'vault-ca.pem')));

    h.scratchEnvironment(ENV, (doc) => {
      doc.postgres = { ...doc.postgres, host: '127.0.0.1', port: PG_PORT, sslmode: 'disable', adminPasswordFile: path.join(secrets, 'postgres-admin-password') };
      doc.vault = { ...doc.vault, address: `https://127.0.0.1:${VAULT_PORT}`, caCertFile: path.join(tls, 'vault-ca.pem'), tokenFile: path.join(secrets, 'vault-token') };
      base = JSON.parse(JSON.stringify(doc));
    });
    // The servers live as long as this run: state that an earlier, interrupted run left for its
    // extra environments describes servers that are gone.
    for (const other of EXTRA_ENVS) fs.rmSync(localDir(other), { recursive: true, force: true });
    // A second team's environment on the same servers: its own database, mount and AppRole.
    addEnvironment('existing-b', base, (doc) => {
      doc.postgres.database = 'app_b';
      doc.secretsEngine = { mountPath: 'database-b' };
      doc.appAccess = { approleMount: 'approle-b', roleName: 'pgvault-app-b' };
      doc.postgres.restrictPublicConnect = true;
    });
    env = h.loadEnvironment(ENV);
    await h.waitFor('Vault to answer over TLS', async () => Boolean(await h.vaultAdmin(env, 'GET', 'sys/health')));
    await h.destroy(ENV);
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  after(async () => {
    for (const other of EXTRA_ENVS) {
      if (env) await h.destroy(other).catch((e) => console.error(`cleanup destroy of ${other} failed: ${e.message}`));
    }
    if (!destroyed && env) await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
    await superuser?.end().catch(() => undefined);
    await vault?.stop();
    await postgres?.stop();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  test(`deploys only the Vault configuration, over TLS with the CA from the environment, and ${hostPg.major < 16 ? `warns about PostgreSQL ${hostPg.major}` : `gives no pre-16 warning for PostgreSQL ${hostPg.major}`}`, async () => {
    const mark = h.cdktfLogSize();
    const { value: outputs, seconds } = await h.timed(() => h.deploy(ENV));
    const log = h.cdktfLogSince(mark);
    if (hostPg.major < 16) {
      // The warning itself, for every version, is unit-tested (test/unit/tested-path.test.ts).
      assert.match(log, new RegExp(`WARNING: PostgreSQL ${hostPg.major}\\.\\d+ at 127\\.0\\.0\\.1:25432: before PostgreSQL 16 a CREATEROLE role`), 'the version warning names the version');
      assert.match(log, /superuser-equivalent/, 'and the risk');
      assert.match(log, /upgrade the server to PostgreSQL 16 or later/, 'and the fix');
    } else {
      assert.doesNotMatch(log, /before PostgreSQL 16 a CREATEROLE role/, `no warning for PostgreSQL ${hostPg.major}`);
    }
    // What bounds a lost credential here but is the operator's to switch on: both said at the deploy.
    assert.match(log, /WARNING: PUBLIC may connect to database\(s\) [^\n]*\bapp_b\b[^\n]*set "postgres\.restrictPublicConnect": true/, 'the databases open to PUBLIC, and the fix');
    const reaper = path.join(localDir(ENV), 'reaper.sql');
    assert.match(log, new RegExp(`schedule ${reaper.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`), 'the reaper job is named');
    assert.match(fs.readFileSync(reaper, 'utf8'), /pg_terminate_backend[\s\S]*pgvault:existing-example disarmed/);
    assert.equal(fs.statSync(reaper).mode & 0o777, 0o600);
    console.log(`# figure: deploy of ${ENV} (existing servers): ${seconds.toFixed(1)}s`);
    assert.equal(outputs.vault_address, `https://127.0.0.1:${VAULT_PORT}`);
    assert.equal(outputs.postgres_port, PG_PORT);
    assert.equal(outputs.network_name, undefined, 'no containers');
    const mounts = await h.vaultAdmin(env, 'GET', 'sys/mounts');
    assert.equal(mounts.data['database/'].type, 'database');
  });

  test('the app gets working credentials for both roles, with the right grants', async () => {
    const { cfg, session } = await h.appSession(ENV);
    try {
      for (const role of env.roles) {
        const report = await verifyRole(session, cfg, role.name, role.access);
        const failed = report.checks.filter((c) => !c.ok);
        assert.deepEqual(failed, [], `${role.name}: ${JSON.stringify(failed)}`);
        assert.equal(report.leaseDurationSeconds, role.defaultTtlSeconds);
      }
    } finally {
      await session.revokeSelf();
    }
  });

  test('two environments share the servers: both work, and destroying one leaves the other and its data untouched', async () => {
    const publicConnect = async () =>
      (await superuser.query(
        `SELECT datname FROM pg_database WHERE datallowconn AND datname <> 'app_b'
            AND (datacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(datacl) a WHERE a.grantee = 0 AND a.privilege_type = 'CONNECT')) ORDER BY 1`,
      )).rows.map((r) => r.datname);
    const openBefore = await publicConnect();
    assert.ok(openBefore.includes('app_c'), `PUBLIC may connect to app_c before: ${openBefore}`);
    const mark = h.cdktfLogSize();
    await h.deploy('existing-b');
    // existing-b sets restrictPublicConnect: its bootstrap takes CONNECT from PUBLIC everywhere else, and warns no more.
    const openAfter = await publicConnect();
    // Given back for the tests after this one (the revoke is the opt-in's point, not theirs).
    for (const db of openBefore) await superuser.query(`GRANT CONNECT ON DATABASE ${superuser.escapeIdentifier(db)} TO PUBLIC`);
    assert.deepEqual(openAfter, [], 'no other database is open to PUBLIC');
    assert.doesNotMatch(h.cdktfLogSince(mark), /WARNING: PUBLIC may connect/);
    const b = h.loadEnvironment('existing-b');
    const { cfg, session } = await h.appSession('existing-b');
    const bAdmin = await h.adminClient(b);
    try {
      for (const role of b.roles) {
        const report = await verifyRole(session, cfg, role.name, role.access);
        assert.deepEqual(report.checks.filter((c) => !c.ok), [], `existing-b ${role.name}`);
      }
      await bAdmin.query("INSERT INTO app.items (name) VALUES ('team-b-row')");
      const held = await session.issue(cfg.mountPath, 'readonly');
      await h.destroy(ENV);
      destroyed = true;
      assert.equal(fs.existsSync(path.join(localDir(ENV), 'reaper.sql')), false, 'the teardown removes the reaper job file');
      assert.equal(await h.tryLogin(b, held.username, held.password), 'ok', "existing-b's live user is untouched");
      assert.equal((await bAdmin.query("SELECT count(*)::int AS n FROM app.items WHERE name = 'team-b-row'")).rows[0].n, 1, "existing-b's data is untouched");
      const report = await verifyRole(session, cfg, 'readwrite', 'write');
      assert.deepEqual(report.checks.filter((c) => !c.ok), [], 'existing-b still issues working credentials');
      await session.revoke(held.leaseId);
    } finally {
      await bAdmin.end();
      await session.revokeSelf();
    }
  });

  test('destroy under live leases keeps the data by default and leaves nothing else of ours in Vault or Postgres', async () => {
    await h.deploy(ENV);
    destroyed = false;
    const { cfg, session } = await h.appSession(ENV);
    const admin = await h.adminClient(env);
    try {
      await admin.query("INSERT INTO app.items (name) VALUES ('keep-me')");
      await h.vaultAdmin(env, 'GET', `${cfg.mountPath}/creds/readonly`);
      const owner = await session.issue(cfg.mountPath, 'readwrite');
      const c = await connectWith(cfg, owner);
      c.on('error', () => undefined);
      await c.query('CREATE TABLE app.owned_at_destroy (id int)');
      const mark = h.cdktfLogSize();
      await h.destroy(ENV);
      destroyed = true;
      assert.match(h.cdktfLogSince(mark), /KEPT schema app \(app\.items: \d+ rows\)/, 'the destroy says what it kept');
      assert.equal(await h.vaultAdmin(env, 'GET', 'sys/mounts').then((m) => m.data['database/']), undefined, 'no mount');
      assert.equal(await h.vaultAdmin(env, 'GET', 'sys/auth').then((m) => m.data['approle/']), undefined, 'no AppRole');
      await assert.rejects(h.vaultAdmin(env, 'GET', 'sys/policies/acl/pgvault-app'), /404/, 'no policy');
      assert.deepEqual(await h.dynamicRoles(admin, env).catch(() => []), []);
      const left = await admin.query('SELECT rolname FROM pg_roles WHERE rolname = ANY($1) ORDER BY 1', [[
        env.secretsEngine.vaultUser, env.database.groupRoles.read, env.database.groupRoles.write, env.database.ownerRole, env.database.retiredRole,
      ]]);
      assert.deepEqual(left.rows.map((r) => r.rolname), [env.database.ownerRole, env.database.retiredRole].sort(), 'only the NOLOGIN owners of the kept data remain');
      assert.deepEqual(await h.vaultNamedRoles(admin).then((r) => r.filter((n) => n === owner.username)), [], 'the user that owned a table is gone');
      assert.equal((await admin.query("SELECT count(*)::int AS n FROM app.items WHERE name = 'keep-me'")).rows[0].n, 1, 'the data is kept');
    } finally {
      await admin.end();
    }
  });

  test('a redeploy takes the kept data up again; with dropDataOnDestroy the destroy removes it all', async () => {
    await h.deploy(ENV);
    destroyed = false;
    const { cfg, session } = await h.appSession(ENV);
    try {
      const creds = await session.issue(cfg.mountPath, 'readonly');
      const c = await connectWith(cfg, creds);
      assert.equal((await c.query("SELECT count(*)::int AS n FROM app.items WHERE name = 'keep-me'")).rows[0].n, 1);
      await c.end();
    } finally {
      await session.revokeSelf();
    }
    const file = path.join(process.env.PGVAULT_ENVIRONMENTS_DIR!, `${ENV}.json`);
    const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
    doc.postgres.dropDataOnDestroy = true;
    fs.writeFileSync(file, JSON.stringify(doc, null, 2));
    await h.destroy(ENV);
    destroyed = true;
    const admin = await h.adminClient(h.loadEnvironment(ENV));
    try {
      const roles = await admin.query('SELECT rolname FROM pg_roles WHERE rolname LIKE $1', [`pgvault_existing_example_%`]);
      assert.deepEqual(roles.rows, []);
      assert.equal((await admin.query("SELECT 1 FROM pg_namespace WHERE nspname = 'app'")).rowCount, 0);
    } finally {
      await admin.end();
    }
    assert.ok(fs.existsSync(env.vault.tokenFile), "the operator's token file is left alone");
  });

  test('fails when objects it did not create are in the way, and changes nothing of theirs, at deploy or destroy', async () => {
    const c = new Client({ host: '127.0.0.1', port: PG_PORT, user: 'postgres', password: readAdminPassword(), database: 'app_c' });
    await c.connect();
    try {
      await c.query('CREATE SCHEMA app');
      await c.query('CREATE TABLE app.theirs (id int)');
      await c.query("INSERT INTO app.theirs VALUES (1), (2)");
      await c.query("CREATE ROLE their_role LOGIN PASSWORD 'theirs-pw'");
      const acl = async () => (await c.query("SELECT nspacl::text AS a, pg_get_userbyid(nspowner) AS o, obj_description(oid, 'pg_namespace') AS d FROM pg_namespace WHERE nspname = 'app'")).rows[0];
      const before = await acl();

      addEnvironment('existing-c', base, (doc) => {
        doc.postgres.database = 'app_c';
        doc.secretsEngine = { mountPath: 'database-c' };
        doc.appAccess = { approleMount: 'approle-c', roleName: 'pgvault-app-c' };
      });
      await assert.rejects(h.deploy('existing-c'), /schema "app" already exists in database "app_c" and was not created by environment existing-c.*"postgres\.database"/s);
      addEnvironment('existing-d', base, (doc) => {
        doc.postgres.database = 'app_b';
        doc.secretsEngine = { mountPath: 'database-d', vaultUser: 'their_role' };
        doc.appAccess = { approleMount: 'approle-d', roleName: 'pgvault-app-d' };
      });
      await assert.rejects(h.deploy('existing-d'), /role "their_role" already exists .* not created by environment existing-d.*"secretsEngine\.vaultUser"/s);
      await h.destroy('existing-c');
      await h.destroy('existing-d');

      assert.deepEqual(await acl(), before, 'their schema: same owner, same privileges, no comment');
      assert.equal((await c.query('SELECT count(*)::int AS n FROM app.theirs')).rows[0].n, 2, 'their table and rows');
      const role = await c.query("SELECT rolcreaterole, shobj_description(oid, 'pg_authid') AS d FROM pg_roles WHERE rolname = 'their_role'");
      assert.deepEqual(role.rows, [{ rolcreaterole: false, d: null }], 'their role: unchanged');
      const login = new Client({ host: '127.0.0.1', port: PG_PORT, user: 'their_role', password: 'theirs-pw', database: 'app_c' });
      await login.connect();
      await login.end();
      assert.deepEqual((await c.query("SELECT rolname FROM pg_roles WHERE rolname LIKE 'pgvault_existing_c%' OR rolname LIKE 'pgvault_existing_d%'")).rows, [], 'nothing was half-created');
    } finally {
      await c.end();
    }
  });

  test('refuses to send the superuser password in clear text', async () => {
    addEnvironment('existing-clear', base, (doc) => {
      doc.postgres.adminUser = 'cleartext_admin';
      doc.secretsEngine = { mountPath: 'database-clear' };
      doc.appAccess = { approleMount: 'approle-clear', roleName: 'pgvault-app-clear' };
    });
    await assert.rejects(h.deploy('existing-clear'), /asked for the superuser's password in clear text; refused/);
    // The teardown refuses it too; the operator's fix is a superuser the server authenticates with SCRAM.
    await assert.rejects(h.destroy('existing-clear'), /asked for the superuser's password in clear text; refused/);
    addEnvironment('existing-clear', base, (doc) => {
      doc.secretsEngine = { mountPath: 'database-clear' };
      doc.appAccess = { approleMount: 'approle-clear', roleName: 'pgvault-app-clear' };
    });
    await h.destroy('existing-clear');
  });

  test('VAULT_SKIP_VERIFY in the shell does not switch off TLS checks: a wrong CA fails the deploy', async () => {
    const wrong = path.join(secrets, 'wrong-ca');
    fs.mkdirSync(wrong);
    const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', path.join(wrong, 'key.pem'), '-out', path.join(wrong, 'ca.pem'), '-days', '1', '-subj', '/CN=not-the-vault-ca'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const tlsEnv = (doc: any) => {
      doc.secretsEngine = { mountPath: 'database-tls' };
      doc.appAccess = { approleMount: 'approle-tls', roleName: 'pgvault-app-tls' };
    };
    addEnvironment('existing-tls', base, (doc) => {
      tlsEnv(doc);
      doc.vault.caCertFile = path.join(wrong, 'ca.pem');
    });
    h.prepareLocalSecrets(h.loadEnvironment('existing-tls'));
    process.env.VAULT_SKIP_VERIFY = '1';
    try {
      const mark = h.cdktfLogSize();
      await assert.rejects(h.deploy('existing-tls'), /x509|certificate/i, 'npm run deploy: fails on TLS');
      assert.match(h.cdktfLogSince(mark), /x509|certificate/i);
      const direct = h.cdktfLogSize();
      assert.notEqual(h.directCdktf('existing-tls', 'deploy existing-tls-secrets'), 0, 'a plain cdktf deploy fails too');
      assert.match(h.cdktfLogSince(direct), /VAULT_SKIP_VERIFY is "1" in this shell; expected it unset/, 'before reaching Vault, saying why');
    } finally {
      delete process.env.VAULT_SKIP_VERIFY;
    }
    const mounts = await h.vaultAdmin(env, 'GET', 'sys/mounts');
    assert.equal(mounts.data['database-tls/'], undefined, 'nothing was configured in Vault');
    addEnvironment('existing-tls', base, tlsEnv);
    await h.destroy('existing-tls');
  });

  function readAdminPassword(): string {
    return fs.readFileSync(path.join(secrets, 'postgres-admin-password'), 'utf8').trim();
  }
});
