/**
 * Unit tests of the runtime's timing logic for long runs and faults, against named fakes
 * (FakeVaultSession, FakeVaultClient): forced rotation racing an in-flight issue, re-login
 * backoff, TTLs above 2^31 ms, the 28000 / clock-skew path, retiring leases renewed while
 * they drain, expired leases never renewed, 403 leading to a re-login. The real processes
 * are exercised by test/faults.
 */
import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { cappedDelay, MAX_TIMER_MILLIS, loginRefused, VaultRequestError, LeaseManager, RotatingPool, VaultSession } from '@pgvault/runtime';
import { FakePostgres, FakeVaultClient, FakeVaultSession, httpError, vaultError } from './fakes';

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));
const DAY = 86_400;

const stops: Array<() => Promise<unknown>> = [];
after(async () => {
  for (const stop of stops.reverse()) await stop().catch(() => undefined);
});

/** A FakePostgres (the wire protocol on 127.0.0.1) whose column x answers the session's user; stopped after the file. */
async function fakePostgres(): Promise<FakePostgres> {
  const pg = await new FakePostgres().start();
  pg.rowValue = (u) => u;
  stops.push(() => pg.stop());
  return pg;
}

function manager(fake: FakeVaultSession, opts: { maxTtlSeconds?: number; maxBackoff?: number } = {}): LeaseManager {
  const m = new LeaseManager({ session: fake, mount: 'database', role: 'ro', maxTtlSeconds: opts.maxTtlSeconds, jitter: 0, backoff: { initialMillis: 20, maxMillis: opts.maxBackoff ?? 100 } });
  m.on('error', () => undefined);
  return m;
}

test('a forced rotation racing an in-flight issue never leaves a lease of the old token current', async () => {
  const fake = new FakeVaultSession(60);
  const m = manager(fake);
  await m.start();
  fake.issueDelayMillis = 100;
  // A rotation starts with token 1 ...
  const inFlight = m.rotateNow('Postgres refused', { force: true });
  await wait(20);
  // ... the session logs in again meanwhile, and the runtime forces a rotation onto token 2.
  fake.tokenGeneration = 2;
  const forced = m.rotateNow('new Vault token', { force: true });
  await Promise.all([inFlight, forced]);
  assert.equal(m.current().tokenGeneration, 2, 'the current lease belongs to the new token');
  assert.ok(fake.revoked.includes('database/creds/ro/2'), 'the lease issued with the old token was revoked, unused');
  await m.stop();
});

test('a 403 on renew logs in again (once for many callers) and replaces the lease', async () => {
  const fake = new FakeVaultSession(1);
  fake.renewAnswer = () => {
    throw vaultError(403, 'permission denied', 'sys/leases/renew');
  };
  const m = manager(fake);
  await m.start();
  await wait(900);
  assert.equal(fake.relogins, 1);
  assert.equal(m.current().tokenGeneration, 2);
  assert.ok(fake.issued >= 2);
  await m.stop();
});

test('an expired lease is never renewed; rotation retries with growing backoff', async () => {
  const fake = new FakeVaultSession(1);
  const unreachable = () => vaultError(undefined, 'connect ECONNREFUSED');
  fake.renewAnswer = () => {
    throw unreachable();
  };
  const m = manager(fake, { maxBackoff: 400 });
  const issuesBefore = fake.issued;
  await m.start();
  fake.issueError = unreachable;
  await wait(3000);
  // Before the fix: a renewal every 200 ms after expiry, forever (about 12 here).
  const afterExpiry = fake.renewals.length;
  assert.ok(afterExpiry <= 8, `renewals while Vault is down stay few: ${afterExpiry}`);
  await wait(1000);
  assert.equal(fake.renewals.length, afterExpiry, 'no renewal once the lease expired');
  assert.equal(fake.issued, issuesBefore + 1);
  fake.issueError = undefined;
  await wait(600);
  assert.ok(fake.issued >= issuesBefore + 2, 'new credentials once Vault answers again');
  await m.stop();
});

test('TTLs above 2^31 ms do not overflow the timers (45 days: no renewal storm)', async () => {
  assert.equal(cappedDelay(45 * DAY * 1000), MAX_TIMER_MILLIS);
  const fake = new FakeVaultSession(45 * DAY);
  const m = manager(fake);
  await m.start();
  await wait(300);
  // Before the fix: 818 renewals per second.
  assert.equal(fake.renewals.length, 0);
  const pool = new RotatingPool({ lease: m, host: '127.0.0.1', port: 1, database: 'x' });
  const lifetime = (pool as any).active.pool.options.maxLifetimeSeconds;
  assert.ok(lifetime * 1000 <= MAX_TIMER_MILLIS, `pg maxLifetimeSeconds ${lifetime} fits a timer`);
  await pool.close();
  await m.stop();
});

