/**
 * The pg.Pool face's own logic over a fake rotating pool: argument forms, release, end(),
 * the 'error' event. The real thing (Postgres, Vault, Kysely, Drizzle) is test/e2e/9-library.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { Pool, PoolClient } from 'pg';
import { RotatingPool, StatementHooks, VaultPgPool } from '@pgvault/runtime';

/** A fake pg client: records its queries and releases; `fail` makes the next query reject. */
class FakeClient {
  queries: unknown[][] = [];
  releases: unknown[] = [];
  fail?: Error;
  async query(...args: unknown[]) {
    this.queries.push(args);
    if (this.fail) throw this.fail;
    return { rows: [{ ok: 1 }], rowCount: 1 };
  }
  release = (e?: unknown) => {
    this.releases.push(e);
  };
}

/** A fake of what the face uses of RotatingPool: checkout(), statement(), stats() and the 'idleError' event. */
class FakeRotatingPool extends EventEmitter {
  clients: FakeClient[] = [];
  deadlines: Array<number | undefined> = [];
  next = () => new FakeClient();
  checkoutError?: Error;
  /** RotatingPool#checkout: `hooks.settled` once, at the release or when no client came; errors through `hooks.connectError`. */
  async checkout(opts: { deadline?: number } = {}, hooks?: StatementHooks): Promise<PoolClient> {
    this.deadlines.push(opts.deadline);
    if (this.checkoutError) {
      hooks?.settled();
      throw hooks ? hooks.connectError(this.checkoutError) : this.checkoutError;
    }
    const c = this.next();
    this.clients.push(c);
    if (hooks) {
      const record = c.release;
      c.release = (e?: unknown) => {
        record(e);
        hooks.settled();
      };
    }
    return c as unknown as PoolClient;
  }
  /** RotatingPool#statement as the face uses it: a client within the deadline (its error mapped by `hooks.connectError`), one query, release, then `hooks.settled`. */
  async statement(args: unknown[], deadline: number, hooks: StatementHooks): Promise<unknown> {
    try {
      let c: FakeClient;
      try {
        c = (await this.checkout({ deadline })) as unknown as FakeClient;
      } catch (e) {
        throw hooks.connectError(e);
      }
      try {
        const r = await c.query(...args);
        c.release();
        return r;
      } catch (e) {
        c.release(e);
        throw hooks.queryError(e);
      }
    } finally {
      hooks.settled();
    }
  }
  stats() {
    return { total: 3, idle: 2, waiting: 1, retiring: 0 };
  }
}

function face(opts: { connectionTimeoutMillis?: number } = {}): { pool: VaultPgPool; source: FakeRotatingPool } {
  const source = new FakeRotatingPool();
  return { pool: new VaultPgPool(source as unknown as RotatingPool, opts), source };
}

test('connect() and query() wait for a client at most connectionTimeoutMillis (default 10 s), as pg.Pool; the deadline error says so', async () => {
  const { pool, source } = face();
  const t0 = Date.now();
  await pool.query('SELECT 1');
  (await pool.connect()).release();
  for (const d of source.deadlines) assert.ok(d !== undefined && d >= t0 + 10_000 && d <= Date.now() + 10_000, `deadline ${d} is 10 s after the call`);
  assert.equal(pool.options.connectionTimeoutMillis, 10_000);
  const short = face({ connectionTimeoutMillis: 250 });
  short.source.checkoutError = Object.assign(new Error('gave up waiting for new credentials: the deadline passed'), { code: 'REQUEST_DEADLINE' });
  for (const call of [() => short.pool.query('SELECT 1'), () => short.pool.connect()]) {
    await assert.rejects(call(), (e: any) => e.code === 'PG_POOL_CONNECT_TIMEOUT' && /^timeout exceeded when trying to connect: no client within 250 ms \(connectionTimeoutMillis\); gave up waiting for new credentials/.test(e.message));
  }
});

