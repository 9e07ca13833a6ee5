/**
 * Real fault tests of the REST API and its credential runtime, against a deployed
 * environment whose roles have TTLs of a few seconds: continuous load across rotations,
 * Vault paused, Postgres restarted, a lease revoked behind the app's back, max TTL
 * reached while idle, Postgres paused under load, an INSERT stuck on a lock past its deadline
 * with its Idempotency-Key retry, SIGTERM, and Vault down at start. Figures are printed as `# figure:`.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, ChildProcess } from 'node:child_process';
import { EnvironmentConfig } from '../../stacks/config';
import * as h from '../harness';

const ENV = 'faults';
const PORT = 18181;
const BASE = `http://127.0.0.1:${PORT}`;
const SERVE = path.join(__dirname, '..', '..', 'api', 'serve.js');
const DEFAULT_TTL = 10;
const MAX_TTL = 24;
/** The server's request deadline (serve's default) and the margin its answers may take past it (the cancel's 1 s bound, the backstop). */
const REQUEST_DEADLINE_MS = 5000;
const ANSWER_MARGIN_MS = 2500;

/** One POST /items with an Idempotency-Key: status, body, how long it took, whether it was a replay. */
async function keyedPost(name: string, key: string): Promise<{ status: number; body: any; millis: number; replayed: boolean }> {
  const t0 = Date.now();
  const res = await fetch(`${BASE}/items`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'idempotency-key': key },
    body: JSON.stringify({ name }),
    signal: AbortSignal.timeout(20_000),
  });
  const body = await res.json();
  return { status: res.status, body, millis: Date.now() - t0, replayed: res.headers.get('idempotent-replayed') === 'true' };
}

async function rowsNamed(env: EnvironmentConfig, name: string): Promise<number> {
  const admin = await h.adminClient(env);
  try {
    return (await admin.query('SELECT count(*)::int AS n FROM app.items WHERE name = $1', [name])).rows[0].n;
  } finally {
    await admin.end();
  }
}

interface LoadResult {
  ok: number;
  failed: number;
  statuses: Record<string, number>;
  firstFailureAt?: number;
  lastFailureAt?: number;
  /** The slowest answer (ms); a request without an answer counts as its 10 s client timeout. */
  maxMillis: number;
}

/** Concurrent GET /items and POST /items (each with an Idempotency-Key) until `stop()` resolves true. */
async function load(workers: number, until: () => boolean): Promise<LoadResult> {
  const r: LoadResult = { ok: 0, failed: 0, statuses: {}, maxMillis: 0 };
  const run = Math.random().toString(36).slice(2, 8);
  const one = async (i: number) => {
    const post = i % 2 === 0;
    const t0 = Date.now();
    try {
      const res = await fetch(`${BASE}/items${post ? '' : '?limit=5'}`, {
        method: post ? 'POST' : 'GET',
        headers: post ? { 'content-type': 'application/json', 'idempotency-key': `load-${run}-${i}` } : undefined,
        body: post ? JSON.stringify({ name: `load-${i}` }) : undefined,
        signal: AbortSignal.timeout(10_000),
      });
      await res.arrayBuffer();
      r.maxMillis = Math.max(r.maxMillis, Date.now() - t0);
      r.statuses[res.status] = (r.statuses[res.status] ?? 0) + 1;
      if (res.status < 400) {
        r.ok++;
        return;
      }
    } catch (e: any) {
      r.maxMillis = Math.max(r.maxMillis, Date.now() - t0);
      r.statuses[e.name ?? 'error'] = (r.statuses[e.name ?? 'error'] ?? 0) + 1;
    }
    r.failed++;
    r.firstFailureAt ??= Date.now();
    r.lastFailureAt = Date.now();
  };
  let n = 0;
  await Promise.all(
    Array.from({ length: workers }, async () => {
      while (!until()) await one(n++);
    }),
  );
  return r;
}

