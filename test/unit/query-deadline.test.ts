/**
 * A deadline stops the work, not just the waiting: the rotating pool over a fake Postgres
 * (FakePostgres, a wire-protocol stand-in on 127.0.0.1) and fake Vault (FakeVaultSession).
 * A statement still running at its deadline is cancelled; a frozen server (docker pause) answers
 * neither the statement nor the cancel, and the connection is destroyed with the outcome
 * unknown. The pg.Pool face waits at most connectionTimeoutMillis. The real servers are in
 * test/faults/1-faults.
 */
import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { DatabaseError, LeaseManager, OutcomeUnknownError, QueryDeadlineError, RotatingPool, VaultPgPool, queryOutcome } from '@pgvault/runtime';
import { FakePostgres, FakeVaultSession, vaultError } from './fakes';

const stops: Array<() => Promise<unknown>> = [];
after(async () => {
  for (const stop of stops.reverse()) await stop().catch(() => undefined);
});

async function setup(poolOpts: { cancelTimeoutMillis?: number; acquireTimeoutMillis?: number; statementTimeoutMillis?: number; max?: number } = {}) {
  const pg = await new FakePostgres().start();
  const vault = new FakeVaultSession(60);
  const lease = new LeaseManager({ session: vault, mount: 'database', role: 'readwrite', backoff: { initialMillis: 20, maxMillis: 100 } });
  lease.on('error', () => undefined);
  await lease.start();
  const pool = new RotatingPool({ lease, host: '127.0.0.1', port: pg.port, database: 'app', idleTimeoutMillis: 60_000, ...poolOpts });
  pool.on('error', () => undefined);
  stops.push(() => pg.stop(), () => lease.stop(), () => pool.close({ timeoutMillis: 200 }));
  return { pg, vault, lease, pool };
}

const settle = <T>(p: Promise<T>) => p.then((value) => ({ value, error: undefined as any }), (error) => ({ value: undefined, error }));

test('fails when the server freezes under a statement: the cancel goes unanswered, the connection is destroyed at deadline + cancel bound, outcome unknown', { timeout: 10_000 }, async () => {
  const { pg, pool } = await setup({ cancelTimeoutMillis: 300 });
  await pool.query('SELECT 1');
  pg.mode = 'freeze';
  const t0 = Date.now();
  const { error } = await settle(pool.query('INSERT INTO app.items (name) VALUES ($1)', ['x'], { deadline: t0 + 400 }));
  const took = Date.now() - t0;
  assert.ok(error instanceof OutcomeUnknownError, `an OutcomeUnknownError: ${error}`);
  assert.equal(error.code, 'DB_OUTCOME_UNKNOWN');
  assert.equal(queryOutcome(error), 'unknown');
  assert.ok(took >= 650 && took < 2000, `failed after ${took} ms (deadline 400 ms + cancel bound 300 ms)`);
  assert.equal(pg.cancelRequests.length, 1, 'a cancel request was sent at the deadline');
  await waitUntil(() => pg.closedByClient.length === 1, 1000, 'the client closes the frozen connection');
  assert.equal(pg.openBackends, 0, 'no connection is left hanging on the frozen server');
  assert.equal(pool.stats().total, 0, 'the pool holds no connection to it either');
});

test('fails when a statement waits (on a lock) past its deadline: the cancel is confirmed, it did not happen, and the pool serves on', { timeout: 10_000 }, async () => {
  const { pg, pool } = await setup({ cancelTimeoutMillis: 1000 });
  await pool.query('SELECT 1');
  pg.mode = 'wait-for-cancel';
  const t0 = Date.now();
  const { error } = await settle(pool.query('INSERT INTO app.items (name) VALUES ($1)', ['x'], { deadline: t0 + 300 }));
  const took = Date.now() - t0;
  assert.ok(error instanceof QueryDeadlineError, `a QueryDeadlineError: ${error}`);
  assert.deepEqual([error.code, error.sqlState, queryOutcome(error)], ['DB_DEADLINE', '57014', 'not_applied']);
  assert.ok(took >= 290 && took < 1500, `failed ${took} ms after the start (deadline 300 ms), on the cancel's answer`);
  assert.deepEqual(pg.cancelRequests.length, 1);
  pg.mode = 'answer';
  assert.equal((await pool.query('SELECT 1', [], { deadline: Date.now() + 1000 })).rows[0].x, '1');
});

