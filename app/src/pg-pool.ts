import { Pool, PoolClient, QueryResult } from 'pg';
import { AppError } from './errors';
import type { RotatingPool, StatementHooks } from './pool';

type Callback<T> = (error: Error | undefined, value?: T) => void;
type ConnectCallback = (error: Error | undefined, client: PoolClient | undefined, release: (error?: Error | boolean) => void) => void;

/**
 * A `pg.Pool` stand-in over one role's rotating pool: `connect()` gives a real pg client
 * with `release()`, `query()` runs one statement on a client it returns at once, `end()`,
 * the `'error'` event, and `totalCount` / `idleCount` / `waitingCount`.
 * Kysely (`PostgresDialect({ pool })`), Drizzle (`drizzle({ client: pool })`) and Knex 3.3.0 or
 * later (`knex({ client: 'pg', connectionPool: pool })`) take it as it is. It is a `pg.Pool` subclass (of the `pg` the package and its user share, a peer dependency), so
 * `instanceof pg.Pool` holds and TypeScript takes it where a `pg.Pool` is expected; the base
 * class's own machinery is never used: it opens no connection of its own.
 *
 * The `'error'` event (error, client): an idle connection failed (its backend went away) and was
 * removed, as pg.Pool emits it. Unlike pg.Pool, nothing is thrown when no listener is attached:
 * the runtime counts the failure (metric `pgvault_pool_failures_total`) and goes on.
 *
 * Rotation stays invisible to its users: every `connect()` gets a client of the current credentials,
 * and a client keeps its credentials until it is released, so a transaction never spans two
 * credential generations. The old credentials' pool drains, and their lease is revoked, after
 * their last client is released (or after the rotating pool's drain timeout).
 *
 * Query errors are pg's own (with `code` = SQLSTATE), as pg.Pool passes them; a failed
 * connect rejects with the runtime's `DatabaseError` (code `DB_CONNECT`, `sqlState`) or an
 * `AppError` (`POOL_CLOSED`, `POOL_ENDED`, `PG_POOL_CONNECT_TIMEOUT`).
 *
 * `connect()` and `query()` wait at most `connectionTimeoutMillis` for a client, as pg.Pool's
 * option of that name bounds them: credentials refused while Vault is down, say, end in
 * `PG_POOL_CONNECT_TIMEOUT` (its message starts, as pg.Pool's, with "timeout exceeded when
 * trying to connect") instead of a wait without end.
 */