test('retiring credentials are renewed while they drain, and revoked when retired', async () => {
  const fake = new FakeVaultSession(1);
  fake.renewAnswer = () => 0.5; // capped: the manager rotates
  const m = manager(fake);
  let previous: any;
  m.on('rotated', (prev) => (previous ??= prev));
  await m.start();
  await wait(1500);
  assert.ok(previous, 'rotated');
  const oldRenewals = fake.renewals.filter((id) => id === previous.leaseId).length;
  assert.ok(oldRenewals >= 2, `the draining lease was renewed after the rotation too (${oldRenewals} renewals)`);
  await m.retire(previous);
  assert.ok(fake.revoked.includes(previous.leaseId));
  await m.stop();
});

test('Postgres refusing fresh credentials (28P01, e.g. clock skew) or for 28000 does not churn credentials', async () => {
  const fake = new FakeVaultSession(60);
  const m = manager(fake);
  await m.start();
  const pg = await fakePostgres();
  pg.accepts = () => false;
  const pool = new RotatingPool({ lease: m, host: '127.0.0.1', port: pg.port, database: 'x', connectRetryMillis: 0 });
  pool.on('error', () => undefined);
  for (let i = 0; i < 20; i++) await pool.query('SELECT 1').catch(() => undefined);
  await wait(50);
  // One rotation is tried at once, the next only after a growing pause: not one per request.
  assert.ok(fake.issued <= 2, `issued ${fake.issued} credentials for 20 refused requests`);
  pg.refusalCode = '28000';
  const before = fake.issued;
  for (let i = 0; i < 20; i++) await pool.query('SELECT 1').catch(() => undefined);
  await wait(50);
  assert.equal(fake.issued, before, '28000 (pg_hba, NOLOGIN) never leads to new credentials');
  assert.ok((pool.failures.get('auth_refused_fresh') ?? 0) >= 20 && (pool.failures.get('auth_refused_28000') ?? 0) >= 20, 'reported');
  await pool.close();
  await m.stop();
});

test('fresh credentials revoked before their first login: requests refused meanwhile wait for the one new issue and succeed', async () => {
  const fake = new FakeVaultSession(60);
  const m = manager(fake);
  await m.start();
  await wait(1100); // rotations asked for by the pool are limited to one a second
  const pg = await fakePostgres();
  const pool = new RotatingPool({ lease: m, host: '127.0.0.1', port: pg.port, database: 'x', connectRetryMillis: 0 });
  pool.on('error', () => undefined);
  const revoked = pool.currentUser;
  pg.accepts = (u) => u !== revoked;
  const results = await Promise.allSettled(Array.from({ length: 8 }, () => pool.query('SELECT current_user AS x', [], { deadline: Date.now() + 5000 })));
  assert.deepEqual(results.map((r) => r.status), Array(8).fill('fulfilled'), 'no request failed');
  assert.ok(results.every((r) => r.status === 'fulfilled' && r.value.rows[0].x !== revoked), 'served by the new credentials');
  assert.equal(fake.issued, 2, 'one new issue for all refused requests');
  await pool.close();
  await m.stop();
});

test('a refusal of credentials that worked before (revoked behind our back) gets new ones at once, and one retry', async () => {
  const fake = new FakeVaultSession(60);
  const m = manager(fake);
  await m.start();
  await wait(1100); // rotations asked for by the pool are limited to one a second
  const pg = await fakePostgres();
  const pool = new RotatingPool({ lease: m, host: '127.0.0.1', port: pg.port, database: 'x' });
  assert.equal((await pool.query('SELECT current_user AS x')).rows[0].x, 'v-ro-1', 'the credentials worked');
  // Revoked behind our back: the user dropped and its sessions ended.
  pg.accepts = (u) => u !== 'v-ro-1';
  pg.terminate('v-ro-1');
  await wait(50);
  assert.equal((await pool.query('SELECT current_user AS x')).rows[0].x, 'v-ro-2');
  assert.deepEqual(pg.startups.map((x) => x.user), ['v-ro-1', 'v-ro-1', 'v-ro-2'], 'refused once, then the new credentials');
  await pool.close();
  await m.stop();
});