test('a statement that finishes after the cancel was sent, within the cancel bound, is answered; its connection is not used again', { timeout: 5000 }, async () => {
  const { pg, pool } = await setup({ cancelTimeoutMillis: 1000 });
  await pool.query('SELECT 1');
  pg.answerDelayMillis = 300;
  const r = await pool.query('INSERT INTO app.items (name) VALUES ($1) RETURNING 1 AS x', ['x'], { deadline: Date.now() + 100 });
  assert.equal(r.rows[0].x, '1', 'it happened, and says so');
  assert.equal(pg.cancelRequests.length, 1);
  // A cancel reaching the backend late would cancel the next user's statement.
  await waitUntil(() => pg.closedByClient.length === 1, 1000, 'the connection to be closed');
});

test('nothing is sent when the deadline has passed before a connection came', { timeout: 5000 }, async () => {
  const { pg, pool } = await setup();
  const { error } = await settle(pool.query('INSERT INTO app.items (name) VALUES ($1)', ['x'], { deadline: Date.now() - 1 }));
  assert.equal(error?.code, 'REQUEST_DEADLINE');
  assert.equal(queryOutcome(error), 'not_applied');
  assert.deepEqual(pg.statements, []);
});

test('every connection carries statement_timeout in its startup options (no SET round trip)', { timeout: 5000 }, async () => {
  const { pg, pool } = await setup({ statementTimeoutMillis: 7000 });
  await pool.query('SELECT 1');
  assert.equal(pg.startups.at(-1)?.options, '-c statement_timeout=7000');
  assert.deepEqual(pg.statements, ['SELECT 1'], 'no SET before the statement');
  const { pg: pg2, pool: pool2 } = await setup({ statementTimeoutMillis: 0 });
  await pool2.query('SELECT 1');
  assert.equal(pg2.startups.at(-1)?.options, undefined, '0: no limit');
});

/**
 * The sequence that waited without end: credentials that worked are revoked behind the app's
 * back (their sessions terminated, 57P01), Vault is down, and the next query needs a new
 * connection, which Postgres refuses (28P01). The pool asks for new credentials, and the lease
 * manager retries the issue until Vault answers.
 */
test('fails when Postgres refuses a new connection (28P01) while Vault is down: the pg.Pool face gives up at connectionTimeoutMillis with a clear error', { timeout: 15_000 }, async () => {
  const { pg, vault, pool } = await setup();
  const face = new VaultPgPool(pool, { connectionTimeoutMillis: 600 });
  const user = pool.currentUser;
  assert.equal((await face.query('SELECT 1')).rows[0].x, '1', 'the credentials worked');
  // Revoked a while after their issue (a new issue within 1 s of the last is not asked for).
  await new Promise((r) => setTimeout(r, 1100));
  pg.accepts = (u) => u !== user;
  pg.terminate(user);
  vault.issueError = () => vaultError(undefined, 'connect ECONNREFUSED');
  await new Promise((r) => setTimeout(r, 50));
  for (const [what, call] of [['query()', () => face.query('SELECT 1')], ['connect()', () => face.connect()]] as const) {
    const t0 = Date.now();
    const outcome = await Promise.race([settle(call() as Promise<unknown>), new Promise((r) => setTimeout(() => r('still waiting after 3 s'), 3000))]);
    const took = Date.now() - t0;
    assert.notEqual(outcome, 'still waiting after 3 s', `${what} waits without end`);
    const { error } = outcome as { error: any };
    assert.equal(error?.code, 'PG_POOL_CONNECT_TIMEOUT', `${what}: ${error}`);
    assert.match(error.message, /^timeout exceeded when trying to connect: no client within 600 ms \(connectionTimeoutMillis\); .*Postgres refused the current ones/);
    assert.ok(took < 2500, `${what} failed after ${took} ms (connectionTimeoutMillis 600)`);
  }
  // Vault back: the next call gets new credentials and works.
  vault.issueError = undefined;
  await waitUntil(async () => (await settle(face.query('SELECT 1'))).value !== undefined, 5000, 'the face to serve again once Vault answers');
  assert.notEqual(pool.currentUser, user);
});

test('fails when the face is given a connectionTimeoutMillis that is not a positive number', () => {
  assert.throws(() => new VaultPgPool({} as RotatingPool, { connectionTimeoutMillis: 0 }), (e: any) => e.code === 'PG_POOL_OPTION' && /expected a number of milliseconds above 0/.test(e.message));
});