export class VaultPgPool extends Pool {
  readonly #source: RotatingPool;
  readonly #connectionTimeoutMillis: number;
  /** query() calls under way, and connect() calls whose client is not released yet. */
  #busy = 0;
  #endWaiter?: () => void;
  readonly #onIdleError = (error: Error, client: PoolClient) => {
    if (this.listenerCount('error') > 0) this.emit('error', error, client);
  };

  /**
   * `max` is informational (`pool.options.max`): the rotating pool's size per credential generation.
   * `connectionTimeoutMillis`: how long connect() and query() wait for a client. @default 10000
   */
  constructor(source: RotatingPool, opts: { readonly max?: number; readonly connectionTimeoutMillis?: number } = {}) {
    const connectionTimeoutMillis = opts.connectionTimeoutMillis ?? 10_000;
    if (!Number.isFinite(connectionTimeoutMillis) || connectionTimeoutMillis <= 0) {
      throw new AppError('PG_POOL_OPTION', `connectionTimeoutMillis is ${connectionTimeoutMillis}; expected a number of milliseconds above 0 (a wait without end is what it prevents)`);
    }
    super({ max: opts.max ?? 10, connectionTimeoutMillis });
    this.#source = source;
    this.#connectionTimeoutMillis = connectionTimeoutMillis;
    source.on('idleError', this.#onIdleError);
    // pg.Pool's counts are getters over its own (here unused) lists: these answer for the rotating pool.
    const count = (key: 'total' | 'idle' | 'waiting') => ({ get: () => this.#source.stats()[key], enumerable: false, configurable: true });
    Object.defineProperties(this, {
      /** Connections open, idle or checked out, across the current and the draining credentials. */
      totalCount: count('total'),
      idleCount: count('idle'),
      /** connect() calls waiting for a free connection. */
      waitingCount: count('waiting'),
      /** Expired connections are closed by the rotating pool's own pools when released. */
      expiredCount: { get: () => 0, enumerable: false, configurable: true },
    });
  }

  /** A client of the current credentials; give it back with `client.release()` (or `release(error)` to close it). */
  override connect(): Promise<PoolClient>;
  override connect(callback: ConnectCallback): void;
  override connect(callback?: ConnectCallback): Promise<PoolClient> | void {
    const work = this.#checkout();
    if (!callback) return work;
    work.then(
      (client) => callback(undefined, client, client.release),
      (e) => callback(e, undefined, () => undefined),
    );
  }

  /** Runs one query on a client of the current credentials, as pg.Pool#query does: (text, values?) or a query config. */
  override query<R extends QueryResult = QueryResult>(textOrConfig: unknown, values?: unknown): Promise<R>;
  override query<R extends QueryResult = QueryResult>(textOrConfig: unknown, values: unknown, callback: Callback<R>): void;
  override query(...args: any[]): any;
  override query(...args: any[]): any {
    const callback = typeof args[args.length - 1] === 'function' && args.length > 1 ? (args.pop() as Callback<QueryResult>) : undefined;
    const [first] = args;
    if (typeof first === 'function') {
      const e = new AppError('PG_POOL_QUERY', 'pool.query() was given a function as its first argument; pass the SQL text or a query config, and the callback last');
      if (callback) return void setImmediate(() => callback(e));
      return Promise.reject(e);
    }
    if (first && typeof (first as { submit?: unknown }).submit === 'function') {
      const e = new AppError('PG_POOL_SUBMITTABLE', 'pool.query() was given a Submittable (a cursor or stream); check a client out with pool.connect(), run it with client.query(), then client.release()');
      if (callback) return void setImmediate(() => callback(e));
      return Promise.reject(e);
    }
    const work = this.#queryOnce(args);
    if (!callback) return work;
    work.then(
      (r) => callback(undefined, r),
      (e) => callback(e),
    );
  }

  /**
   * Stops handing out clients and resolves once every client this face handed out is released.
   * It does not end the runtime: `CredentialRuntime#close()` drains the pools and revokes the leases.
   */
  override end(): Promise<void>;
  override end(callback: (error?: Error) => void): void;
  override end(callback?: (error?: Error) => void): Promise<void> | void {
    const state = this as { ending: boolean; ended: boolean };
    const work = this.ending
      ? Promise.reject(new AppError('POOL_ENDED', 'end() was called on this pool more than once; call it once, at shutdown'))
      : (async () => {
          state.ending = true;
          if (this.#busy > 0) await new Promise<void>((resolve) => (this.#endWaiter = resolve));
          this.#source.off('idleError', this.#onIdleError);
          state.ended = true;
        })();
    if (!callback) return work;
    work.then(
      () => callback(),
      (e) => callback(e),
    );
  }

  /** pool.query(): the hot path of every ORM call, so one call into the rotating pool, and no promise of its own. */
  #queryOnce(args: unknown[]): Promise<QueryResult> {
    if (this.ending) return Promise.reject(this.#ended());
    this.#busy++;
    return this.#source.statement<QueryResult>(args, Date.now() + this.#connectionTimeoutMillis, this.#queryHooks);
  }

  /** For query() and connect() alike: end() waits for both. */
  readonly #queryHooks: StatementHooks = {
    settled: () => {
      this.#busy--;
      this.#maybeEnded();
    },
    // Only the wait for a client ends in REQUEST_DEADLINE: pg.Pool's own message for it.
    connectError: (e: any) => (e?.code === 'REQUEST_DEADLINE' ? this.#connectTimeout(e) : e),
    queryError: (e: any) => e,
  };

  #checkout(): Promise<PoolClient> {
    if (this.ending) return Promise.reject(this.#ended());
    // The rotating pool calls #queryHooks.settled once: at the client's release, or when none came.
    this.#busy++;
    return this.#source.checkout({ deadline: Date.now() + this.#connectionTimeoutMillis }, this.#queryHooks);
  }

  #ended(): AppError {
    return new AppError('POOL_ENDED', 'this pool was ended (end() was called); get a new one from the runtime: runtime.pgPool(role)');
  }

  #connectTimeout(e: Error): AppError {
    return new AppError('PG_POOL_CONNECT_TIMEOUT', `timeout exceeded when trying to connect: no client within ${this.#connectionTimeoutMillis} ms (connectionTimeoutMillis); ${e.message}`, { cause: e });
  }

  #maybeEnded(): void {
    if (this.ending && this.#busy === 0) this.#endWaiter?.();
  }
}
