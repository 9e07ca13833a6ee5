/**
 * What the REST API answers when the database fails, stalls or freezes, and its Idempotency-Key
 * header, without a real database: requests are injected into the server (no socket).
 * The frozen and locked cases run the real rotating pool over FakePostgres (the wire protocol on
 * 127.0.0.1) with FakeVaultSession; the SQLSTATE and key cases use a small fake runtime whose pool
 * answers as told. The real Postgres is in test/faults/1-faults.
 */
import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { DatabaseError, LeaseManager, RotatingPool } from '@pgvault/runtime';
import { ApiServer } from '../../api/server';
import { FakePostgres, FakeVaultSession } from './fakes';

const closers: Array<() => Promise<unknown>> = [];
after(async () => {
  for (const close of closers.reverse()) await close().catch(() => undefined);
});

/** A stand-in for CredentialRuntime whose pool runs `query`. */
function fakeRuntime(query: (sql: string, args: unknown[]) => Promise<any>): any {
  return { leases: new Map(), pools: new Map(), vaultLogin: 'ok', session: { on() {} }, on() {}, pool: () => ({ query }) };
}

function server(runtime: any, requestTimeoutMillis?: number): ApiServer {
  const api = new ApiServer({ runtime, requestTimeoutMillis });
  closers.push(() => api.app.close());
  return api;
}

const post = (api: ApiServer, name: string, headers: Record<string, string> = {}) =>
  api.app.inject({ method: 'POST', url: '/items', headers: { 'content-type': 'application/json', ...headers }, payload: JSON.stringify({ name }) });