test('fails with an unknown outcome when the connection breaks under a sent statement; a session ended with a SQLSTATE is not unknown', { timeout: 5000 }, async () => {
  const { pg, pool } = await setup({ cancelTimeoutMillis: 200 });
  await pool.query('SELECT 1');
  pg.mode = 'freeze';
  const running = settle(pool.query('INSERT INTO app.items (name) VALUES ($1)', ['x']));
  await waitUntil(() => pg.statements.length === 2, 1000, 'the statement to be sent');
  pg.terminate(pool.currentUser);
  const { error } = await running;
  assert.ok(error instanceof DatabaseError, String(error));
  // The backend sent FATAL 57P01 before closing: Postgres said the statement failed.
  assert.equal(error.sqlState, '57P01');
  assert.equal(queryOutcome(error), 'not_applied');
  pg.mode = 'answer';
  await pool.query('SELECT 1');
  pg.mode = 'freeze';
  const cut = settle(pool.query('INSERT INTO app.items (name) VALUES ($1)', ['y']));
  await waitUntil(() => pg.statements.length === 4, 1000, 'the second statement to be sent');
  pg.drop(pool.currentUser);
  const lost = (await cut).error;
  assert.ok(lost instanceof OutcomeUnknownError, `the connection cut without an answer: ${lost}`);
});

test('fails when the server freezes under a statement sent without a deadline (query(), the pg.Pool face, a checked-out client): statementTimeoutMillis + cancelTimeoutMillis after it was sent, a cancel, then outcome unknown, and ten such calls do not wedge the pool', { timeout: 15_000 }, async () => {
  // statement_timeout never fires on a frozen server, and a paused container still ACKs TCP (keepalive sees nothing).
  const { pg, pool } = await setup({ statementTimeoutMillis: 300, cancelTimeoutMillis: 200, max: 10 });
  const face = new VaultPgPool(pool, { connectionTimeoutMillis: 1000 });
  await pool.query('SELECT 1');
  pg.mode = 'freeze';
  const calls = [
    ...Array.from({ length: 8 }, (_, i) => ['pool.query()', () => pool.query('INSERT INTO app.items (name) VALUES ($1)', [`r${i}`])] as const),
    ['face.query()', () => face.query('INSERT INTO app.items (name) VALUES ($1)', ['f'])] as const,
    ['face client.query()', async () => {
      const client = await face.connect();
      try {
        return await client.query('INSERT INTO app.items (name) VALUES ($1)', ['c']);
      } finally {
        client.release();
      }
    }] as const,
  ];
  const t0 = Date.now();
  const outcomes = await Promise.all(calls.map(async ([what, call]) => ({ what, ...(await settle(call() as Promise<unknown>)), took: Date.now() - t0 })));
  for (const { what, error, took } of outcomes) {
    assert.ok(error instanceof OutcomeUnknownError, `${what}: an OutcomeUnknownError, got ${error}`);
    assert.equal(queryOutcome(error), 'unknown');
    // 300 + 200 to the cancel, 200 more for its answer.
    assert.ok(took >= 650 && took < 3000, `${what} failed after ${took} ms (bound 300 + 200 + 200 ms)`);
  }
  assert.equal(pg.cancelRequests.length, 10, 'a cancel request for each statement');
  await waitUntil(() => pg.openBackends === 0, 2000, 'every frozen connection to be closed by the client');
  assert.equal(pool.stats().total, 0, 'the pool holds none of them');
  pg.mode = 'answer';
  assert.equal((await face.query('SELECT 1')).rows[0].x, '1', 'the pool serves again once the server does');
});