test('query() passes every pg.Pool argument form to one client and gives it back', async () => {
  const { pool, source } = face();
  const config = { text: 'SELECT $1', values: [1], rowMode: 'array' };
  await pool.query('SELECT 1');
  await pool.query('SELECT $1', [1]);
  await pool.query(config);
  await pool.query(config, [2]);
  await new Promise<void>((resolve, reject) => pool.query('SELECT $1', [3], (e?: Error, r?: any) => (e ? reject(e) : (assert.equal(r.rowCount, 1), resolve()))));
  await new Promise<void>((resolve, reject) => (pool.query as any)('SELECT 4', (e?: Error) => (e ? reject(e) : resolve())));
  assert.deepEqual(source.clients.map((c) => c.queries[0]), [['SELECT 1'], ['SELECT $1', [1]], [config], [config, [2]], ['SELECT $1', [3]], ['SELECT 4']]);
  assert.ok(source.clients.every((c) => c.releases.length === 1 && c.releases[0] === undefined), 'each client released once, without an error');
});

test('fails when a query fails: the pg error comes back as it is, and its client is released with it (closed)', async () => {
  const { pool, source } = face();
  const pgError = Object.assign(new Error('duplicate key value violates unique constraint'), { code: '23505' });
  source.next = () => Object.assign(new FakeClient(), { fail: pgError });
  await assert.rejects(pool.query('INSERT ...'), (e) => e === pgError);
  assert.deepEqual(source.clients[0].releases, [pgError]);
});

test('fails when query() is given a function or a Submittable, with the fix', async () => {
  const { pool } = face();
  await assert.rejects((pool.query as any)(() => undefined), (e: any) => e.code === 'PG_POOL_QUERY');
  await assert.rejects(pool.query({ submit: () => undefined }), (e: any) => e.code === 'PG_POOL_SUBMITTABLE' && /pool\.connect\(\)/.test(e.message));
});

test('connect(callback) gives the client and its release, as pg.Pool does', async () => {
  const { pool, source } = face();
  const [client, release] = await new Promise<[PoolClient, (e?: Error) => void]>((resolve, reject) =>
    pool.connect((e, c, r) => (e ? reject(e) : resolve([c!, r!]))),
  );
  assert.equal(client, source.clients[0] as unknown as PoolClient);
  release();
  assert.equal(source.clients[0].releases.length, 1);
});

test('counts come from the rotating pool (current and draining credentials together)', () => {
  const { pool } = face();
  assert.deepEqual([pool.totalCount, pool.idleCount, pool.waitingCount, pool.expiredCount], [3, 2, 1, 0]);
});

test('it is a pg.Pool that opens no connection of its own', async () => {
  const { pool, source } = face();
  assert.ok(pool instanceof Pool);
  assert.equal(pool.constructor.name, 'VaultPgPool', 'Drizzle also recognises a pool by its class name');
  await pool.query('SELECT 1');
  assert.equal(source.clients.length, 1, 'the query went to the rotating pool');
  assert.equal((pool as any)._clients.length, 0, "pg.Pool's own machinery stays unused");
});

test('end() waits for the clients it handed out, then refuses new work; a second end() fails', async () => {
  const { pool } = face();
  const out = await pool.connect();
  let ended = false;
  const ending = pool.end().then(() => (ended = true));
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(pool.ending, true);
  assert.equal(ended, false, 'end() waits while a client is out');
  await assert.rejects(pool.connect(), (e: any) => e.code === 'POOL_ENDED');
  out.release();
  await ending;
  assert.equal(pool.ended, true);
  await assert.rejects(pool.end(), (e: any) => e.code === 'POOL_ENDED');
});

test("an idle connection's error is emitted as pg.Pool's 'error' (error, client); without a listener nothing is thrown", () => {
  const { pool, source } = face();
  const err = Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' });
  const client = new FakeClient() as unknown as PoolClient;
  assert.doesNotThrow(() => source.emit('idleError', err, client));
  const seen: unknown[] = [];
  pool.on('error', (e, c) => seen.push(e, c));
  source.emit('idleError', err, client);
  assert.deepEqual(seen, [err, client]);
});