test('a failed re-login is retried with backoff until it succeeds, not at 2/3 of the remaining token life', async () => {
  let loginOk = true;
  let n = 0;
  const client = new FakeVaultClient((path) => {
    if (path.endsWith('/login')) {
      if (!loginOk) return httpError(503, 'Vault is sealed');
      return { auth: { client_token: `t${++n}`, lease_duration: 3, policies: ['p'] } };
    }
    if (path === 'auth/token/renew-self') return { auth: { lease_duration: 1 } }; // capped by the max TTL
    return {};
  });
  const s = new VaultSession({ address: 'http://127.0.0.1:1' });
  (s as any).client = client;
  await s.login('approle', 'role', 'secret');
  const relogins: number[] = [];
  s.on('relogin', (g) => relogins.push(g));
  s.on('error', () => undefined);
  s.on('loginFailed', () => undefined);
  loginOk = false;
  s.keepAlive({ initialMillis: 50, maxMillis: 200 });
  await wait(2800);
  const failedLogins = client.calls.filter((c) => c.path.endsWith('/login')).length - 1;
  assert.ok(failedLogins >= 4, `re-login retried with backoff (${failedLogins} attempts)`);
  assert.ok(s.loginFailingSince !== undefined && !s.loginRefused);
  loginOk = true;
  await wait(400);
  assert.deepEqual(relogins, [2]);
  assert.equal(s.loginFailingSince, undefined);
  s.stopKeepAlive();
});

test('each login asks the secret_id source again (a refreshed file is picked up)', async () => {
  const seen: string[] = [];
  const client = new FakeVaultClient((path, body) => {
    if (path.endsWith('/login')) {
      seen.push(body.secret_id);
      return { auth: { client_token: 't', lease_duration: 60, policies: [] } };
    }
    return {};
  });
  const s = new VaultSession({ address: 'http://127.0.0.1:1' });
  (s as any).client = client;
  let current = 'first';
  await s.login('approle', 'role', () => current);
  current = 'second';
  await s.reloginNow(s.tokenGeneration);
  assert.deepEqual(seen, ['first', 'second']);
  assert.equal(s.tokenGeneration, 2);
});

test('issue stamps issuedAt when the request is sent, and the token generation that issued it', async () => {
  const client = new FakeVaultClient((path) => {
    if (path.endsWith('/login')) return { auth: { client_token: 't', lease_duration: 60, policies: [] } };
    return { lease_id: 'database/creds/ro/1', lease_duration: 10, renewable: true, data: { username: 'u', password: 'p' } };
  });
  const slow = client.read.bind(client);
  client.read = async (path: string) => {
    await wait(200);
    return slow(path);
  };
  const s = new VaultSession({ address: 'http://127.0.0.1:1' });
  (s as any).client = client;
  await s.login('approle', 'role', 'secret');
  const sent = Date.now();
  const creds = await s.issue('database', 'ro');
  assert.ok(creds.issuedAt - sent < 50, 'stamped at sending, not 200 ms later at the answer');
  assert.equal(creds.tokenGeneration, 1);
  assert.equal(Object.keys(creds).includes('password'), false);
});

test('a wrong secret_id is a refusal (fail fast); unreachable, 429 and 5xx are worth retrying', () => {
  assert.equal(loginRefused(new VaultRequestError('VAULT_HTTP', 'x (HTTP 400: invalid role or secret ID)', 'auth/approle/login', 400)), true);
  assert.equal(loginRefused(new VaultRequestError('VAULT_FORBIDDEN', 'x', 'auth/approle/login', 403)), true);
  assert.equal(loginRefused(new VaultRequestError('VAULT_HTTP', 'x', 'auth/approle/login', 429)), false);
  assert.equal(loginRefused(new VaultRequestError('VAULT_HTTP', 'x', 'auth/approle/login', 503)), false);
  assert.equal(loginRefused(new VaultRequestError('VAULT_UNREACHABLE', 'x', 'auth/approle/login')), false);
});