test('database errors answer by SQLSTATE class: a read 08, 57P0x, 53 → 503; 22, 23 → 400; anything else → 500', async () => {
  let state = '';
  const api = server(fakeRuntime(async () => {
    throw new DatabaseError('DB_QUERY', `query failed: the failure of SQLSTATE ${state}`, state);
  }));
  const cases: Array<[string, number, RegExp]> = [
    ['08006', 503, /^the database is unavailable; try again$/],
    ['57P01', 503, /^the database is unavailable; /],
    ['57P03', 503, /^the database is unavailable; /],
    ['53300', 503, /^the database is unavailable; /],
    ['22003', 400, /^the database refused the value \(SQLSTATE 22003\): the failure of SQLSTATE 22003; expected/],
    ['23514', 400, /^the database refused the value \(SQLSTATE 23514\)/],
    ['42501', 503, /^the database refused this request's credentials \(SQLSTATE 42501: they were being revoked or rotated\); try again$/],
    ['42P01', 500, /^internal error \(SQLSTATE 42P01\)$/],
    ['XX000', 500, /^internal error \(SQLSTATE XX000\)$/],
  ];
  for (const [sqlState, status, message] of cases) {
    state = sqlState;
    const res = await api.app.inject({ url: '/items' });
    assert.equal(res.statusCode, status, sqlState);
    assert.deepEqual(Object.keys(res.json()), ['error']);
    assert.match(res.json().error, message, sqlState);
  }
});

test('a write whose statement was sent answers "nothing was written" only when that is known (57014, class 40 → 503; 22, 23 → 400); any other failure may follow its COMMIT → 504 "outcome": "unknown"', async () => {
  let failure: () => Error = () => new Error('unset');
  const api = server(fakeRuntime(async () => {
    throw failure();
  }));
  const sent = (state: string | undefined, message = `query failed: the failure of SQLSTATE ${state}`) => () => new DatabaseError('DB_QUERY', message, state);
  const known: Array<[string, () => Error, number, RegExp]> = [
    ['57014', sent('57014'), 503, /^the database is unavailable; nothing was written; try again$/],
    ['40001', sent('40001'), 503, /nothing was written; try again$/],
    ['40P01', sent('40P01'), 503, /nothing was written; try again$/],
    ['22003', sent('22003'), 400, /^the database refused the value \(SQLSTATE 22003\)/],
    ['23514', sent('23514'), 400, /^the database refused the value \(SQLSTATE 23514\)/],
    // Not sent: the connection could not be had, so nothing was written.
    ['DB_CONNECT 08006', () => new DatabaseError('DB_CONNECT', 'connect failed: refused', '08006'), 503, /nothing was written; try again$/],
    ['DB_CONNECT ECONNREFUSED', () => new DatabaseError('DB_CONNECT', 'connect failed: connect ECONNREFUSED'), 503, /nothing was written; try again$/],
  ];
  for (const [what, make, status, message] of known) {
    failure = make;
    const res = await post(api, 'x');
    assert.equal(res.statusCode, status, what);
    assert.deepEqual(Object.keys(res.json()), ['error'], what);
    assert.match(res.json().error, message, what);
  }
  const unknown: Array<[string, () => Error, RegExp]> = [
    ['57P01 (a session terminated, possibly after COMMIT)', sent('57P01'), /SQLSTATE 57P01/],
    ['57P02', sent('57P02'), /SQLSTATE 57P02/],
    ['08006', sent('08006'), /SQLSTATE 08006/],
    ['53300', sent('53300'), /SQLSTATE 53300/],
    ['42501', sent('42501'), /SQLSTATE 42501/],
    ['XX000', sent('XX000'), /SQLSTATE XX000/],
    ['EHOSTUNREACH without a SQLSTATE', sent(undefined, 'query failed: read EHOSTUNREACH'), /no SQLSTATE: the connection failed/],
  ];
  for (const [what, make, cause] of unknown) {
    failure = make;
    const res = await post(api, 'x');
    assert.equal(res.statusCode, 504, what);
    assert.deepEqual(Object.keys(res.json()), ['error', 'outcome'], what);
    assert.equal(res.json().outcome, 'unknown', what);
    assert.match(res.json().error, cause, what);
    assert.match(res.json().error, /the item may or may not have been created: retry with the same Idempotency-Key/, what);
    assert.doesNotMatch(res.json().error, /nothing was written|try again$/, what);
  }
});

test('fails with 400 when the Idempotency-Key header is not 1 to 255 characters of the accepted set, saying what is wrong', async () => {
  const api = server(fakeRuntime(async () => ({ rows: [{ response: { id: 1, name: 'x', createdAt: '1970-01-01T00:00:00.000Z' } }] })));
  const cases: Array<[string, RegExp]> = [
    ['', /^header Idempotency-Key is empty; expected 1 to 255 characters from A-Z, a-z, 0-9/],
    ['k'.repeat(300), /^header Idempotency-Key is 300 characters long, more than 257; expected 1 to 255 characters/],
    ['k'.repeat(256), /^header Idempotency-Key is "k{39}\.\.\. \(256 characters\): it is 256 characters long, more than 255; expected/],
    ['two words', /^header Idempotency-Key is "two words": it holds " " \(U\+0020\), a character it may not hold; expected 1 to 255 characters/],
    ['a;b', /it holds ";" \(U\+003B\)/],
    ['"unclosed', /it holds "\\"" \(U\+0022\)/],
  ];
  for (const [key, message] of cases) {
    const res = await post(api, 'x', { 'idempotency-key': key });
    assert.equal(res.statusCode, 400, key);
    assert.match(res.json().error, message, key);
  }
  for (const key of ['8e03978e-40d5-43e8-bc93-6894a57f9324', '"8e03978e-40d5-43e8-bc93-6894a57f9324"', 'a', 'A.b_c~d:e+f/g=h-i']) {
    assert.equal((await post(api, 'x', { 'idempotency-key': key })).statusCode, 201, key);
  }
});

/** The keys table as Postgres keeps it, each row with its age: the keyed insert fails whole (23505) on a key it holds. */
function keysTable() {
  const keys = new Map<string, { request_sha256: string; response: unknown; ageMillis: number }>();
  let inserts = 0;
  const insert = ([name, key, digest]: string[]) => {
    if (keys.has(key)) throw new DatabaseError('DB_QUERY', 'query failed: duplicate key value violates unique constraint "idempotency_keys_pkey"', '23505');
    inserts++;
    const response = { id: inserts, name, createdAt: '2026-12-02T00:00:00.000Z' };
    keys.set(key, { request_sha256: digest, response, ageMillis: 0 });
    return { rows: [{ response }] };
  };
  return { keys, insert, inserted: () => inserts };
}

test('a retry with the same Idempotency-Key answers the first answer and writes nothing; another body with it answers 409', async () => {
  const { keys, insert, inserted } = keysTable();
  const api = server(fakeRuntime(async (sql, args) => {
    if (sql.startsWith('WITH item AS')) return insert(args as string[]);
    if (sql.startsWith('SELECT request_sha256')) {
      const row = keys.get(args[0] as string);
      return { rowCount: row ? 1 : 0, rows: row ? [{ request_sha256: row.request_sha256, response: row.response, expired: false }] : [] };
    }
    throw new Error(`unexpected statement ${sql}`);
  }));
  const first = await post(api, 'once', { 'idempotency-key': 'k-1' });
  const again = await post(api, 'once', { 'idempotency-key': '"k-1"' });
  assert.deepEqual([first.statusCode, again.statusCode], [201, 201]);
  assert.equal(again.body, first.body, 'the first answer, byte for byte');
  assert.equal(first.headers['idempotent-replayed'], undefined);
  assert.equal(again.headers['idempotent-replayed'], 'true');
  assert.equal(inserted(), 1, 'written once');
  const other = await post(api, 'another', { 'idempotency-key': 'k-1' });
  assert.equal(other.statusCode, 409);
  assert.match(other.json().error, /^header Idempotency-Key "k-1" was used within 24 h for a request with another body; expected a new key/);
  assert.equal(inserted(), 1);
});

test('an Idempotency-Key older than 24 h no longer replays: the same request writes again; the clean-up deletes only keys past 24 h', async () => {
  // The keys table with each row's age; the age limit is read from the statement, as Postgres would apply it.
  const HOUR = 3_600_000;
  const { keys, insert, inserted } = keysTable();
  const limitMillis = (sql: string) => {
    const m = sql.match(/created_at < now\(\) - interval '(\d+) hours'/);
    assert.ok(m, `the statement bounds the age: ${sql}`);
    return Number(m[1]) * HOUR;
  };
  const api = server(fakeRuntime(async (sql, args) => {
    if (sql.startsWith('WITH item AS')) return insert(args as string[]);
    if (sql.startsWith('SELECT request_sha256')) {
      const row = keys.get(args[0] as string);
      return { rowCount: row ? 1 : 0, rows: row ? [{ request_sha256: row.request_sha256, response: row.response, expired: row.ageMillis > limitMillis(sql) }] : [] };
    }
    if (sql.startsWith('DELETE FROM app.idempotency_keys WHERE key = $1')) {
      const row = keys.get(args[0] as string);
      const gone = row !== undefined && row.ageMillis > limitMillis(sql);
      if (gone) keys.delete(args[0] as string);
      return { rowCount: gone ? 1 : 0, rows: [] };
    }
    if (sql.startsWith('DELETE FROM app.idempotency_keys WHERE key IN')) {
      const stale = [...keys].filter(([, row]) => row.ageMillis > limitMillis(sql)).map(([key]) => key);
      for (const key of stale) keys.delete(key);
      return { rowCount: stale.length, rows: [] };
    }
    throw new Error(`unexpected statement ${sql}`);
  }));
  const send = () => post(api, 'once', { 'idempotency-key': 'k-day' });
  const first = await send();
  keys.get('k-day')!.ageMillis = 23 * HOUR;
  const within = await send();
  assert.equal(within.headers['idempotent-replayed'], 'true', 'a key 23 h old still replays');
  assert.equal(within.body, first.body);
  keys.get('k-day')!.ageMillis = 25 * HOUR;
  const after24h = await send();
  assert.equal(after24h.statusCode, 201, after24h.body);
  assert.equal(after24h.headers['idempotent-replayed'], undefined, 'a key 25 h old does not replay');
  assert.deepEqual([first.json().id, after24h.json().id], [1, 2], 'the same request was written again');
  assert.equal(inserted(), 2);
  const replayed = await send();
  assert.equal(replayed.body, after24h.body, 'the key now answers the new write');

  keys.set('k-23h', { request_sha256: 'x', response: {}, ageMillis: 23 * HOUR });
  keys.set('k-25h', { request_sha256: 'x', response: {}, ageMillis: 25 * HOUR });
  assert.equal(await api.removeExpiredIdempotencyKeys(), 1);
  assert.deepEqual([...keys.keys()].sort(), ['k-23h', 'k-day']);
});

async function realPool() {
  const pg = await new FakePostgres().start();
  const lease = new LeaseManager({ session: new FakeVaultSession(60), mount: 'database', role: 'readwrite' });
  await lease.start();
  const pool = new RotatingPool({ lease, host: '127.0.0.1', port: pg.port, database: 'app', cancelTimeoutMillis: 300 });
  pool.on('error', () => undefined);
  closers.push(() => pg.stop(), () => lease.stop(), () => pool.close({ timeoutMillis: 200 }));
  const runtime = { leases: new Map(), pools: new Map(), vaultLogin: 'ok', session: { on() {} }, on() {}, pool: () => pool };
  return { pg, pool, runtime };
}

test('fails with 504 "outcome": "unknown" when a write gets no answer from a frozen database, within the deadline plus the cancel bound; a read answers 503', { timeout: 10_000 }, async () => {
  const { pg, pool, runtime } = await realPool();
  const api = server(runtime, 400);
  await pool.query('SELECT 1');
  pg.mode = 'freeze';
  const t0 = Date.now();
  const write = await post(api, 'maybe');
  const took = Date.now() - t0;
  assert.equal(write.statusCode, 504, write.body);
  assert.deepEqual(Object.keys(write.json()), ['error', 'outcome']);
  assert.equal(write.json().outcome, 'unknown');
  assert.match(write.json().error, /may or may not have been created: retry with the same Idempotency-Key/);
  assert.doesNotMatch(write.json().error, /; try again$/);
  assert.ok(took < 400 + 300 + 1000, `answered after ${took} ms (deadline 400 ms, cancel bound 300 ms)`);
  assert.ok(pg.cancelRequests.length >= 1, 'a cancel request was sent');
  const r0 = Date.now();
  const read = await api.app.inject({ url: '/items' });
  assert.equal(read.statusCode, 503);
  assert.equal(read.json().outcome, undefined);
  assert.ok(Date.now() - r0 < 400 + 300, `a read answers at its deadline: ${Date.now() - r0} ms`);
});

test('fails with 503 "nothing was written" when a write waits on a lock past the deadline and Postgres confirms its cancellation', { timeout: 10_000 }, async () => {
  const { pg, pool, runtime } = await realPool();
  const api = server(runtime, 400);
  await pool.query('SELECT 1');
  pg.mode = 'wait-for-cancel';
  const res = await post(api, 'locked');
  assert.equal(res.statusCode, 503, res.body);
  assert.deepEqual(Object.keys(res.json()), ['error']);
  assert.match(res.json().error, /nothing was written; try again$/);
});
