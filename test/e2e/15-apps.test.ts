/**
 * Several apps and several databases in one environment (a copy of `local` named `apps`, on its
 * own ports): each app logs in with its own AppRole and issues its own roles; one app's token gets
 * 403 on another app's creds and leases, through plain HTTP (lease in the URL and in the body)
 * and through the `bao` CLI (the Go client); `serve` runs as the app it is given; and a role of
 * each database can connect to its own database only.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { Client } from 'pg';
import { readOutputs } from '@pgvault/runtime';
import { EnvironmentConfig, REPO_ROOT, resolveEnvironment } from '../../stacks/config';
import { issueSecretId, outputsFile } from '../../ops';
import { MissingDatabaseError, up } from '../../ops/postgres/db-bootstrap';
import { liveLeaseCount } from '../../ops/vault/vault-admin';
import * as h from '../harness';

const ENV = 'apps';
const PG_PORT = 15570;
const VAULT_PORT = 18370;
const API_PORT = 18371;
const VAULT = `http://127.0.0.1:${VAULT_PORT}`;
const MOUNT = 'database';
const TEST_MS = 120_000;

interface Answer {
  readonly status: number;
  readonly body: any;
}

/** One Vault call with a given token; never throws on an HTTP status, never prints the token. */
async function vault(token: string, method: string, apiPath: string, body?: unknown): Promise<Answer> {
  const res = await fetch(`${VAULT}/v1/${apiPath}`, {
    method,
    headers: { 'X-Vault-Token': token, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : {} };
}

/** `bao` (the Go API client, the toolchain's OpenBao binary) with a token passed through the environment, not argv. */
function bao(token: string, ...args: string[]) {
  return spawnSync(process.env.VAULT_SERVER_BIN!, args, {
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, BAO_ADDR: VAULT, VAULT_ADDR: VAULT, BAO_TOKEN: token, VAULT_TOKEN: token, HOME: os.tmpdir() },
  });
}

/** An app's token: an AppRole login with its own role_id and a secret_id issued for it. */
async function appToken(app: string): Promise<string> {
  const out = readOutputs(outputsFile(ENV), app);
  const a = await vault('', 'POST', `auth/${out.approle_mount}/login`, { role_id: out.approle_role_id, secret_id: await issueSecretId(ENV, 10_000, app) });
  assert.equal(a.status, 200, `${app} logs in: ${JSON.stringify(a.body.errors ?? [])}`);
  return a.body.auth.client_token;
}

/** Credentials of `role` read with `token`. */
async function creds(token: string, role: string): Promise<{ leaseId: string; user: string; password: string }> {
  const a = await vault(token, 'GET', `${MOUNT}/creds/${role}`);
  assert.equal(a.status, 200, `read ${MOUNT}/creds/${role}: ${JSON.stringify(a.body.errors ?? [])}`);
  return { leaseId: a.body.lease_id, user: a.body.data.username, password: a.body.data.password };
}

/** Logs in to `database` and says 'ok' or the SQLSTATE of the refusal. */
async function connectTo(env: EnvironmentConfig, database: string, user: string, password: string): Promise<string> {
  return h.tryLogin(env, user, password, { clientHost: env.postgres.clientHost, clientPort: env.postgres.clientPort, database });
}

describe('apps: one AppRole per app; databases: each role reaches its own', () => {
  let env: EnvironmentConfig;
  const tokens = new Map<string, string>();

  before(async () => {
    h.requireToolchain();
    h.localCopy(ENV, { postgres: PG_PORT, vault: VAULT_PORT }, (doc) => {
      doc.postgres.databases = ['reports'];
      // The opt-in speed setting, on both databases' Vault roles.
      doc.secretsEngine = { ...doc.secretsEngine, scramIterations: 16 };
      doc.roles.shop_writer = { access: 'write', defaultTtlSeconds: 600, maxTtlSeconds: 3600 };
      doc.roles.reporter = { access: 'read', database: 'reports', defaultTtlSeconds: 600, maxTtlSeconds: 3600 };
      doc.apps = {
        api: { roles: ['readonly', 'readwrite'] },
        shop: { roles: ['readonly', 'readwrite', 'shop_writer'] },
        report: { roles: ['reporter'] },
      };
    });
    env = h.loadEnvironment(ENV);
    await h.destroy(ENV);
    const { seconds } = await h.timed(() => h.deploy(ENV));
    console.log(`# figure: deploy of ${ENV} (3 apps, 2 databases, cold): ${seconds.toFixed(1)}s`);
    for (const app of ['api', 'shop', 'report']) tokens.set(app, await appToken(app));
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  after(async () => {
    await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  test('outputs.json lists every app; the top-level AppRole is the api app\'s; readOutputs takes an app', { timeout: TEST_MS }, () => {
    const raw = JSON.parse(fs.readFileSync(outputsFile(ENV), 'utf8'));
    assert.deepEqual(Object.keys(raw.apps).sort(), ['api', 'report', 'shop']);
    assert.deepEqual(raw.apps.shop.roles, ['readonly', 'readwrite', 'shop_writer']);
    assert.equal(raw.apps.shop.approle_role_name, 'pgvault-app-shop');
    assert.equal(raw.approle_role_id, raw.apps.api.approle_role_id);
    assert.equal(new Set(Object.values(raw.apps).map((a: any) => a.approle_role_id)).size, 3, 'three AppRoles');
    assert.deepEqual(readOutputs(outputsFile(ENV), 'report').roles, ['reporter']);
    assert.throws(() => readOutputs(outputsFile(ENV), 'billing'), /app "billing" \(as given\) is not one of the environment's apps: "api", "report", "shop"/);
  });

  test('each app logs in and issues its own roles, in its role\'s database', { timeout: TEST_MS }, async () => {
    for (const [app, role, db] of [['api', 'readwrite', 'app'], ['shop', 'shop_writer', 'app'], ['report', 'reporter', 'reports']] as const) {
      const c = await creds(tokens.get(app)!, role);
      assert.equal(await connectTo(env, db, c.user, c.password), 'ok', `${app}'s ${role} connects to ${db}`);
    }
    const { cfg, session } = await h.appSession(ENV, 'report');
    try {
      assert.deepEqual(cfg.roles, ['reporter']);
      assert.equal(cfg.roleEndpoints?.reporter?.database, 'reports');
      const c = await session.issue(cfg.mountPath, 'reporter');
      assert.equal(await connectTo(env, 'reports', c.username, c.password), 'ok');
    } finally {
      await session.revokeSelf();
    }
  });

  test('shop\'s AppRole gets 403 on reporter\'s creds and on report\'s leases: HTTP (URL and body forms) and the bao CLI', { timeout: TEST_MS }, async () => {
    const shop = tokens.get('shop')!;
    const report = tokens.get('report')!;
    assert.equal((await vault(shop, 'GET', `${MOUNT}/creds/reporter`)).status, 403, 'shop reads reporter\'s creds');
    const cli = bao(shop, 'read', `${MOUNT}/creds/reporter`);
    assert.notEqual(cli.status, 0, 'bao read of reporter\'s creds with shop\'s token');
    assert.match(cli.stderr, /403|permission denied/i);
    const lease = (await creds(report, 'reporter')).leaseId;
    assert.equal((await vault(shop, 'PUT', `sys/leases/renew/${lease}`, { increment: 60 })).status, 403, 'renew, lease in the URL');
    assert.equal((await vault(shop, 'PUT', 'sys/leases/renew', { lease_id: lease, increment: 60 })).status, 403, 'renew, lease in the body');
    assert.equal((await vault(shop, 'PUT', `sys/leases/revoke/${lease}`)).status, 403, 'revoke, lease in the URL');
    assert.equal((await vault(shop, 'PUT', 'sys/leases/revoke', { lease_id: lease })).status, 403, 'revoke, lease in the body');
    for (const op of ['renew', 'revoke']) {
      const r = bao(shop, 'lease', op, lease);
      assert.notEqual(r.status, 0, `bao lease ${op} of report's lease with shop's token`);
      assert.match(r.stderr, /403|permission denied/i, `bao lease ${op}`);
    }
    // The lease is report's own: its app renews and revokes it with the same client.
    assert.equal(bao(report, 'lease', 'renew', lease).status, 0, 'report renews its own lease (bao lease renew)');
    assert.equal(bao(report, 'lease', 'revoke', lease).status, 0, 'report revokes its own lease (bao lease revoke)');
    assert.equal((await vault(report, 'GET', `${MOUNT}/creds/shop_writer`)).status, 403, 'report reads shop_writer\'s creds');
    assert.equal((await vault(tokens.get('api')!, 'GET', `${MOUNT}/creds/shop_writer`)).status, 403, 'api reads shop_writer\'s creds');
  });

  test('two databases: a role of each connects to its own database and is refused by the other', { timeout: TEST_MS }, async () => {
    const reporter = await creds(tokens.get('report')!, 'reporter');
    const readonly = await creds(tokens.get('api')!, 'readonly');
    assert.equal(await connectTo(env, 'reports', reporter.user, reporter.password), 'ok');
    assert.equal(await connectTo(env, 'app', reporter.user, reporter.password), '42501', 'reporter is refused CONNECT on app');
    assert.equal(await connectTo(env, 'app', readonly.user, readonly.password), 'ok');
    assert.equal(await connectTo(env, 'reports', readonly.user, readonly.password), '42501', 'readonly is refused CONNECT on reports');
    for (const other of ['postgres', 'template1']) {
      assert.equal(await connectTo(env, other, reporter.user, reporter.password), '42501', `reporter is refused CONNECT on ${other}`);
    }
    const admin = await h.adminClient(env);
    try {
      const r = await admin.query(`SELECT pg_catalog.shobj_description(oid, 'pg_database') AS comment FROM pg_catalog.pg_database WHERE datname = 'reports'`);
      assert.equal(r.rows[0]?.comment, env.database.mark, 'the bootstrap created and marked the database');
    } finally {
      await admin.end();
    }
    const c = new Client({ host: env.postgres.clientHost, port: env.postgres.clientPort, database: 'reports', user: reporter.user, password: reporter.password, connectionTimeoutMillis: 5000 });
    await c.connect();
    try {
      assert.equal((await c.query('SELECT count(*)::int AS n FROM app.items')).rows[0].n, 0, 'reporter reads its database\'s app schema');
      await assert.rejects(c.query("INSERT INTO app.items (name) VALUES ('x')"), (e: any) => e.code === '42501', 'a read role writes nothing');
    } finally {
      await c.end();
    }
  });

  test('secretsEngine.scramIterations: the passwords Vault sets in either database are hashed with that count, and log in', { timeout: TEST_MS }, async () => {
    const users = [await creds(tokens.get('report')!, 'reporter'), await creds(tokens.get('api')!, 'readonly')];
    const admin = await h.adminClient(env);
    try {
      for (const u of users) {
        const r = await admin.query('SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1', [u.user]);
        assert.match(String(r.rows[0]?.rolpassword).slice(0, 20), /^SCRAM-SHA-256\$16:/, `${u.user}'s verifier has 16 iterations`);
      }
      const setting = await admin.query(`SELECT r.rolname, s.setconfig FROM pg_catalog.pg_db_role_setting s JOIN pg_catalog.pg_roles r ON r.oid = s.setrole WHERE r.rolname = $1`, [env.secretsEngine.vaultUser]);
      assert.deepEqual(setting.rows[0]?.setconfig, ['scram_iterations=16'], 'set on Vault\'s role');
    } finally {
      await admin.end();
    }
    assert.equal(await connectTo(env, 'reports', users[0].user, users[0].password), 'ok');
    assert.equal(await connectTo(env, 'app', users[1].user, users[1].password), 'ok');
  });

  test('a lease of the second database is revoked through its own connection: its user is dropped', { timeout: TEST_MS }, async () => {
    const report = tokens.get('report')!;
    const c = await creds(report, 'reporter');
    assert.ok((await liveLeaseCount(env)) >= 1, 'live leases under the mount');
    const admin = await h.adminClient(env);
    try {
      const exists = async () => (await admin.query('SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1', [c.user])).rowCount === 1;
      assert.ok(await exists(), 'the user exists');
      assert.equal((await vault(report, 'PUT', 'sys/leases/revoke', { lease_id: c.leaseId })).status, 204, 'report revokes its lease (body form)');
      await h.waitFor(`role ${c.user} dropped`, async () => !(await exists()), 10_000);
    } finally {
      await admin.end();
    }
  });

  test('fails when a database of an existing server is missing: the deploy stops, saying how to create it, and creates nothing', { timeout: TEST_MS }, async () => {
    const existing = resolveEnvironment('apps-existing', '/envs/apps-existing.json', {
      infrastructure: 'existing',
      postgres: { host: '127.0.0.1', port: PG_PORT, sslmode: 'disable', adminPasswordFile: env.postgres.adminPasswordFile, databases: ['nosuchdb'] },
      vault: { address: VAULT },
      roles: { ro: { access: 'read', database: 'nosuchdb', defaultTtlSeconds: 60, maxTtlSeconds: 120 } },
    });
    await assert.rejects(up(existing), (e: any) => {
      assert.ok(e instanceof MissingDatabaseError, String(e));
      assert.equal(e.code, 'BOOTSTRAP_MISSING_DATABASE');
      assert.match(e.message, /database "nosuchdb" \("postgres.databases" in \/envs\/apps-existing.json\) does not exist on 127\.0\.0\.1:15570/);
      assert.match(e.message, /CREATE DATABASE "nosuchdb";/);
      return true;
    });
    const admin = await h.adminClient(env);
    try {
      assert.equal((await admin.query("SELECT 1 FROM pg_catalog.pg_database WHERE datname = 'nosuchdb'")).rowCount, 0, 'no database created');
      assert.equal((await admin.query("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname LIKE 'pgvault_apps_existing%'")).rowCount, 0, 'no role created');
    } finally {
      await admin.end();
    }
  });

  test('a second bootstrap of both databases (a new setupPasswordVersion) keeps the data, and each database\'s roles still work', { timeout: TEST_MS }, async () => {
    const file = path.join(process.env.PGVAULT_ENVIRONMENTS_DIR!, `${ENV}.json`);
    const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
    doc.secretsEngine = { ...doc.secretsEngine, setupPasswordVersion: 2 };
    fs.writeFileSync(file, JSON.stringify(doc, null, 2));
    const admin = await h.adminClient(env);
    try {
      await admin.query("INSERT INTO app.items (name) VALUES ('kept across the bootstrap')");
    } finally {
      await admin.end();
    }
    const { seconds } = await h.timed(() => h.deploy(ENV));
    console.log(`# figure: deploy of ${ENV} that bootstraps both databases again: ${seconds.toFixed(1)}s`);
    env = h.loadEnvironment(ENV);
    for (const app of ['api', 'report']) tokens.set(app, await appToken(app));
    const reporter = await creds(tokens.get('report')!, 'reporter');
    const readonly = await creds(tokens.get('api')!, 'readonly');
    assert.equal(await connectTo(env, 'reports', reporter.user, reporter.password), 'ok');
    assert.equal(await connectTo(env, 'app', reporter.user, reporter.password), '42501');
    const c = new Client({ host: env.postgres.clientHost, port: env.postgres.clientPort, database: 'app', user: readonly.user, password: readonly.password, connectionTimeoutMillis: 5000 });
    await c.connect();
    try {
      assert.equal((await c.query("SELECT count(*)::int AS n FROM app.items WHERE name = 'kept across the bootstrap'")).rows[0].n, 1);
    } finally {
      await c.end();
    }
  });

  test('serve runs as the app it is given: shop\'s secret_id, shop\'s roles; an unknown app or one without the API\'s roles stops it with the reason', { timeout: TEST_MS }, async () => {
    const serve = path.join(REPO_ROOT, 'dist', 'api', 'serve.js');
    const fail = (args: string[], extra: NodeJS.ProcessEnv) => spawnSync(process.execPath, [serve, ENV, ...args], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...extra, PORT: String(API_PORT) } });
    const unknown = fail([], { PGVAULT_APP: 'billing' });
    assert.equal(unknown.status, 1);
    assert.match(unknown.stdout + unknown.stderr, /app \\?"billing\\?" \(PGVAULT_APP\) is not one of the environment's apps/);
    const report = fail(['report'], {});
    assert.equal(report.status, 1);
    assert.match(report.stdout + report.stderr, /the API reads through \\?"readonly\\?" and writes through \\?"readwrite\\?"/);

    const log = path.join(os.tmpdir(), `pgvault-${ENV}-serve.log`);
    const out = fs.openSync(log, 'w');
    const child = spawn(process.execPath, [serve, ENV], { env: { ...process.env, PGVAULT_APP: 'shop', PORT: String(API_PORT), LOG_LEVEL: 'info' }, stdio: ['ignore', out, out] });
    try {
      await h.waitFor('the API serving as shop', async () => (await fetch(`http://127.0.0.1:${API_PORT}/readyz`, { signal: AbortSignal.timeout(2000) }).catch(() => undefined))?.status === 200, 60_000);
      const ready = (await (await fetch(`http://127.0.0.1:${API_PORT}/readyz`, { signal: AbortSignal.timeout(5000) })).json()) as any;
      assert.deepEqual(Object.keys(ready.roles).sort(), ['readonly', 'readwrite', 'shop_writer'], 'the runtime issues shop\'s roles');
      const post = await fetch(`http://127.0.0.1:${API_PORT}/items`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ name: 'from shop' }), signal: AbortSignal.timeout(5000) });
      assert.equal(post.status, 201);
      // Only shop's AppRole may read shop_writer: a live lease of it means the server logged in as shop.
      const leases = await h.vaultAdmin(env, 'LIST', `sys/leases/lookup/${MOUNT}/creds/shop_writer/`);
      assert.ok(leases.data.keys.length >= 1, 'a shop_writer lease of the server');
      assert.match(fs.readFileSync(log, 'utf8'), /"app":"shop"/);
    } finally {
      child.kill('SIGTERM');
      await h.waitFor('serve to stop', async () => child.exitCode !== null, 30_000).catch(() => child.kill('SIGKILL'));
      fs.closeSync(out);
    }
  });

  test('destroy: the hook revokes every live lease of both databases before the AppRole mount goes, and the teardown covers both', { timeout: h.DEPLOY_HOOK_TIMEOUT_MS }, async () => {
    await creds(tokens.get('report')!, 'reporter');
    const live = await liveLeaseCount(env);
    assert.ok(live >= 2, `live leases before the destroy: ${live}`);
    const mark = h.cdktfLogSize();
    await h.destroy(ENV);
    const log = h.cdktfLogSince(mark);
    // Disabling the AppRole mount first would revoke the apps' tokens and their leases, leaving the hook nothing.
    assert.match(log, new RegExp(`leases: ${ENV}: revoked ${live} live lease\\(s\\)`), `the hook revoked all ${live} leases (log: ${process.env.PGVAULT_CDKTF_LOG})`);
    for (const db of ['reports', 'app']) assert.match(log, new RegExp(`bootstrap: ${ENV}: removed the roles and schema app \\(with its data\\) it had created in database ${db}`));
  });
});