test('fails when a statement sent without a deadline waits past the bound on a server that answers the cancel: DB_DEADLINE (not applied), on the face and a checked-out client, and the pool serves on', { timeout: 10_000 }, async () => {
  const { pg, pool } = await setup({ statementTimeoutMillis: 200, cancelTimeoutMillis: 300 });
  const face = new VaultPgPool(pool, { connectionTimeoutMillis: 1000 });
  await pool.query('SELECT 1');
  pg.mode = 'wait-for-cancel';
  const t0 = Date.now();
  const viaFace = settle(face.query('INSERT INTO app.items (name) VALUES ($1)', ['f']));
  const viaClient = settle((async () => {
    const client = await face.connect();
    try {
      return await client.query('INSERT INTO app.items (name) VALUES ($1)', ['c']);
    } finally {
      client.release();
    }
  })());
  for (const [what, outcome] of [['face.query()', await viaFace], ['client.query()', await viaClient]] as const) {
    const took = Date.now() - t0;
    assert.ok(outcome.error instanceof QueryDeadlineError, `${what}: a QueryDeadlineError, got ${outcome.error}`);
    assert.equal(queryOutcome(outcome.error), 'not_applied');
    assert.ok(took >= 480 && took < 2000, `${what} failed after ${took} ms (bound 200 + 300 ms, then the cancel's answer)`);
  }
  assert.equal(pg.cancelRequests.length, 2, 'one cancel request per statement');
  pg.mode = 'answer';
  assert.equal((await face.query('SELECT 1')).rows[0].x, '1');
  await waitUntil(() => pg.closedByClient.length === 2, 1000, 'both cancelled connections to be closed, not reused');
});

test('a statement queued behind a slow one on the same client is bounded from the slow one\'s answer, not cancelled for its time', { timeout: 10_000 }, async () => {
  const { pg, pool } = await setup({ statementTimeoutMillis: 200, cancelTimeoutMillis: 200 });
  const face = new VaultPgPool(pool, { connectionTimeoutMillis: 1000 });
  await pool.query('SELECT 1');
  // Each statement takes 300 ms: the second answers 600 ms after both were called, past a
  // 400 ms bound counted from its call, within one counted from the first's answer.
  pg.answerDelayMillis = 300;
  const client = await face.connect();
  try {
    const both = await Promise.all([client.query('SELECT 1'), client.query('SELECT 2')]);
    assert.deepEqual(both.map((r) => r.rows.length), [1, 1]);
  } finally {
    client.release();
  }
  assert.equal(pg.cancelRequests.length, 0, 'no cancel request was sent');
});

test('fails when a parameter cannot be serialized, on the hot path of the face and of pool.query(): one rejection with pg\'s error, no uncaught exception, and the pool serves on', { timeout: 10_000 }, async () => {
  const { pool } = await setup();
  const face = new VaultPgPool(pool, { connectionTimeoutMillis: 1000 });
  const uncaught: unknown[] = [];
  const onUncaught = (e: unknown) => uncaught.push(e);
  process.on('uncaughtException', onUncaught);
  try {
    // Connected, with an idle client: the next calls take the callback path.
    await face.query('SELECT 1');
    for (const [what, call] of [['face.query()', () => face.query('SELECT $1::jsonb', [{ id: 1n }])], ['pool.query()', () => pool.query('SELECT $1::jsonb', [{ id: 1n }])]] as const) {
      const { error } = await settle(call() as Promise<unknown>);
      assert.match(String(error?.message), /BigInt/, `${what}: pg's serialization error, got ${error}`);
      await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(uncaught, [], `${what}: nothing thrown outside the call`);
      assert.equal((await face.query('SELECT 1')).rows[0].x, '1', `${what}: the pool serves on`);
    }
  } finally {
    process.off('uncaughtException', onUncaught);
  }
});

test('query(text, values, undefined) on the face answers, as pg.Pool\'s does', { timeout: 5000 }, async () => {
  const { pool } = await setup();
  const face = new VaultPgPool(pool, { connectionTimeoutMillis: 1000 });
  await face.query('SELECT 1');
  const r = await (face.query as (...a: unknown[]) => Promise<any>)('SELECT 1', [], undefined);
  assert.equal(r.rows[0].x, '1');
  await face.end();
});

test('fails when a session is ended (57P01) in the same read as its login completes: the query fails, the process does not', { timeout: 5000 }, async () => {
  const { pg, pool } = await setup();
  pg.terminatedAtLogin = () => true;
  const { error } = await settle(pool.query('SELECT 1'));
  assert.ok(error instanceof DatabaseError, `a DatabaseError, not an uncaught 'error' event: ${error}`);
  pg.terminatedAtLogin = () => false;
  assert.equal((await pool.query('SELECT 1')).rows[0].x, '1', 'the next query gets a good connection');
});

async function waitUntil(check: () => boolean | Promise<boolean>, millis: number, what: string): Promise<void> {
  const end = Date.now() + millis;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out after ${millis} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
