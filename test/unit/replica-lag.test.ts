/**
 * The pool of a role on a replica, time-compressed (a 300 ms window): a login refused as a
 * wrong password soon after issuance is replication lag, retried with the same credentials;
 * after the window it is a refusal as on a primary. Postgres is FakePostgres (the wire protocol
 * on 127.0.0.1: until "replayed", every login gets 28P01), Vault FakeVaultSession; only the
 * pool's public calls. The real servers are in test/e2e/7-replica.
 */
import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { DatabaseError, LeaseManager, RotatingPool } from '@pgvault/runtime';
import { FakePostgres, FakeVaultSession } from './fakes';

const WINDOW = 300;
const stops: Array<() => Promise<unknown>> = [];
after(async () => {
  for (const stop of stops.reverse()) await stop().catch(() => undefined);
});

async function setup(windowMillis: number) {
  const pg = await new FakePostgres().start();
  const fake = new FakeVaultSession(60);
  const lease = new LeaseManager({ session: fake, mount: 'database', role: 'readonly', backoff: { initialMillis: 10, maxMillis: 50 } });
  await lease.start();
  const pool = new RotatingPool({ lease, host: '127.0.0.1', port: pg.port, database: 'x', replicaLagWindowMillis: windowMillis });
  pool.on('error', () => undefined);
  stops.push(() => pg.stop(), () => lease.stop(), () => pool.close({ timeoutMillis: 200 }));
  /** Until `replayedAt`, the replica does not know the user: 28P01, as Postgres answers for a wrong password. */
  let replayedAt = Infinity;
  pg.accepts = () => Date.now() >= replayedAt;
  // Column x answers the session's user, as SELECT current_user does.
  pg.rowValue = (u) => u;
  return {
    fake,
    lease,
    pool,
    /** The user of every login attempt, refused ones included. */
    attempts: () => pg.startups.map((s) => s.user),
    replay: (afterMillis: number) => (replayedAt = Date.now() + afterMillis),
  };
}

test('a login refused within the window is retried with backoff, with the same credentials, and works once replayed', async () => {
  const { fake, lease, pool, attempts, replay } = await setup(WINDOW);
  replay(150);
  const r = await pool.query('SELECT current_user AS x');
  assert.equal(r.rows[0].x, 'v-readonly-1');
  assert.ok(pool.lagRetries >= 2, `retried ${pool.lagRetries} times`);
  assert.ok(attempts().length <= 8, `backoff, not a busy loop: ${attempts().length} attempts in 150 ms`);
  assert.deepEqual([...new Set(attempts())], ['v-readonly-1'], 'the same credentials throughout');
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
  assert.ok(attempts().length < 60, `${attempts().length} login attempts`);
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
  assert.equal(new Set(attempts()).size, attempts().length, `the same credentials never twice: ${attempts().join(', ')}`);
  assert.ok(fake.issued <= 2 && attempts().length <= 2);
  await pool.close();
  await lease.stop();
});
