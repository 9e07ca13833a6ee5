import { EventEmitter } from 'node:events';
import type { PoolClient, QueryResult } from 'pg';
import { AppError } from './errors';
import type { RotatingPool } from './pool';

/** The events of a pg.Pool that the face emits. */
export interface VaultPgPoolEvents {
  /**
   * An idle connection failed (its backend went away) and was removed, as pg.Pool emits it.
   * Unlike pg.Pool, nothing is thrown when no listener is attached: the runtime counts the
   * failure (metric `pgvault_pool_failures_total`) and goes on.
   */
  error: [error: Error, client: PoolClient];
}

type Callback<T> = (error: Error | undefined, value?: T) => void;
type ConnectCallback = (error: Error | undefined, client?: PoolClient, release?: (error?: Error | boolean) => void) => void;

/**
 * A `pg.Pool` stand-in over one role's rotating pool: `connect()` gives a real pg client
 * with `release()`, `query()` runs one statement on a client it returns at once, `end()`,
 * the `'error'` event, and `totalCount` / `idleCount` / `waitingCount`.
 * Kysely (`PostgresDialect({ pool })`) and Drizzle (`drizzle({ client: pool })`) take it as it is.
 *
 * Rotation stays invisible to them: every `connect()` gets a client of the current credentials,
 * and a client keeps its credentials until it is released, so a transaction never spans two
 * credential generations. The old credentials' pool drains, and their lease is revoked, after
 * their last client is released (or after the rotating pool's drain timeout).
 *
 * Query errors are pg's own (with `code` = SQLSTATE), as pg.Pool passes them; a failed
 * connect rejects with the runtime's `DatabaseError` (code `DB_CONNECT`, `sqlState`) or an
 * `AppError` (`POOL_CLOSED`, `POOL_ENDED`).
 */
export class VaultPgPool extends EventEmitter<VaultPgPoolEvents> {
  readonly #source: RotatingPool;
  readonly #out = new Set<PoolClient>();
  #endWaiter?: () => void;
  readonly #onIdleError = (error: Error, client: PoolClient) => {
    if (this.listenerCount('error') > 0) this.emit('error', error, client);
  };
  /** end() was called: no new connections. */
  public ending = false;
  /** end() finished: every client this face handed out was released. */
  public ended = false;

  constructor(source: RotatingPool) {
    super();
    this.#source = source;
    source.on('idleError', this.#onIdleError);
  }

  /** Connections open, idle or checked out, across the current and the draining credentials. */
  get totalCount(): number {
    return this.#source.stats().total;
  }

  get idleCount(): number {
    return this.#source.stats().idle;
  }

  /** connect() calls waiting for a free connection. */
  get waitingCount(): number {
    return this.#source.stats().waiting;
  }

  /** A client of the current credentials; give it back with `client.release()` (or `release(error)` to close it). */
  connect(): Promise<PoolClient>;
  connect(callback: ConnectCallback): void;
  connect(callback?: ConnectCallback): Promise<PoolClient> | void {
    const work = this.checkout();
    if (!callback) return work;
    work.then(
      (client) => callback(undefined, client, client.release),
      (e) => callback(e),
    );
  }

  /** Runs one query on a client of the current credentials, as pg.Pool#query does: (text, values?) or a query config. */
  query<R extends QueryResult = QueryResult>(textOrConfig: unknown, values?: unknown, callback?: Callback<R>): Promise<R>;
  query(...args: unknown[]): Promise<QueryResult> | void {
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
    const work = (async () => {
      const client = await this.checkout();
      try {
        const result = await (client.query as (...a: unknown[]) => Promise<QueryResult>)(...args);
        client.release();
        return result;
      } catch (e) {
        client.release(e as Error);
        throw e;
      }
    })();
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
  end(): Promise<void>;
  end(callback: (error?: Error) => void): void;
  end(callback?: (error?: Error) => void): Promise<void> | void {
    const work = this.ending
      ? Promise.reject(new AppError('POOL_ENDED', 'end() was called on this pool more than once; call it once, at shutdown'))
      : (async () => {
          this.ending = true;
          if (this.#out.size > 0) await new Promise<void>((resolve) => (this.#endWaiter = resolve));
          this.#source.off('idleError', this.#onIdleError);
          this.ended = true;
        })();
    if (!callback) return work;
    work.then(
      () => callback(),
      (e) => callback(e),
    );
  }

  private async checkout(): Promise<PoolClient> {
    if (this.ending) throw new AppError('POOL_ENDED', 'this pool was ended (end() was called); get a new one from the runtime: runtime.pgPool(role)');
    const client = await this.#source.checkout();
    const giveBack = client.release;
    this.#out.add(client);
    client.release = (error?: Error | boolean) => {
      this.#out.delete(client);
      try {
        giveBack(error);
      } finally {
        if (this.ending && this.#out.size === 0) this.#endWaiter?.();
      }
    };
    return client;
  }
}
