/**
 * The pool of a role on a replica, time-compressed (a 300 ms window): a login refused as a
 * wrong password soon after issuance is replication lag, retried with the same credentials;
 * after the window it is a refusal as on a primary. Postgres is a stub of the pool's acquire()
 * (FakeVaultSession for Vault); the real servers are in test/e2e/7-replica.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { DatabaseError, LeaseManager, RotatingPool } from '@pgvault/runtime';
import { FakeVaultSession } from './fakes';

const WINDOW = 300;

async function setup(windowMillis: number) {
  const fake = new FakeVaultSession(60);
  const lease = new LeaseManager({ session: fake, mount: 'database', role: 'readonly', backoff: { initialMillis: 10, maxMillis: 50 } });
  await lease.start();
  const pool = new RotatingPool({ lease, host: '127.0.0.1', port: 1, database: 'x', replicaLagWindowMillis: windowMillis });
  pool.on('error', () => undefined);
  const attempts: string[] = [];
  /** Until `replayedAt`, the replica does not know the user: 28P01, as Postgres answers for a wrong password. */
  let replayedAt = Infinity;
  (pool as any).acquire = async (gen: any) => {
    attempts.push(gen.creds.username);
    if (Date.now() < replayedAt) throw Object.assign(new Error(`password authentication failed for user "${gen.creds.username}"`), { code: '28P01' });
    gen.inFlight++;
    return { query: async () => ({ rows: [{ u: gen.creds.username }] }), release: () => undefined };
  };
  (pool as any).generationOf = () => (pool as any).active;
  return { fake, lease, pool, attempts, replay: (afterMillis: number) => (replayedAt = Date.now() + afterMillis) };
}

test('a login refused within the window is retried with backoff, with the same credentials, and works once replayed', async () => {
  const { fake, lease, pool, attempts, replay } = await setup(WINDOW);
  replay(150);
  const r = await pool.query('SELECT current_user AS u');
  assert.equal(r.rows[0].u, 'v-readonly-1');
  assert.ok(pool.lagRetries >= 2, `retried ${pool.lagRetries} times`);
  assert.ok(attempts.length <= 8, `backoff, not a busy loop: ${attempts.length} attempts in 150 ms`);
  assert.deepEqual([...new Set(attempts)], ['v-readonly-1'], 'the same credentials throughout');
  assert.equal(fake.issued, 1, 'no new credentials');
  assert.equal(pool.failures.get('replica_lag_retry'), pool.lagRetries);
  await pool.close();
  await lease.stop();
});

test('fails when the refusal lasts past the window: a DatabaseError as on a primary, and new credentials only after a pause', async () => {
  const { fake, lease, pool, attempts } = await setup(WINDOW);
  const t0 = Date.now();
  const e = await pool.query('SELECT 1').catch((x) => x);
  const took = Date.now() - t0;
  assert.ok(e instanceof DatabaseError && e.code === 'DB_CONNECT' && e.sqlState === '28P01', String(e));
  assert.ok(took >= WINDOW - 50 && took < WINDOW + 500, `gave up after ${took} ms (window ${WINDOW} ms)`);
  assert.ok(pool.lagRetries >= 2);
  // Ten more requests while the replica stays behind: new credentials come after a growing pause
  // (each with a window of its own), not one per request.
  for (let i = 0; i < 10; i++) await pool.query('SELECT 1').catch(() => undefined);
  await new Promise((r) => setTimeout(r, 50));
  assert.ok(fake.issued <= 2, `issued ${fake.issued} credentials for 11 refused requests`);
  assert.ok(attempts.length < 60, `${attempts.length} login attempts`);
  await pool.close();
  await lease.stop();
});

test('fails at the request deadline when it comes before the window ends, saying the replica has not replayed the user', async () => {
  const { pool, lease } = await setup(10_000);
  const t0 = Date.now();
  const e = await pool.query('SELECT 1', [], { deadline: Date.now() + 250 }).catch((x) => x);
  assert.ok(Date.now() - t0 < 1000, 'within the deadline, not the window');
  assert.ok(e instanceof DatabaseError, String(e));
  assert.match(e.message, /replica has not replayed the creation of v-readonly-1/);
  await pool.close();
  await lease.stop();
});

test('a primary (no window) does not retry a refused login with the same credentials', async () => {
  const { fake, pool, lease, attempts } = await setup(0);
  const e = await pool.query('SELECT 1').catch((x) => x);
  assert.ok(e instanceof DatabaseError);
  assert.equal(pool.lagRetries, 0);
  // At most one new issue (the credentials may have been revoked before their first login), tried once.
  assert.equal(new Set(attempts).size, attempts.length, `the same credentials never twice: ${attempts.join(', ')}`);
  assert.ok(fake.issued <= 2 && attempts.length <= 2);
  await pool.close();
  await lease.stop();
});