async function metric(name: string, labels = ''): Promise<number> {
  const text = await (await fetch(`${BASE}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(name) && line.includes(labels)) sum += Number(line.split(' ').pop());
  }
  return sum;
}

async function ready(): Promise<number> {
  try {
    return (await fetch(`${BASE}/readyz`, { signal: AbortSignal.timeout(5000) })).status;
  } catch {
    return 0;
  }
}

describe('fault tests: the API on short-lived credentials', () => {
  let env: EnvironmentConfig;
  let server: ChildProcess | undefined;
  let serverLog: string;
  let destroyed = false;

  const startServer = (extraEnv: NodeJS.ProcessEnv = {}) => {
    const out = fs.openSync(serverLog, 'a');
    const child = spawn(process.execPath, [SERVE, ENV], { env: { ...process.env, PORT: String(PORT), ...extraEnv }, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    return child;
  };
  const exited = (child: ChildProcess, timeoutMs: number) =>
    new Promise<number | null>((resolve) => {
      if (child.exitCode !== null) return resolve(child.exitCode);
      const t = setTimeout(() => resolve(null), timeoutMs);
      child.once('exit', (code) => {
        clearTimeout(t);
        resolve(code);
      });
    });

  before(async () => {
    h.requireToolchain();
    serverLog = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-faults-')), 'server.log');
    h.scratchEnvironment('local', (doc) => {
      doc.docker = { postgresHostPort: 15434, vaultHostPort: 18204 };
      for (const r of Object.values(doc.roles) as any[]) Object.assign(r, { defaultTtlSeconds: DEFAULT_TTL, maxTtlSeconds: MAX_TTL });
      // A short token max TTL, so the run also sees a re-login and leases moving to the new token.
      doc.appAccess = { tokenTtlSeconds: 60, tokenMaxTtlSeconds: 120 };
    }, ENV);
    env = h.loadEnvironment(ENV);
    await h.destroy(ENV);
    await h.deploy(ENV);
    server = startServer();
    await h.waitFor('the API to be ready', async () => (await ready()) === 200, 60_000);
    console.log(`# server log: ${serverLog}`);
  });

  after(async () => {
    if (server && server.exitCode === null) {
      server.kill('SIGTERM');
      await exited(server, 20_000);
    }
    // A hang of the unpause is named (below), after the destroy has had its chance.
    const hangs: string[] = [];
    for (const container of [`pgvault-${ENV}-vault`, `pgvault-${ENV}-postgres`]) {
      try {
        h.dockerIfAny('unpause', container);
      } catch (e: any) {
        hangs.push(e.message);
      }
    }
    if (!destroyed) await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
    if (hangs.length) throw new Error(hangs.join('; '));
  });

  test('continuous load for 75 s across at least three rotations per role fails no request', async () => {
    const before = { ro: await metric('pgvault_lease_rotations_total', 'role="readonly"'), rw: await metric('pgvault_lease_rotations_total', 'role="readwrite"') };
    const end = Date.now() + 75_000;
    const r = await load(4, () => Date.now() > end);
    const rotations = {
      readonly: (await metric('pgvault_lease_rotations_total', 'role="readonly"')) - before.ro,
      readwrite: (await metric('pgvault_lease_rotations_total', 'role="readwrite"')) - before.rw,
    };
    console.log(`# figure: 75 s load: ${r.ok} requests ok, ${r.failed} failed (${(r.ok / 75).toFixed(0)} req/s); rotations ${JSON.stringify(rotations)}`);
    assert.equal(r.failed, 0, `failed requests: ${JSON.stringify(r.statuses)}`);
    assert.ok(rotations.readonly >= 3 && rotations.readwrite >= 3, `rotations: ${JSON.stringify(rotations)}`);
    assert.ok((await metric('pgvault_lease_revocations_total')) >= 6, 'old leases were revoked after draining');
  });

  test('Vault paused: the API keeps serving, turns not-ready as expiry nears, and recovers by itself', async () => {
    h.docker('pause', `pgvault-${ENV}-vault`);
    let notReadyAfter: number | undefined;
    const t0 = Date.now();
    let served: LoadResult;
    try {
      const poll = (async () => {
        while (Date.now() - t0 < 20_000 && notReadyAfter === undefined) {
          if ((await ready()) === 503) notReadyAfter = (Date.now() - t0) / 1000;
          else await new Promise((r) => setTimeout(r, 250));
        }
      })();
      served = await load(2, () => notReadyAfter !== undefined || Date.now() - t0 > 20_000);
      await poll;
    } finally {
      h.docker('unpause', `pgvault-${ENV}-vault`);
    }
    const t1 = Date.now();
    await h.waitFor('the API to be ready again', async () => (await ready()) === 200, 60_000);
    const recovered = (Date.now() - t1) / 1000;
    const after = await load(2, ((end) => () => Date.now() > end)(Date.now() + 5000));
    console.log(`# figure: Vault paused: ${served.ok} requests served on current credentials, ${served.failed} failed; not ready after ${notReadyAfter?.toFixed(1)}s; ready again ${recovered.toFixed(1)}s after Vault returned`);
    assert.ok(notReadyAfter !== undefined, 'the API reported not-ready before the credentials expired');
    assert.ok(served.ok > 0);
    assert.equal(served.failed, 0, `requests failed while credentials were still valid: ${JSON.stringify(served.statuses)}`);
    assert.equal(after.failed, 0, `requests failed after recovery: ${JSON.stringify(after.statuses)}`);
  });

  test('Postgres restarted: the pool recovers by itself', async () => {
    let done = false;
    const retriesBefore = await metric('pgvault_pool_failures_total', 'reason="connect_retry"');
    const running = load(4, () => done);
    await new Promise((r) => setTimeout(r, 1000));
    const t0 = Date.now();
    h.docker('restart', '-t', '5', `pgvault-${ENV}-postgres`);
    await h.waitFor('Postgres to be healthy', async () => h.docker('inspect', '-f', '{{.State.Health.Status}}', `pgvault-${ENV}-postgres`) === 'healthy', 60_000);
    await new Promise((r) => setTimeout(r, 3000));
    done = true;
    const r = await running;
    const recoverSeconds = r.lastFailureAt ? (r.lastFailureAt - t0) / 1000 : 0;
    const retries = (await metric('pgvault_pool_failures_total', 'reason="connect_retry"')) - retriesBefore;
    console.log(`# figure: Postgres restart: ${r.failed} failed requests of ${r.ok + r.failed}; last failure ${recoverSeconds.toFixed(1)}s after the restart began; ${retries} connection attempts retried`);
    const after = await load(2, ((end) => () => Date.now() > end)(Date.now() + 3000));
    assert.equal(after.failed, 0, `still failing after recovery: ${JSON.stringify(after.statuses)}`);
    // Readiness also wants every lease above 20 % of its TTL: on a loaded machine a 10 s lease may dip there for a moment.
    await h.waitFor('the API to be ready again', async () => (await ready()) === 200, 15_000);
  });

  test('a lease revoked behind the app’s back: it notices, issues new credentials and recovers', async () => {
    const userBefore = await currentUsers(env);
    let done = false;
    const running = load(4, () => done);
    await new Promise((r) => setTimeout(r, 1000));
    const t0 = Date.now();
    await h.vaultAdmin(env, 'PUT', 'sys/leases/revoke-prefix/database/creds/readonly');
    await h.waitFor('new readonly credentials', async () => {
      const now = await currentUsers(env);
      return now.some((u) => u.includes('readonly') && !userBefore.includes(u));
    }, 30_000);
    await new Promise((r) => setTimeout(r, 3000));
    done = true;
    const r = await running;
    console.log(`# figure: lease revoked behind the app: ${r.failed} failed requests of ${r.ok + r.failed}; new credentials within ${((Date.now() - t0) / 1000 - 3).toFixed(1)}s`);
    assert.ok(r.failed <= 8, `at most a handful of requests may fail (one per in-flight connection): ${r.failed} ${JSON.stringify(r.statuses)}`);
    const after = await load(2, ((end) => () => Date.now() > end)(Date.now() + 3000));
    assert.equal(after.failed, 0, `still failing: ${JSON.stringify(after.statuses)}`);
  });

  test('max TTL reached while idle: the next request still succeeds', async () => {
    const usersBefore = await currentUsers(env);
    await new Promise((r) => setTimeout(r, (MAX_TTL + 4) * 1000));
    const get = await fetch(`${BASE}/items?limit=1`);
    const post = await fetch(`${BASE}/items`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name":"after-idle"}' });
    assert.equal(get.status, 200);
    assert.equal(post.status, 201);
    const usersAfter = await currentUsers(env);
    assert.ok(usersAfter.every((u) => !usersBefore.includes(u)), 'every credential in use now was issued during the idle period');
  });

  test('bad input gets a 400 (413 over the size limit) with a clear message; database details never leak', async () => {
    const bad = await fetch(`${BASE}/items`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name": 42}' });
    assert.equal(bad.status, 400);
    assert.match(((await bad.json()) as any).error, /"name" is 42, a number; expected a string/);
    const big = await fetch(`${BASE}/items`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'x'.repeat(5000) }) });
    assert.equal(big.status, 413);
    const text = await (await fetch(`${BASE}/items?limit=zero`)).text();
    assert.match(JSON.parse(text).error, /"limit" is "zero", not a whole number; expected a whole number from 1 to 100/);
    assert.doesNotMatch(text, /postgres(ql)?:\/\/|password|v-approle/i);
  });

  test('Postgres paused (docker pause) under load: every request answers within its deadline plus a small margin, and it serves again within seconds after the pause', { timeout: 120_000 }, async () => {
    let done = false;
    const running = load(4, () => done);
    await new Promise((r) => setTimeout(r, 1000));
    const marked = `paused-${Date.now()}`;
    const key = `pause-${Date.now()}`;
    const pauseMillis = 8000;
    const t0 = Date.now();
    h.docker('pause', `pgvault-${ENV}-postgres`);
    let during: Awaited<ReturnType<typeof keyedPost>>;
    let readyDuring: number;
    try {
      // A paused container still acknowledges TCP: only the deadline ends these.
      [during, readyDuring] = await Promise.all([keyedPost(marked, key), ready()]);
      await new Promise((r) => setTimeout(r, Math.max(0, pauseMillis - (Date.now() - t0))));
    } finally {
      h.docker('unpause', `pgvault-${ENV}-postgres`);
    }
    const t1 = Date.now();
    await h.waitFor('GET /items to answer 200 again', async () => (await fetch(`${BASE}/items?limit=1`, { signal: AbortSignal.timeout(10_000) })).status === 200, 30_000);
    const recovered = (Date.now() - t1) / 1000;
    await new Promise((r) => setTimeout(r, 3000));
    done = true;
    const r = await running;
    // The write sent during the pause: retried with its key until it answers, it is written once.
    let retry = await keyedPost(marked, key);
    for (let i = 0; i < 10 && retry.status !== 201; i++) {
      await new Promise((res) => setTimeout(res, 1000));
      retry = await keyedPost(marked, key);
    }
    const again = await keyedPost(marked, key);
    const rows = await rowsNamed(env, marked);
    console.log(
      `# figure: Postgres paused ${pauseMillis / 1000} s under load: ${r.ok + r.failed} requests (${JSON.stringify(r.statuses)}), slowest answer ${(r.maxMillis / 1000).toFixed(1)} s ` +
        `(deadline ${REQUEST_DEADLINE_MS / 1000} s); the keyed write sent during the pause answered ${during.status}${during.body.outcome ? ` (outcome ${during.body.outcome})` : ''} after ${(during.millis / 1000).toFixed(1)} s, ` +
        `its retry ${retry.status}${retry.replayed ? ' (replayed: the first attempt had been written)' : ''}; GET /items served again ${recovered.toFixed(1)} s after the unpause`,
    );
    assert.ok(r.maxMillis <= REQUEST_DEADLINE_MS + ANSWER_MARGIN_MS, `every request answered within ${REQUEST_DEADLINE_MS + ANSWER_MARGIN_MS} ms; the slowest took ${r.maxMillis} ms: ${JSON.stringify(r.statuses)}`);
    assert.ok(during.millis <= REQUEST_DEADLINE_MS + ANSWER_MARGIN_MS, `the keyed write answered after ${during.millis} ms`);
    assert.equal(readyDuring, 503, '/readyz says the database is unavailable');
    assert.ok(
      (during.status === 504 && during.body.outcome === 'unknown') || (during.status === 503 && /nothing was written/.test(during.body.error)),
      `a write without an answer is 504 "outcome": "unknown", or 503 only when nothing was written: ${during.status} ${JSON.stringify(during.body)}`,
    );
    for (const status of Object.keys(r.statuses)) assert.ok(['200', '201', '503', '504'].includes(status), `only 503 and 504 while paused: ${JSON.stringify(r.statuses)}`);
    assert.ok(recovered < 15, `served again ${recovered.toFixed(1)} s after the unpause`);
    assert.equal(retry.status, 201, JSON.stringify(retry.body));
    assert.deepEqual([again.status, again.replayed, again.body], [201, true, retry.body], 'the same key again: the first answer, nothing written');
    assert.equal(rows, 1, `the item sent during the pause is in the table once (${rows})`);
    await h.waitFor('the API to be ready again', async () => (await ready()) === 200, 30_000);
  });

  test('an INSERT waiting on a table lock past its deadline answers 503 only when it was rolled back (else 504 unknown), and a retry with the same Idempotency-Key writes it once', { timeout: 90_000 }, async () => {
    const name = `locked-${Date.now()}`;
    const key = `lock-${Date.now()}`;
    const admin = await h.adminClient(env);
    let first: Awaited<ReturnType<typeof keyedPost>>;
    try {
      // SHARE blocks INSERT, not SELECT.
      await admin.query('BEGIN');
      await admin.query('LOCK TABLE app.items IN SHARE MODE');
      first = await keyedPost(name, key);
    } finally {
      await admin.query('COMMIT').catch(() => undefined);
      await admin.end();
    }
    // Had the INSERT gone on behind the answer, it would commit now that the lock is gone.
    await new Promise((r) => setTimeout(r, 1000));
    const rowsAfterLock = await rowsNamed(env, name);
    const retry = await keyedPost(name, key);
    const again = await keyedPost(name, key);
    const other = await keyedPost(`${name}-other`, key);
    const rows = await rowsNamed(env, name);
    console.log(
      `# figure: INSERT on a locked table: answered ${first.status}${first.body.outcome ? ` (outcome ${first.body.outcome})` : ''} after ${(first.millis / 1000).toFixed(1)} s ` +
        `(deadline ${REQUEST_DEADLINE_MS / 1000} s); rows once the lock was gone: ${rowsAfterLock}; retry with the same key ${retry.status}, again ${again.status}${again.replayed ? ' (replayed)' : ''}; rows ${rows}`,
    );
    assert.ok(first.millis <= REQUEST_DEADLINE_MS + ANSWER_MARGIN_MS, `answered within the deadline plus ${ANSWER_MARGIN_MS} ms: ${first.millis} ms`);
    if (first.status === 503) {
      assert.match(first.body.error, /nothing was written/);
      assert.equal(rowsAfterLock, 0, 'a 503 "nothing was written" means nothing was written, also once the lock is gone');
    } else {
      assert.deepEqual([first.status, first.body.outcome], [504, 'unknown'], JSON.stringify(first.body));
    }
    assert.equal(retry.status, 201, JSON.stringify(retry.body));
    assert.deepEqual([again.status, again.replayed, again.body], [201, true, retry.body]);
    assert.equal(other.status, 409, 'the same key for another body');
    assert.equal(rows, 1, 'written exactly once');
  });

  test('SIGTERM: the server drains, revokes every lease and its token, and exits 0', async () => {
    const relogins = await metric('pgvault_token_relogins_total');
    console.log(`# figure: token renewals ${await metric('pgvault_token_renewals_total')}, re-logins ${relogins} (token max TTL 120 s)`);
    assert.ok(relogins >= 1, 'the token reached its max TTL during the run and the app logged in again');
    server!.kill('SIGTERM');
    assert.equal(await exited(server!, 30_000), 0);
    assert.deepEqual(await currentUsers(env), [], 'no dynamic role remains in pg_roles');
    for (const role of ['readonly', 'readwrite']) {
      const leases = await h.vaultAdmin(env, 'GET', `sys/leases/lookup/database/creds/${role}?list=true`).catch((e: Error) => (/404/.test(e.message) ? { data: { keys: [] } } : Promise.reject(e)));
      assert.deepEqual(leases.data.keys, [], `no ${role} lease remains in Vault`);
    }
    assert.match(fs.readFileSync(serverLog, 'utf8'), /stopped cleanly/);
  });

  test('Vault down when the app starts: a clear error after a bounded retry, no stack trace', async () => {
    h.docker('pause', `pgvault-${ENV}-vault`);
    try {
      const before = fs.readFileSync(serverLog, 'utf8').length;
      const t0 = Date.now();
      const child = startServer({ PGVAULT_START_TIMEOUT_SECONDS: '8' });
      const code = await exited(child, 60_000);
      const seconds = (Date.now() - t0) / 1000;
      const out = fs.readFileSync(serverLog, 'utf8').slice(before);
      console.log(`# figure: Vault down at start: exit ${code} after ${seconds.toFixed(1)}s`);
      assert.equal(code, 1, out);
      assert.match(out, /retrying in \d+ ms/);
      assert.match(out, /"level":60,.*"msg":"cannot start: .*Vault.*after \d+ attempts/);
      assert.doesNotMatch(out, /^\s+at /m, 'no stack trace');
      assert.ok(seconds < 40, 'the retry is bounded');
    } finally {
      h.docker('unpause', `pgvault-${ENV}-vault`);
    }
    await h.destroy(ENV);
    destroyed = true;
  });
});

async function currentUsers(env: EnvironmentConfig): Promise<string[]> {
  const admin = await h.adminClient(env);
  try {
    const r = await admin.query("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-approle-%' ORDER BY 1");
    return r.rows.map((x) => x.rolname);
  } finally {
    await admin.end();
  }
}

