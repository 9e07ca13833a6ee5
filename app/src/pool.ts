import { EventEmitter } from 'node:events';
import { Pool, PoolClient, QueryResult, QueryResultRow } from 'pg';
import { pgSsl } from './config';
import { AppError, DatabaseError } from './errors';
import { LeaseManager } from './lease';
import { backoffDelay, sleep } from './backoff';
import { DatabaseCredentials } from './vault';

export interface RotatingPoolOptions {
  readonly lease: LeaseManager;
  readonly host: string;
  readonly port: number;
  readonly database: string;
  /** @default "disable" */
  readonly sslmode?: string;
  /** Connections per pool. @default 10 */
  readonly max?: number;
  /** @default 5000 */
  readonly connectionTimeoutMillis?: number;
  /** @default 10000 */
  readonly idleTimeoutMillis?: number;
  /**
   * Connections are closed after this long, so none outlives its credentials.
   * @default half the lease TTL, at least 1 s and below the TTL
   */
  readonly maxLifetimeSeconds?: number;
  /** How long a connection attempt is retried while Postgres is unreachable or starting. @default 5000 */
  readonly connectRetryMillis?: number;
  /** How long a retired pool may take to finish its in-flight queries. @default 30000 */
  readonly drainTimeoutMillis?: number;
  readonly applicationName?: string;
}

interface Generation {
  readonly pool: Pool;
  readonly creds: DatabaseCredentials;
  inFlight: number;
  drained?: () => void;
}

export interface RotatingPoolEvents {
  swapped: [previousUser: string, currentUser: string];
  drained: [user: string, millis: number];
  error: [error: AppError, operation: string];
}

const AUTH_FAILED = new Set(['28P01', '28000']);

/** Connection refused, reset, or Postgres starting up or shutting down: worth another try. */
function transientConnectError(e: any): boolean {
  return (
    ['ECONNREFUSED', 'ECONNRESET', 'EPIPE', '57P01', '57P02', '57P03'].includes(e?.code) ||
    /Connection terminated|timeout exceeded when trying to connect/i.test(String(e?.message))
  );
}

/**
 * A pg Pool wrapper for dynamic credentials. When the lease manager rotates, it
 * builds a new Pool with the new username and password and sends new queries there;
 * the old Pool finishes its in-flight (and queued) queries, is closed, and only then
 * is the old lease revoked. A rotation therefore never fails a query.
 */
export class RotatingPool extends EventEmitter<RotatingPoolEvents> {
  private readonly opts: RotatingPoolOptions;
  private active: Generation;
  private readonly retiring = new Set<Generation>();
  private closed = false;
  /** Queries that failed, by reason; for metrics. */
  public readonly failures = new Map<string, number>();
  public rotations = 0;

  constructor(opts: RotatingPoolOptions) {
    super();
    this.opts = opts;
    this.active = this.generation(opts.lease.current());
    opts.lease.on('rotated', (previous, current) => void this.swap(previous, current));
  }

  /** Runs a query on the current credentials. */
  async query<R extends QueryResultRow = any>(text: string, values?: unknown[]): Promise<QueryResult<R>> {
    return this.withClient((c) => c.query<R>(text, values));
  }

  /**
   * Runs `fn` with one client of the current pool (for transactions). If Postgres
   * refuses the credentials at connect time (revoked behind our back, or expired), new
   * credentials are issued and `fn` runs once more: nothing had been sent yet.
   */
  async withClient<T>(fn: (client: PoolClient) => Promise<T>): Promise<T> {
    if (this.closed) throw new AppError('POOL_CLOSED', 'the pool is closed');
    const client = await this.connect();
    const owner = this.generationOf(client);
    try {
      return await fn(client);
    } catch (e: any) {
      throw this.fail(e, 'query');
    } finally {
      client.release();
      this.done(owner);
    }
  }

  /**
   * A client of the current pool. Nothing has been sent yet, so a refusal is safe to retry:
   * refused credentials get new ones (once); Postgres starting up or unreachable is retried
   * with backoff for up to connectRetryMillis.
   */
  private async connect(): Promise<PoolClient> {
    const deadline = Date.now() + (this.opts.connectRetryMillis ?? 5000);
    let renewed = false;
    for (let attempt = 0; ; attempt++) {
      const gen = this.active;
      try {
        return await this.acquire(gen);
      } catch (e: any) {
        if (AUTH_FAILED.has(e?.code) && !renewed) {
          renewed = true;
          this.count('auth');
          await this.opts.lease.rotateNow('credentials refused by Postgres');
          if (this.active === gen) this.swapTo(this.opts.lease.current());
          continue;
        }
        if (!transientConnectError(e) || Date.now() > deadline || this.closed) throw this.fail(e, 'connect');
        this.count('connect_retry');
        await sleep(backoffDelay(attempt, { initialMillis: 100, maxMillis: 1000 }));
      }
    }
  }

