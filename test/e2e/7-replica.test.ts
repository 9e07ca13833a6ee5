/**
 * End to end on the `ha` environment's Postgres: a primary and its streaming replica, TLS only,
 * readonly users on the replica and readwrite users on the primary. Deployed once for all the
 * tests: where connections land (and with which TLS checks), replication lag in the app, a
 * revocation reaching the replica, the replica stopped under the REST API (a real process),
 * and a destroy that leaves nothing.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync, ChildProcess } from 'node:child_process';
import * as http from 'node:http';
import { Client } from 'pg';
import { EnvironmentConfig, localDir, REPO_ROOT } from '../../stacks/config';
import { issueSecretId, outputsFile } from '../../ops';
import { appConfigFromOutputs, AppConfig, CredentialRuntime, pgSsl, readOutputs, RuntimeMetrics, VaultSession } from '@pgvault/runtime';
import * as h from '../harness';

const ENV = 'ha';
const API_PORT = 18241;
const BASE = `http://127.0.0.1:${API_PORT}`;
const SERVE = path.join(__dirname, '..', '..', 'api', 'serve.js');
const PRIMARY = 'pgvault-ha-postgres';
const REPLICA = 'pgvault-ha-postgres-replica';
/** The bound the README states for a revoked user's sessions on the replica. */
const REVOCATION_BOUND_SECONDS = 2;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('ha: readonly on a streaming replica, readwrite on the primary, TLS everywhere', () => {
  let env: EnvironmentConfig;
  let cfg: AppConfig;
  let ca: string;
  let rt: CredentialRuntime | undefined;
  let server: ChildProcess | undefined;
  let serverLog = '';
  let destroyed = false;

  const replicaAt = () => env.postgres.replica!;
  /** The superuser on the replica (read-only there), over TLS verified with the environment's CA. */
  const replicaAdmin = async (): Promise<Client> => {
    const c = new Client({
      host: replicaAt().clientHost,
      port: replicaAt().clientPort,
      database: env.postgres.database,
      user: env.postgres.adminUser,
      password: fs.readFileSync(env.postgres.adminPasswordFile, 'utf8').trim(),
      ssl: pgSsl('verify-full', { ca }),
    });
    await c.connect();
    return c;
  };
  const freshConfig = async () => appConfigFromOutputs(readOutputs(outputsFile(ENV)), { secretId: await issueSecretId(ENV) });
  const session = async (): Promise<VaultSession> => {
    const s = new VaultSession({ address: cfg.vaultAddress, addresses: cfg.vaultAddresses, caCert: cfg.vaultCaCert });
    await s.login(cfg.approleMount, cfg.roleId, await issueSecretId(ENV));
    return s;
  };
  const replay = async (what: 'pause' | 'resume') => {
    const c = await replicaAdmin();
    try {
      await c.query(`SELECT pg_wal_replay_${what}()`);
    } finally {
      await c.end();
    }
  };

  before(async () => {
    h.requireToolchain();
    delete process.env.PGVAULT_ENVIRONMENTS_DIR;
    env = h.loadEnvironment(ENV);
    // Shared with 6-ha, which leaves it up under test/run.ts: deployed here only when it is not up.
    const first = await h.upShared(ENV);
    console.log(`# figure: ${first.cold ? 'cold' : 'warm'} deploy of ${ENV} with its replica: ${first.seconds.toFixed(1)}s`);
    cfg = await freshConfig();
    ca = fs.readFileSync(env.postgres.caCertFile!, 'utf8');
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  after(async () => {
    await rt?.close({ timeoutMillis: 5000 }).catch(() => undefined);
    if (server && server.exitCode === null) server.kill('SIGTERM');
    if (env) {
      await replay('resume').catch(() => undefined);
      if (!destroyed) await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
    }
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  test('readonly lands on the replica and readwrite on the primary, both over verified TLS; Vault connects with TLS too', async () => {
    const outputs = readOutputs(outputsFile(ENV)) as any;
    assert.deepEqual(outputs.role_endpoints, {
      readonly: { host: '127.0.0.1', port: 15471, target: 'replica' },
      readwrite: { host: '127.0.0.1', port: 15470, target: 'primary' },
      reporter: { host: '127.0.0.1', port: 15471, target: 'replica' },
    });
    assert.equal(outputs.postgres_sslmode, 'verify-full');
    rt = await CredentialRuntime.start(cfg);
    const where = 'SELECT pg_is_in_recovery() AS replica, s.ssl, s.version FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()';
    const ro = (await rt.pool('readonly').query(where)).rows[0];
    const rw = (await rt.pool('readwrite').query(where)).rows[0];
    assert.deepEqual([ro.replica, ro.ssl], [true, true], 'readonly: on the replica, over TLS');
    assert.deepEqual([rw.replica, rw.ssl], [false, true], 'readwrite: on the primary, over TLS');
    console.log(`# figure: readonly session: in recovery ${ro.replica}, ${ro.version}; readwrite session: in recovery ${rw.replica}, ${rw.version}`);

    // The replica's certificate under another server's name: verify-full refuses it, verify-ca
    // (the chain, not the name) accepts it, and without the CA even verify-ca refuses it.
    const connect = async (ssl: any, port = replicaAt().clientPort) => {
      const c = new Client({ host: replicaAt().clientHost, port, database: env.postgres.database, user: env.postgres.adminUser, password: fs.readFileSync(env.postgres.adminPasswordFile, 'utf8').trim(), ssl, connectionTimeoutMillis: 5000 });
      await c.connect();
      const r = await c.query('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()');
      await c.end();
      return r.rows[0].ssl;
    };
    await assert.rejects(connect({ ...(pgSsl('verify-full', { ca }) as object), servername: PRIMARY }), /does not match|altnames/i, 'verify-full with the wrong host name fails');
    assert.equal(await connect({ ...(pgSsl('verify-ca', { ca }) as object), servername: PRIMARY }), true, 'verify-ca with the wrong host name succeeds');
    await assert.rejects(connect(pgSsl('verify-ca')), /self-signed|unable to verify|certificate/i, 'verify-ca without the CA fails');
    // TLS only: a plain connection is refused by pg_hba.conf, on both servers.
    await assert.rejects(connect(false), /no encryption|pg_hba/);
    await assert.rejects(connect(false, env.postgres.clientPort), /no encryption|pg_hba/);

    // Vault's own sessions: every one that Postgres logged on the primary used TLS.
    const s = await session();
    const creds = await s.issue(cfg.mountPath, 'readwrite');
    await s.revoke(creds.leaseId);
    await s.revokeSelf();
    const vaultLines = containerLog(PRIMARY).split('\n').filter((l) => l.includes(`connection authorized: user=${env.secretsEngine.vaultUser} `));
    assert.ok(vaultLines.length >= 2, `Vault's sessions are logged (${vaultLines.length})`);
    assert.deepEqual(vaultLines.filter((l) => !/SSL enabled \(protocol=TLSv1\.[23]/.test(l)), [], 'every Vault session used TLS');
    console.log(`# figure: Vault sessions on the primary logged: ${vaultLines.length}, all with TLS`);
    const replication = await h.adminClient(env);
    try {
      const r = await replication.query('SELECT r.state, s.ssl, r.application_name FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)');
      assert.deepEqual(r.rows.map((x) => [x.state, x.ssl]), [['streaming', true]], 'the replica streams over TLS');
      const slot = await replication.query('SELECT slot_name, active FROM pg_replication_slots');
      assert.deepEqual(slot.rows, [{ slot_name: 'pgvault_ha_replica', active: true }]);
    } finally {
      await replication.end();
    }
  });

  test('reporter, a role shaped by grants (app.* SELECT), reads from the replica and can do nothing else', { timeout: 120_000 }, async () => {
    const s = await session();
    const creds = await s.issue(cfg.mountPath, 'reporter');
    try {
      // The replica may not have replayed the new user yet: a new client per attempt.
      let c!: Client;
      await h.waitFor('the reporter user on the replica', async () => {
        const attempt = new Client({ host: replicaAt().clientHost, port: replicaAt().clientPort, database: env.postgres.database, user: creds.username, password: creds.password, ssl: pgSsl('verify-full', { ca }), connectionTimeoutMillis: 5000 });
        attempt.on('error', () => undefined);
        await attempt.connect().catch(async (e) => {
          await attempt.end().catch(() => undefined);
          throw e;
        });
        c = attempt;
        return true;
      }, 15_000);
      try {
        const r = (await c.query('SELECT pg_is_in_recovery() AS replica, (SELECT count(*)::int FROM app.items) AS n')).rows[0];
        assert.equal(r.replica, true, 'on the replica');
        assert.ok(r.n >= 0);
        await assert.rejects(c.query("SELECT 1 WHERE 'x' = 'x'; DELETE FROM app.items"), (e: any) => ['42501', '25006'].includes(e.code), 'an injected DELETE is refused');
        await assert.rejects(c.query('SELECT pg_catalog.pg_read_file(\'postgresql.conf\')'), (e: any) => e.code === '42501');
      } finally {
        await c.end();
      }
      const primaryAdmin = await h.adminClient(env);
      try {
        const held = await primaryAdmin.query(`SELECT DISTINCT a.privilege_type AS p FROM pg_class c, aclexplode(c.relacl) a WHERE a.grantee = $1::regrole ORDER BY 1`, [env.roles.find((r) => r.name === 'reporter')!.groupRole]);
        assert.deepEqual(held.rows.map((x) => x.p), ['SELECT'], 'its group role holds SELECT only');
      } finally {
        await primaryAdmin.end();
      }
    } finally {
      await s.revoke(creds.leaseId).catch(() => undefined);
      await s.revokeSelf().catch(() => undefined);
    }
  });

  test('the replication password is in no state, cdk.tf.json or container environment; the primary has only its verifier', () => {
    const password = fs.readFileSync(path.join(localDir(ENV), 'postgres', 'replica', 'pgpass'), 'utf8').trim().split(':').pop()!;
    const verifier = fs.readFileSync(path.join(localDir(ENV), 'postgres', 'primary', 'replication.scram'), 'utf8').trim();
    assert.ok(password.length >= 24 && verifier.startsWith('SCRAM-SHA-256$'));
    for (const dir of ['replica', 'primary']) {
      const d = path.join(localDir(ENV), 'postgres', dir);
      assert.equal(fs.statSync(d).mode & 0o777, 0o700);
      for (const f of fs.readdirSync(d)) assert.equal(fs.statSync(path.join(d, f)).mode & 0o777, 0o600, `${dir}/${f} is 0600`);
    }
    const texts = [
      ...fs.readdirSync(path.join(localDir(ENV), 'state')).filter((n) => n.endsWith('.tfstate')).map((n) => path.join(localDir(ENV), 'state', n)),
      ...['ha-infra', 'ha-secrets'].map((id) => path.join(REPO_ROOT, 'cdktf.out', 'stacks', id, 'cdk.tf.json')),
    ].map((p) => [p, fs.readFileSync(p, 'utf8')] as const);
    const inspect = h.docker('inspect', PRIMARY, REPLICA);
    for (const [p, text] of [...texts, ['docker inspect', inspect] as const]) {
      assert.equal(text.includes(password), false, `the replication password is in ${p}`);
      assert.equal(text.includes(verifier), false, `the replication verifier is in ${p}`);
    }
  });

  test('replication lag during a rotation: the old credentials serve until the replica has replayed the new user, then the new ones take over', async () => {
    assert.ok(rt);
    const metrics = new RuntimeMetrics(rt);
    const lease = rt.lease('readonly');
    const pool = rt.pool('readonly');
    const previous = pool.currentUser;
    let issued = 0;
    lease.on('issued', () => issued++);
    await replay('pause');
    const fresh = await lease.rotateNow('test: a fresh credential while replay is paused', { force: true });
    const started = Date.now();
    const during = await pool.query('SELECT current_user AS u', [], { deadline: Date.now() + 10_000 });
    assert.equal(during.rows[0].u, previous, 'answered at once by the previous credentials while the replica lags');
    await sleep(4000); // past the lag window: still no failure, nothing issued again
    assert.equal((await pool.query('SELECT current_user AS u', [], { deadline: Date.now() + 10_000 })).rows[0].u, previous);
    assert.ok(pool.pendingProbes > 0, 'the new credentials were probed while the replica lagged');
    await replay('resume');
    await h.waitFor('the new credentials to take over', async () => pool.currentUser === fresh.username, 15_000);
    const seconds = (Date.now() - started) / 1000;
    const r = await pool.query('SELECT current_user AS u', [], { deadline: Date.now() + 10_000 });
    assert.equal(r.rows[0].u, fresh.username);
    assert.equal(issued, 1, 'no credentials were issued besides the rotation');
    const text = await metrics.registry.metrics();
    assert.match(text, new RegExp(`pgvault_replica_lag_retries_total\\{role="readonly"\\} ${pool.lagRetries}`));
    console.log(`# figure: replica lag during a rotation: replay paused 4 s; ${pool.pendingProbes} probes of the new user, the previous one served meanwhile, the new one took over ${seconds.toFixed(1)}s after the rotation, 0 extra credentials`);
    await rt.close({ timeoutMillis: 5000 });
    rt = undefined;
  });

  test('replication lag past the window: the API answers 503 with its clear error, without looping; it recovers when replay resumes', async () => {
    await replay('pause');
    serverLog = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-replica-')), 'server.log');
    const out = fs.openSync(serverLog, 'a');
    server = spawn(process.execPath, [SERVE, ENV], { env: { ...process.env, PORT: String(API_PORT) }, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    await h.waitFor('the API to listen', async () => (await fetch(`${BASE}/healthz`)).status === 200, 60_000);
    const t0 = Date.now();
    const res = await fetch(`${BASE}/items?limit=1`);
    const body: any = await res.json();
    const answeredAfter = (Date.now() - t0) / 1000;
    assert.equal(res.status, 503);
    assert.match(body.error, /database is unavailable|no answer within/);
    // Stay paused past several windows: new credentials come with a growing pause, not in a loop.
    await sleep(6000);
    const issuedWhilePaused = metricValue(await (await fetch(`${BASE}/metrics`)).text(), 'pgvault_lease_issued_total{role="readonly"}');
    await replay('resume');
    const t1 = Date.now();
    await h.waitFor('GET /items to answer 200 after replay resumed', async () => (await fetch(`${BASE}/items?limit=1`)).status === 200, 30_000);
    const recovered = (Date.now() - t1) / 1000;
    const text = await (await fetch(`${BASE}/metrics`)).text();
    const retries = metricValue(text, 'pgvault_replica_lag_retries_total{role="readonly"}');
    console.log(`# figure: replica lag past the window: 503 after ${answeredAfter.toFixed(1)}s; readonly credentials issued in ~10 s of paused replay: ${issuedWhilePaused}; lag retries ${retries}; 200 again ${recovered.toFixed(1)}s after replay resumed`);
    assert.ok(issuedWhilePaused <= 5, `credentials were issued in a loop: ${issuedWhilePaused}`);
    assert.ok(retries > 0);
  });

  test(`revocation reaches the replica: a revoked readonly user's open session there ends within ${REVOCATION_BOUND_SECONDS} s, and it can log in on neither server`, async () => {
    const s = await session();
    const creds = await s.issue(cfg.mountPath, 'readonly');
    const onReplica = { clientHost: replicaAt().clientHost, clientPort: replicaAt().clientPort };
    await h.waitFor('the new user on the replica', async () => (await h.tryLogin(env, creds.username, creds.password, onReplica)) === 'ok', 10_000);
    const c = new Client({ host: onReplica.clientHost, port: onReplica.clientPort, database: env.postgres.database, user: creds.username, password: creds.password, ssl: pgSsl('verify-full', { ca }) });
    await c.connect();
    let ended: number | undefined;
    c.on('error', () => (ended ??= Date.now()));
    assert.equal((await c.query('SELECT pg_is_in_recovery() AS r')).rows[0].r, true);
    const revokedAt = Date.now();
    await s.revoke(creds.leaseId);
    while (ended === undefined && Date.now() - revokedAt < 15_000) {
      try {
        await c.query('SELECT 1');
        await sleep(50);
      } catch {
        ended ??= Date.now();
      }
    }
    await c.end().catch(() => undefined);
    await s.revokeSelf();
    assert.ok(ended !== undefined, 'the session on the replica ended');
    const seconds = (ended - revokedAt) / 1000;
    console.log(`# figure: revocation on the replica: the revoked user's session ended ${seconds.toFixed(2)}s after the revoke call returned (bound ${REVOCATION_BOUND_SECONDS} s)`);
    assert.ok(seconds <= REVOCATION_BOUND_SECONDS, `ended after ${seconds} s`);
    assert.equal(await h.tryLogin(env, creds.username, creds.password), '28P01', 'no login on the primary');
    assert.equal(await h.tryLogin(env, creds.username, creds.password, onReplica), '28P01', 'no login on the replica');
    assert.match(containerLog(REPLICA), /pgvault reaper: terminated 1 session/);
  });

  test('replica stopped: readonly answers 503 and /readyz says the database is unavailable; writes keep working; both recover without a restart', async () => {
    assert.ok(server && server.exitCode === null, 'the API from the previous test runs');
    await h.waitFor('the API to be ready', async () => (await fetch(`${BASE}/readyz`)).status === 200, 30_000);
    let stop = false;
    const writes = { ok: 0, failed: 0, answers: {} as Record<string, number> };
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        const answer = await post(`${BASE}/items`, { name: `replica-down-${i}` }).catch((e) => e.code ?? e.message);
        writes.answers[answer] = (writes.answers[answer] ?? 0) + 1;
        if (answer === 201) writes.ok++;
        else writes.failed++;
        await sleep(100);
      }
    })();
    const stoppedAt = Date.now();
    h.docker('stop', REPLICA);
    const stopSeconds = (Date.now() - stoppedAt) / 1000;
    let notReady = 0;
    let readyBody: any;
    await h.waitFor('/readyz to say the database is unavailable', async () => {
      const r = await fetch(`${BASE}/readyz`);
      readyBody = await r.json();
      return r.status === 503 && readyBody.database === 'unavailable';
    }, 20_000);
    notReady = (Date.now() - stoppedAt) / 1000;
    const t = Date.now();
    const read = await fetch(`${BASE}/items?limit=1`);
    const readBody: any = await read.json();
    const readSeconds = (Date.now() - t) / 1000;
    assert.equal(read.status, 503);
    assert.match(readBody.error, /database is unavailable|no answer within/);

    const startedAt = Date.now();
    h.docker('start', REPLICA);
    await h.waitFor('/readyz to answer 200 again', async () => (await fetch(`${BASE}/readyz`)).status === 200, 60_000);
    const readyAgain = (Date.now() - startedAt) / 1000;
    const items = await fetch(`${BASE}/items?limit=1`);
    assert.equal(items.status, 200, 'readonly works again, without a restart of the API');
    await sleep(500);
    stop = true;
    await writer;
    console.log(
      `# figure: replica stopped (docker stop ${stopSeconds.toFixed(1)}s): /readyz 503 with database "unavailable" ${notReady.toFixed(1)}s after the stop began; ` +
        `GET /items 503 "${readBody.error}" in ${readSeconds.toFixed(1)}s; after docker start, /readyz 200 in ${readyAgain.toFixed(1)}s; writes meanwhile: ${writes.ok} ok, ${writes.failed} failed`,
    );
    server.kill('SIGTERM');
    await new Promise((r) => (server!.exitCode !== null ? r(undefined) : server!.once('exit', r)));
    assert.equal(writes.failed, 0, `writes on the primary kept working: ${JSON.stringify(writes.answers)}`);
    assert.ok(writes.ok > 10);
    assert.equal(readyBody.vault, 'ok');
  });

  test('destroy leaves nothing of the replica (or of ha): no container, volume or network; a second destroy is harmless', async () => {
    const t = await h.timed(() => h.destroy(ENV));
    destroyed = true;
    console.log(`# figure: destroy of ${ENV} with its replica: ${t.seconds.toFixed(1)}s`);
    assert.equal(h.docker('ps', '-a', '--filter', 'name=pgvault-ha-', '--format', '{{.Names}}'), '');
    assert.equal(h.docker('volume', 'ls', '--filter', 'name=pgvault-ha-', '--format', '{{.Name}}'), '');
    assert.equal(h.docker('network', 'ls', '--filter', 'name=pgvault-ha', '--format', '{{.Name}}'), '');
    assert.equal(fs.existsSync(localDir(ENV)), false, 'the replication password, the keys and tokens under .local/ha are gone');
    await h.destroy(ENV);
  });
});

/** What the container wrote (Postgres logs to stderr). */
function containerLog(name: string): string {
  const r = spawnSync('docker', ['logs', name], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, timeout: h.DOCKER_TIMEOUT_MS });
  return `${r.stdout}${r.stderr}`;
}

/** A POST on a connection of its own (no keep-alive race with the server's idle timeout); resolves with the status. */
function post(url: string, body: unknown): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', agent: false, headers: { 'content-type': 'application/json' }, timeout: 10_000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 10 s')));
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

/** One sample's value from Prometheus text (0 when absent). */
function metricValue(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}