test('a refused secret_id is never sent again (Vault would lock the role_id out); a new one from the source is', async () => {
  let valid = 'good-2';
  const sent: string[] = [];
  const client = new FakeVaultClient((path, body) => {
    if (!path.endsWith('/login')) return {};
    sent.push(body.secret_id);
    return body.secret_id === valid ? { auth: { client_token: 't', lease_duration: 60, policies: [] } } : httpError(400, 'invalid role or secret ID');
  });
  const s = new VaultSession({ address: 'http://127.0.0.1:1' });
  (s as any).client = client;
  s.on('loginFailed', () => undefined);
  s.on('error', () => undefined);
  let current = 'good-2';
  await s.login('approle', 'role', () => current);
  current = 'stale';
  s.keepAlive({ initialMillis: 20, maxMillis: 40 });
  await s.reloginNow(s.tokenGeneration).catch(() => undefined);
  await wait(500); // the keep-alive retries meanwhile, with backoff
  assert.deepEqual(sent, ['good-2', 'stale'], 'the refused secret_id went to Vault once');
  assert.equal(s.loginRefused, true);
  current = valid = 'fresh';
  await wait(200);
  assert.deepEqual(sent, ['good-2', 'stale', 'fresh']);
  assert.equal(s.loginFailingSince, undefined);
  s.stopKeepAlive();
});

test('logins asked for by many callers during a backoff do not reach Vault', async () => {
  let calls = 0;
  const client = new FakeVaultClient((path) => {
    if (!path.endsWith('/login')) return {};
    calls++;
    return calls === 1 ? { auth: { client_token: 't', lease_duration: 60, policies: [] } } : httpError(503, 'sealed');
  });
  const s = new VaultSession({ address: 'http://127.0.0.1:1' });
  (s as any).client = client;
  s.on('loginFailed', () => undefined);
  await s.login('approle', 'role', 'x');
  s.keepAlive({ initialMillis: 1000, maxMillis: 1000 });
  for (let i = 0; i < 10; i++) await s.reloginNow(1).catch(() => undefined);
  assert.equal(calls, 2, 'one failed re-login, the other nine waited for the backoff');
  s.stopKeepAlive();
});

test('a cluster session skips a node that is sealed or unreachable, stays on the node that answered, and keeps its token', async () => {
  const sealed = new FakeVaultClient(() => httpError(503, 'Vault is sealed'));
  // A refused connection (as node-vault's error carries it): the login surely did not reach that node.
  const down = new FakeVaultClient(() => Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }));
  const up = new FakeVaultClient((path) => {
    if (path.endsWith('/login')) return { auth: { client_token: 't', lease_duration: 60, policies: [] } };
    return { lease_id: 'database/creds/ro/1', lease_duration: 10, renewable: true, data: { username: 'u', password: 'p' } };
  });
  const s = new VaultSession({ address: 'https://127.0.0.1:1', addresses: ['https://127.0.0.1:1', 'https://127.0.0.1:2', 'https://127.0.0.1:3'] });
  (s as any).clients.splice(0, 3, sealed, down, up);
  (s as any).client = sealed;
  await s.login('approle', 'role', 'secret');
  const creds = await s.issue('database', 'ro');
  assert.equal(creds.username, 'u');
  assert.equal((s as any).client, up, 'the session stays on the node that answered');
  assert.equal(up.token, 't');
  assert.equal(sealed.calls.length + down.calls.length, 2, 'each unavailable node was asked once');
});

test('a cluster session does not fail over a refusal, and gives up on unavailable nodes within its bound', async () => {
  const refusing = new FakeVaultClient(() => httpError(400, 'invalid role or secret ID'));
  const other = new FakeVaultClient(() => ({ auth: { client_token: 't', lease_duration: 60, policies: [] } }));
  const s = new VaultSession({ address: 'https://127.0.0.1:1', addresses: ['https://127.0.0.1:1', 'https://127.0.0.1:2'], failoverMillis: 600 });
  (s as any).clients.splice(0, 2, refusing, other);
  (s as any).client = refusing;
  await assert.rejects(s.login('approle', 'role', 'secret'), (e: any) => e.status === 400);
  assert.equal(other.calls.length, 0, 'a 400 is an answer, not an unavailable node');

  const a = new FakeVaultClient(() => httpError(503, 'Vault is sealed'));
  const b = new FakeVaultClient(() => httpError(500, 'local node not active but active cluster node not found'));
  const t = new VaultSession({ address: 'https://127.0.0.1:1', addresses: ['https://127.0.0.1:1', 'https://127.0.0.1:2'], failoverMillis: 600 });
  (t as any).clients.splice(0, 2, a, b);
  (t as any).client = a;
  const started = Date.now();
  await assert.rejects(t.login('approle', 'role', 'secret'), (e: any) => e.status === 503 || e.status === 500);
  const took = Date.now() - started;
  assert.ok(took >= 500 && took < 3000, `gave up after ${took} ms (bound 600 ms plus one backoff)`);
  assert.ok(a.calls.length >= 2 && b.calls.length >= 2, 'several rounds with backoff');
});