  /** Pool sizes across the current and retiring pools. */
  stats(): { total: number; idle: number; waiting: number; retiring: number } {
    const gens = [this.active, ...this.retiring];
    return {
      total: gens.reduce((n, g) => n + g.pool.totalCount, 0),
      idle: gens.reduce((n, g) => n + g.pool.idleCount, 0),
      waiting: gens.reduce((n, g) => n + g.pool.waitingCount, 0),
      retiring: this.retiring.size,
    };
  }

  /** The username new queries use. */
  get currentUser(): string {
    return this.active.creds.username;
  }

  /** Stops taking queries, lets in-flight ones finish, and closes every pool. */
  async close(): Promise<void> {
    this.closed = true;
    const all = [this.active, ...this.retiring];
    await Promise.all(all.map((g) => this.drain(g)));
  }

  private generation(creds: DatabaseCredentials): Generation {
    const ttl = Math.max(1, creds.leaseDurationSeconds);
    const lifetime = this.opts.maxLifetimeSeconds ?? Math.max(1, Math.floor(ttl / 2));
    const pool = new Pool({
      host: this.opts.host,
      port: this.opts.port,
      database: this.opts.database,
      user: creds.username,
      password: creds.password,
      ssl: pgSsl(this.opts.sslmode),
      max: this.opts.max ?? 10,
      connectionTimeoutMillis: this.opts.connectionTimeoutMillis ?? 5000,
      idleTimeoutMillis: this.opts.idleTimeoutMillis ?? 10_000,
      maxLifetimeSeconds: Math.min(lifetime, Math.max(1, ttl - 1)),
      application_name: this.opts.applicationName ?? 'pgvault-app',
    });
    // An idle client whose backend goes away (restart, revocation) must not crash the process.
    pool.on('error', (e: any) => this.count(e?.code === '57P01' ? 'terminated' : 'idle_error'));
    const gen: Generation = { pool, creds, inFlight: 0 };
    this.byPool.set(pool, gen);
    return gen;
  }

  private readonly byPool = new WeakMap<Pool, Generation>();
  private readonly clientOwner = new WeakMap<PoolClient, Generation>();

  private async acquire(gen: Generation): Promise<PoolClient> {
    gen.inFlight++;
    try {
      const client = await gen.pool.connect();
      if (!this.clientOwner.has(client)) {
        // A checked-out client whose backend dies (restart, revocation) emits 'error' besides
        // failing its query: without a listener that would crash the process.
        client.on('error', (e: any) => this.count(e?.code === '57P01' ? 'terminated' : 'connection_lost'));
      }
      this.clientOwner.set(client, gen);
      return client;
    } catch (e) {
      this.done(gen);
      throw e;
    }
  }

  private generationOf(client: PoolClient): Generation {
    return this.clientOwner.get(client) ?? this.active;
  }

  private done(gen: Generation): void {
    gen.inFlight--;
    if (gen.inFlight === 0 && gen.drained) gen.drained();
  }

  private swap(previous: DatabaseCredentials, current: DatabaseCredentials): void {
    if (this.active.creds === current) return;
    if (this.active.creds !== previous) {
      // Not the lease this pool is on (already swapped by an auth retry): just retire it.
      void this.opts.lease.retire(previous);
    }
    this.swapTo(current);
  }

  private swapTo(current: DatabaseCredentials): void {
    if (this.closed || this.active.creds === current) return;
    const old = this.active;
    this.active = this.generation(current);
    this.rotations++;
    this.emit('swapped', old.creds.username, current.username);
    this.retiring.add(old);
    const started = Date.now();
    void this.drain(old).then(async () => {
      this.retiring.delete(old);
      this.emit('drained', old.creds.username, Date.now() - started);
      await this.opts.lease.retire(old.creds);
    });
  }

  private async drain(gen: Generation): Promise<void> {
    if (gen.inFlight > 0) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, this.opts.drainTimeoutMillis ?? 30_000);
        gen.drained = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    await gen.pool.end().catch(() => undefined);
  }

  private count(reason: string): void {
    this.failures.set(reason, (this.failures.get(reason) ?? 0) + 1);
  }

  private fail(e: any, operation: string): AppError {
    if (e instanceof AppError) return e;
    const reason = e?.code && /^[0-9A-Z]{5}$/.test(e.code) ? `sqlstate_${e.code}` : (e?.code ?? 'error').toString().toLowerCase();
    this.count(reason);
    // Keep Postgres's own message for the logs; it never contains the password.
    const err = new DatabaseError('DB_' + operation.toUpperCase(), `${operation} failed: ${e?.message ?? e}`, e?.code, { cause: undefined });
    if (this.listenerCount('error') > 0) this.emit('error', err, operation);
    return err;
  }
}
