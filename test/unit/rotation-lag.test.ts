/**
 * A rotation of a role on a replica while replay lags more than the lag window (issue 21, item 1):
 * the old credentials keep serving until the new ones have logged in once, and nothing is
 * issued again meanwhile. Postgres is a stub of the pool's acquire() (as in replica-lag.test);
 * Vault is FakeVaultSession. The real servers are in test/e2e/7-replica.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { LeaseManager, RotatingPool } from '@pgvault/runtime';
import { FakeVaultSession } from './fakes';

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));
const WINDOW = 300;

async function setup(windowMillis: number) {
  const fake = new FakeVaultSession(60);
  const lease = new LeaseManager({ session: fake, mount: 'database', role: 'readonly', backoff: { initialMillis: 10, maxMillis: 50 } });
  lease.on('error', () => undefined);
  await lease.start();
  const pool = new RotatingPool({ lease, host: '127.0.0.1', port: 1, database: 'x', replicaLagWindowMillis: windowMillis });
  pool.on('error', () => undefined);
  /** Users the replica knows: from when, and until when (revoked). */
  const replayedAt = new Map<string, number>([['v-readonly-1', 0]]);
  const droppedAt = new Map<string, number>();
  const owners = new WeakMap<object, any>();
  (pool as any).acquire = async (gen: any) => {
    const u = gen.creds.username;
    if (Date.now() < (replayedAt.get(u) ?? Infinity) || Date.now() >= (droppedAt.get(u) ?? Infinity)) {
      throw Object.assign(new Error(`password authentication failed for user "${u}"`), { code: '28P01' });
    }
    gen.inFlight++;
    const client = { query: async () => ({ rows: [{ u }] }), release: () => undefined };
    owners.set(client, gen);
    return client;
  };
  (pool as any).generationOf = (c: object) => owners.get(c);
  assert.equal((await pool.query('SELECT current_user AS u')).rows[0].u, 'v-readonly-1');
  return { fake, lease, pool, replayedAt, droppedAt };
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
    await pool.query('SELECT current_user AS u', [], { deadline: Date.now() + 2000 }).then(
      (r) => users.add(r.rows[0].u),
      (e) => failures.push(String(e?.message ?? e)),
    );
    await wait(20);
  }
  users.add((await pool.query('SELECT current_user AS u')).rows[0].u);
  assert.deepEqual(failures, [], 'no request failed while the replica lagged');
  assert.equal(fake.issued, 2, `at most one extra credential (issued ${fake.issued})`);
  assert.equal(pool.currentUser, next.username, 'the new credentials serve once the replica has them');
  assert.ok(users.has('v-readonly-1') && users.has(next.username), `served by ${[...users]}`);
  await wait(100);
  assert.ok(fake.revoked.includes('database/creds/readonly/1'), 'the old lease was revoked once the new one logged in');
  await pool.close();
  await lease.stop();
});

test('the old credentials refused while the new ones are probed: the new ones take over, nothing more is issued', { timeout: 20_000 }, async () => {
  const { fake, lease, pool, replayedAt, droppedAt } = await setup(2000);
  const next = await lease.rotateNow('max TTL reached', { force: true });
  replayedAt.set(next.username, Date.now() + 600);
  droppedAt.set('v-readonly-1', Date.now() + 300);
  await wait(400);
  const r = await pool.query('SELECT current_user AS u', [], { deadline: Date.now() + 3000 });
  assert.equal(r.rows[0].u, next.username);
  assert.equal(fake.issued, 2, 'no third credential');
  await pool.close();
  await lease.stop();
});
