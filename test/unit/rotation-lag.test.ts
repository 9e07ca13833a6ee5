/**
 * A rotation of a role on a replica while replay lags more than the lag window (issue 21, item 1):
 * the old credentials keep serving until the new ones have logged in once, and nothing is
 * issued again meanwhile. Everything goes through the pool's public calls: Postgres is
 * FakePostgres (the wire protocol on 127.0.0.1; a login of a user the "replica" has not replayed
 * yet, or has dropped, gets 28P01), Vault is FakeVaultSession. The real servers are in
 * test/e2e/7-replica.
 */
import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { LeaseManager, RotatingPool } from '@pgvault/runtime';
import { FakePostgres, FakeVaultSession } from './fakes';

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));
const WINDOW = 300;
const stops: Array<() => Promise<unknown>> = [];
after(async () => {
  for (const stop of stops.reverse()) await stop().catch(() => undefined);
});

async function setup(windowMillis: number) {
  const pg = await new FakePostgres().start();
  const fake = new FakeVaultSession(60);
  const lease = new LeaseManager({ session: fake, mount: 'database', role: 'readonly', backoff: { initialMillis: 10, maxMillis: 50 } });
  lease.on('error', () => undefined);
  await lease.start();
  const pool = new RotatingPool({ lease, host: '127.0.0.1', port: pg.port, database: 'x', idleTimeoutMillis: 60_000, replicaLagWindowMillis: windowMillis });
  pool.on('error', () => undefined);
  stops.push(() => pg.stop(), () => lease.stop(), () => pool.close({ timeoutMillis: 200 }));
  /** Users the replica knows: from when, and until when (revoked). */
  const replayedAt = new Map<string, number>([['v-readonly-1', 0]]);
  const droppedAt = new Map<string, number>();
  pg.accepts = (u) => Date.now() >= (replayedAt.get(u) ?? Infinity) && Date.now() < (droppedAt.get(u) ?? Infinity);
  // Column x answers the session's user, as SELECT current_user does.
  pg.rowValue = (u) => u;
  assert.equal((await pool.query('SELECT current_user AS x')).rows[0].x, 'v-readonly-1');
  return { pg, fake, lease, pool, replayedAt, droppedAt };
}

test('a rotation while the replica lags past the window: no request fails, at most one extra credential, the old one retired once the new one logged in', { timeout: 20_000 }, async () => {
  const { fake, lease, pool, replayedAt } = await setup(WINDOW);

  // The role rotates (max TTL reached); the replica replays the new user only after 4 windows.
  const next = await lease.rotateNow('max TTL reached', { force: true });
  const lagMillis = 4 * WINDOW;
  replayedAt.set(next.username, Date.now() + lagMillis);
  const failures: string[] = [];
  const started = Date.now();
  const users = new Set<string>();
  // Requests go on until the new credentials have taken over (the probe backs off up to 1 s), bounded.
  const until = Date.now() + lagMillis + 3000;
  while (Date.now() < until && !(Date.now() > started + lagMillis && pool.currentUser === next.username)) {
    await pool.query('SELECT current_user AS x', [], { deadline: Date.now() + 2000 }).then(
      (r) => users.add(r.rows[0].x),
      (e) => failures.push(String(e?.message ?? e)),
    );
    await wait(20);
  }
  users.add((await pool.query('SELECT current_user AS x')).rows[0].x);
  assert.deepEqual(failures, [], 'no request failed while the replica lagged');
  assert.equal(fake.issued, 2, `at most one extra credential (issued ${fake.issued})`);
  assert.ok(pool.pendingProbes >= 1, 'the replica refused the new user at first (the lag was real)');
  assert.equal(pool.currentUser, next.username, 'the new credentials serve once the replica has them');
  assert.ok(users.has('v-readonly-1') && users.has(next.username), `served by ${[...users]}`);
  await wait(100);
  assert.ok(fake.revoked.includes('database/creds/readonly/1'), 'the old lease was revoked once the new one logged in');
  await pool.close();
  await lease.stop();
});

test('the old credentials refused while the new ones are probed: the new ones take over, nothing more is issued', { timeout: 20_000 }, async () => {
  const { pg, fake, lease, pool, replayedAt, droppedAt } = await setup(3000);
  const next = await lease.rotateNow('max TTL reached', { force: true });
  // Dropped more than 1 s after the rotation: the lease manager would issue again if asked.
  replayedAt.set(next.username, Date.now() + 1800);
  droppedAt.set('v-readonly-1', Date.now() + 1200);
  await wait(1200);
  // Dropped with its sessions ended (as a revocation's pg_terminate_backend): the next request logs in anew.
  pg.terminate('v-readonly-1');
  await wait(100);
  const r = await pool.query('SELECT current_user AS x', [], { deadline: Date.now() + 3000 });
  assert.equal(r.rows[0].x, next.username);
  assert.equal(pool.failures.get('auth_refused'), 1, 'the old credentials were refused once (a new login after their drop)');
  assert.equal(fake.issued, 2, 'no third credential');
  await pool.close();
  await lease.stop();
});
