import { EventEmitter } from 'node:events';
import { Client, ClientConfig, Pool, PoolClient, QueryResult, QueryResultRow } from 'pg';
import { pgSsl } from './config';
import { AppError, DatabaseError, OutcomeUnknownError, QueryDeadlineError } from './errors';
import { sendCancelRequest } from './cancel';
import { LeaseManager } from './lease';
import { backoffDelay, MAX_TIMER_MILLIS, sleep } from './backoff';
import { DatabaseCredentials } from './vault';

export interface RotatingPoolOptions {
  readonly lease: LeaseManager;
  readonly host: string;
  readonly port: number;
  readonly database: string;
  /** @default "disable" */
  readonly sslmode?: string;
  /** PEM of the CA that verify-ca/verify-full check the server with. @default Node's CA store */
  readonly ca?: string;
  /**
   * The pool connects to a streaming replica: users Vault has just created on the primary
   * reach it with replication lag, and until then Postgres refuses them exactly as a wrong
   * password (28P01). A refusal within this window after the credentials were issued is
   * retried with backoff, with the same credentials; after it, it counts as a refusal as on a
   * primary. 0: no window (a primary). On a replica, a rotation also keeps the previous
   * credentials serving until the new ones have logged in once (a background probe), so a
   * replay lag longer than the window fails no request and issues nothing more. @default 0
   */
  readonly replicaLagWindowMillis?: number;
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
  /**
   * A call without a deadline of its own waits at most this long for credentials and a
   * connection (new credentials after a refusal included), as pg.Pool's connectionTimeoutMillis.
   * @default 10000
   */
  readonly acquireTimeoutMillis?: number;
  /**
   * Postgres ends any statement running longer (`statement_timeout`, set in the connection's
   * startup options, so it costs no round trip). It backs up the deadline's cancel request, for
   * a cancel that cannot reach the server. It also bounds, on the client side, every statement
   * sent without a deadline of its own (query(), withClient() and the pg.Pool face's clients): a
   * frozen server (docker pause) still acknowledges TCP, so neither keepalive nor its own
   * statement_timeout ends the wait. Such a statement still running statementTimeoutMillis +
   * cancelTimeoutMillis after it was sent (or after the answer of the statement queued before it
   * on the same client) gets a cancel request; without an answer within
   * cancelTimeoutMillis more, its connection is destroyed and it fails with OutcomeUnknownError.
   * 0: no limit, on either side. @default 30000
   */
  readonly statementTimeoutMillis?: number;
  /**
   * At a call's deadline a cancel request is sent; this is how long its answer (the statement
   * failing with 57014, or finishing) is awaited before the connection is destroyed and the
   * outcome is unknown. @default 1000
   */
  readonly cancelTimeoutMillis?: number;
  /**
   * TCP keepalive: idle time before the first probe, so a connection to a host that is gone
   * is noticed. @default 10000
   */
  readonly keepAliveInitialDelayMillis?: number;
  readonly applicationName?: string;
}

interface Generation {
  readonly pool: Pool;
  readonly creds: DatabaseCredentials;
  inFlight: number;
  /** Postgres accepted these credentials at least once. */
  connected: boolean;
  /** Everyone waiting for in-flight work to end (a rotation's drain, close()). */
  readonly drainWaiters: (() => void)[];
}

/** Per-call limits. */
export interface CallOptions {
  /**
   * When the call must end (ms since epoch). Waiting for credentials or a connection past it
   * fails with AppError REQUEST_DEADLINE (nothing was sent). A statement still running at it is
   * cancelled: Postgres confirming the cancel fails it with QueryDeadlineError (it did not
   * happen); no answer within cancelTimeoutMillis destroys the connection and fails it with
   * OutcomeUnknownError. @default waiting for a connection is bounded by acquireTimeoutMillis;
   * each statement by statementTimeoutMillis + cancelTimeoutMillis after it was sent (see there)
   */
  readonly deadline?: number;
}

/** pg-pool arms a timer of maxLifetimeSeconds: keep it within what setTimeout honours. */
const MAX_LIFETIME_SECONDS = Math.floor(MAX_TIMER_MILLIS / 1000);

export interface RotatingPoolEvents {
  swapped: [previousUser: string, currentUser: string];
  drained: [user: string, millis: number];
  error: [error: AppError, operation: string];
  /** An idle connection failed (its backend went away) and was dropped: pg.Pool's 'error'. */
  idleError: [error: Error, client: PoolClient];
}

const AUTH_FAILED = new Set(['28P01', '28000']);

/** Rejects with REQUEST_DEADLINE when `deadline` passes first; the work itself goes on. */
function beforeDeadline<T>(work: Promise<T>, deadline: number | undefined, what: string): Promise<T> {
  if (deadline === undefined) return work;
  // One promise and one timer, no race: this runs for every query.
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new AppError('REQUEST_DEADLINE', `gave up waiting for ${what}: the deadline passed`)), Math.max(0, deadline - Date.now()));
    work.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

/** The connection broke under a statement that was sent: no answer says whether it took effect. */
function connectionLost(e: any): boolean {
  if (/^[0-9A-Z]{5}$/.test(String(e?.code))) return false;
  return ['ECONNRESET', 'EPIPE', 'ETIMEDOUT'].includes(e?.code) || /Connection terminated|connection (lost|closed)|socket/i.test(String(e?.message));
}

/**
 * A pg Client that always has an 'error' listener. pg-pool takes its own listener off a client
 * it hands out; acquire() adds ours a microtask later. A server that sends ReadyForQuery and a
 * FATAL (57P01: a revocation ending the session) in one TCP read emits the error in between,
 * and an 'error' event without a listener would end the process. The error still fails the
 * client's queries and marks it unusable; the pool's listeners count it.
 */
class GuardedClient extends Client {
  constructor(config?: string | ClientConfig) {
    super(config);
    this.on('error', () => undefined);
  }
}

/**
 * Closes the socket at once: a frozen server never answers the Terminate that client.end()
 * sends. pg then fails the client's queries ("Connection terminated") and pg-pool drops it on release.
 */
function destroyConnection(client: PoolClient): void {
  (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
}

/** What a caller of RotatingPool#statement or #checkout adds: functions made once per caller, not per call. */
export interface StatementHooks {
  /** Runs once the client is back: for statement(), before its promise settles; for checkout(), at its release, or when no client came. */
  settled(): void;
  /** The caller's error for a failed wait for a client (REQUEST_DEADLINE, POOL_CLOSED, a refusal). */
  connectError(e: any): unknown;
  /** The caller's error for a failed statement (after the statement bound's own mapping). */
  queryError(e: any): unknown;
}

const same = (e: any): unknown => e;
const NO_HOOKS: StatementHooks = { settled: () => undefined, connectError: same, queryError: same };

/** Where a client's StatementWatch is kept: a property read, cheaper than a WeakMap on every statement. */
const WATCH = Symbol('pgvault.statementWatch');

type Watched = PoolClient & { [WATCH]?: StatementWatch };

/**
 * The client-side bound on one client's promise-style statements, with no timer and no promise
 * per statement: one timer per client, re-armed (`refresh()`) when a statement is sent on a
 * client with none under way, and at each answer while more wait. pg runs a client's statements
 * one after another, so the bound runs from the later of a statement's call and the previous
 * statement's answer: one queued behind a long statement is not cancelled for the other's time.
 * At the bound a cancel request goes to Postgres; its confirmation (57014) means the statement did
 * not happen. Without any answer within `graceMillis` (a frozen or unreachable server), the
 * connection is destroyed and its statements fail with the outcome unknown.
 */
class StatementWatch {
  /** Promise-style statements called and not answered yet. */
  private pending = 0;
  /** This watch sent a cancel request on the connection: a 57014 now means its bound, not the server's statement_timeout. */
  private cancelSent = false;
  private gaveUp = false;
  private grace?: NodeJS.Timeout;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly client: PoolClient,
    /** pg's own `client.query`. */
    readonly query: (...args: unknown[]) => unknown,
    boundMillis: number,
    private readonly graceMillis: number,
    private readonly onCancel: (client: PoolClient) => void,
    private readonly onGiveUp: () => void,
  ) {
    // Armed once with nothing under way (a no-op when it fires), then only ever refreshed.
    this.timer = setTimeout(this.bound, Math.min(boundMillis, MAX_TIMER_MILLIS));
    this.timer.unref();
  }

  sent(): void {
    if (this.pending++ === 0) this.timer.refresh();
  }

  answered(): void {
    if (this.grace !== undefined) {
      clearTimeout(this.grace);
      this.grace = undefined;
    }
    if (--this.pending > 0) this.timer.refresh();
  }

  /** The caller's error for `e`, the failure of one of this client's statements. */
  error(e: any): any {
    if (this.gaveUp) {
      return new OutcomeUnknownError(
        'DB_OUTCOME_UNKNOWN',
        `no answer from Postgres within statementTimeoutMillis + cancelTimeoutMillis, nor within ${this.graceMillis} ms of the cancel request sent then (a frozen or unreachable server); the connection is closed, and whether the statement took effect is unknown`,
      );
    }
    if (this.cancelSent && e?.code === '57014') {
      return new QueryDeadlineError('DB_DEADLINE', 'the statement was cancelled at its deadline, and Postgres confirmed it: it did not take effect', '57014');
    }
    return e;
  }

  /** The answer of a statement, for `then`: no closure per statement. */
  readonly onAnswer = (value: unknown): unknown => {
    this.answered();
    return value;
  };

  readonly onError = (e: unknown): never => {
    const err = this.error(e);
    this.answered();
    throw err;
  };

  /** Stops the timers: the connection is gone. */
  stop(): void {
    clearTimeout(this.timer);
    if (this.grace !== undefined) clearTimeout(this.grace);
    this.grace = undefined;
  }

  private readonly bound = (): void => {
    if (this.pending === 0 || this.grace !== undefined || this.gaveUp) return;
    this.cancelSent = true;
    this.onCancel(this.client);
    this.grace = setTimeout(this.giveUp, this.graceMillis);
  };

  private readonly giveUp = (): void => {
    this.grace = undefined;
    if (this.pending === 0) return;
    this.gaveUp = true;
    this.onGiveUp();
    destroyConnection(this.client);
  };
}

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
  /** Logins refused within the replica lag window and retried with the same credentials. */
  public lagRetries = 0;
  /** Refusals of credentials Postgres never accepted, in a row: they back off new rotations. */
  private freshRefusals = 0;
  private nextFreshRotationAt = 0;
  /** The rotation asked for after fresh credentials were refused, while it is under way. */
  private freshRotation?: Promise<void>;
  /** On a replica: new credentials being probed until the replica knows them; the active ones serve meanwhile. */
  private pending?: Generation;
  /** Probes of pending credentials that Postgres refused (replay lag). */
  public pendingProbes = 0;

  constructor(opts: RotatingPoolOptions) {
    super();
    this.opts = opts;
    this.active = this.generation(opts.lease.current());
    opts.lease.on('rotated', (previous, current) => void this.swap(previous, current));
  }

  /** Runs a query on the current credentials. */
  query<R extends QueryResultRow = any>(text: string, values?: unknown[], opts: CallOptions = {}): Promise<QueryResult<R>> {
    if (opts.deadline === undefined) {
      // statement()'s path, as withClient() would take it: the wait bounded by acquireTimeoutMillis, errors as withClient's.
      return this.statement<QueryResult<R>>(values === undefined ? [text] : [text, values], Date.now() + (this.opts.acquireTimeoutMillis ?? 10_000), this.queryHooks);
    }
    return this.withClient((c) => c.query<R>(text, values), opts);
  }

  private readonly queryHooks: StatementHooks = { settled: () => undefined, connectError: same, queryError: (e) => this.fail(e, 'query') };

  /**
   * Runs `fn` with one client of the current pool (for transactions). If Postgres
   * refuses the credentials at connect time (revoked behind our back, or expired), new
   * credentials are issued and `fn` runs once more: nothing had been sent yet.
   * When `fn` throws, the client is destroyed rather than returned to the pool: it may be
   * inside a transaction that the next user would otherwise continue.
   */
  async withClient<T>(fn: (client: PoolClient) => Promise<T>, opts: CallOptions = {}): Promise<T> {
    if (this.closed) throw new AppError('POOL_CLOSED', 'the pool is closed');
    const client = await this.connect(opts.deadline);
    const owner = this.generationOf(client);
    let failure: Error | undefined;
    try {
      if (opts.deadline !== undefined && Date.now() >= opts.deadline) {
        throw new AppError('REQUEST_DEADLINE', 'the deadline passed before the statement was sent; nothing was sent');
      }
      return await this.bounded(client, fn(client), opts.deadline, () => {
        // A cancel that reaches the backend late would hit the next user's statement: never reuse it.
        failure ??= new AppError('DB_CANCEL_SENT', 'a cancel request was sent on this connection');
      });
    } catch (e: any) {
      failure = e instanceof Error ? e : new Error(String(e));
      throw this.fail(e, 'query');
    } finally {
      client.release(failure ?? this.spoiled(client));
      this.done(owner);
    }
  }

  /**
   * One statement (pg's `client.query` arguments) on a client of the current credentials, for the
   * pg.Pool face's `query()`: the client comes within `connectDeadline` (else REQUEST_DEADLINE,
   * nothing sent); the statement is bounded as every statement is (statementTimeoutMillis), and
   * its errors are pg's own unless `hooks` map them; `hooks.settled` runs once the client is back,
   * before the promise settles.
   * The face's hot path: when an idle client of working credentials is there, it goes as plain
   * pg.Pool's `query()` does (pg-pool's and pg's callback forms, one promise in all); otherwise
   * through the rotating pool's connect(), with its retries and bounded waits.
   */
  statement<R = unknown>(args: unknown[], connectDeadline: number, hooks: StatementHooks = NO_HOOKS): Promise<R> {
    const gen = this.active;
    if (!this.idleReady(gen) || (this.opts.statementTimeoutMillis ?? 30_000) <= 0) return this.statementVia(args, connectDeadline, hooks);
    return this.fromIdle<R>(gen, () => this.statementVia<R>(args, connectDeadline, hooks), (client, release, resolve, reject) => {
      // Set up by acquire() with the statement bound on (statementTimeoutMillis > 0): it has its watch.
      const watch = (client as Watched)[WATCH]!;
      watch.sent();
      let answeredOnce = false;
      const answered = (e: Error | null | undefined, result?: unknown): void => {
        // pg can report one query's failure twice (a parameter that fails to serialize, then the
        // connection it closes): the first answer counts, as in pg-pool's own query().
        if (answeredOnce) return;
        answeredOnce = true;
        const failure = e ? watch.error(e) : undefined;
        watch.answered();
        release(e ? (e instanceof Error ? e : new Error(String(e))) : this.spoiled(client));
        this.done(gen);
        hooks.settled();
        if (!failure) return resolve(result as R);
        try {
          reject(hooks.queryError(failure));
        } catch (thrown) {
          // An 'error' listener that throws: the caller still gets an answer.
          reject(thrown);
        }
      };
      // Exactly (config, values, callback): a trailing `undefined` would make pg take its promise form.
      const [config, values] = args;
      // pg before 8.23 writes the callback onto a config object: take it off again, so that a
      // config reused later is not answered through this call's callback.
      const reused = config !== null && typeof config === 'object' ? (config as { callback?: unknown }) : undefined;
      const hadCallback = reused !== undefined && Object.prototype.hasOwnProperty.call(reused, 'callback');
      const callbackBefore = reused?.callback;
      try {
        watch.query.call(client, config, values, answered);
      } catch (e: any) {
        answered(e instanceof Error ? e : new Error(String(e)));
      } finally {
        if (reused !== undefined && reused.callback === answered) {
          if (hadCallback) reused.callback = callbackBefore;
          else delete reused.callback;
        }
      }
    });
  }

  /**
   * Credentials that already worked, and more idle clients than callers queued: pg-pool hands one
   * over on the next tick, without I/O, so no deadline can pass while waiting for it.
   */
  private idleReady(gen: Generation): boolean {
    return !this.closed && gen.connected && gen.pool.idleCount > gen.pool.waitingCount;
  }

  /**
   * An idle client of `gen` through pg-pool's callback form (no promise of its own) for `use`,
   * with pg-pool's release for it. Anything but a client this pool set up goes back, and
   * `fallback` (the general path) answers instead.
   */
  private fromIdle<T>(
    gen: Generation,
    fallback: () => Promise<T>,
    use: (client: PoolClient, release: (e?: Error | boolean) => void, resolve: (value: T) => void, reject: (e: unknown) => void) => void,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      gen.inFlight++;
      gen.pool.connect((err: Error | undefined, client?: PoolClient, release?: (e?: Error | boolean) => void) => {
        if (err || client === undefined || release === undefined || this.clientOwner.get(client) !== gen) {
          if (client !== undefined) (release ?? client.release)(err ?? new AppError('DB_CLIENT_UNEXPECTED', 'an idle client the rotating pool did not set up'));
          this.done(gen);
          fallback().then(resolve, reject);
          return;
        }
        use(client, release, resolve, reject);
      });
    });
  }

  /** statement(), through connect(): the first client of new credentials, a wait for a client, a closed pool. */
  private async statementVia<R>(args: unknown[], connectDeadline: number, hooks: StatementHooks): Promise<R> {
    try {
      if (this.closed) throw new AppError('POOL_CLOSED', 'the pool is closed');
      let client: PoolClient;
      try {
        client = await this.connect(connectDeadline);
      } catch (e) {
        throw hooks.connectError(e);
      }
      const owner = this.generationOf(client);
      const watch = (client as Watched)[WATCH];
      let failure: Error | undefined;
      try {
        if (watch === undefined) return await (client.query as (...a: unknown[]) => Promise<R>)(...args);
        // pg's own query, bounded by the client's watch: no wrapper promise, no timer of its own.
        watch.sent();
        try {
          return (await watch.query.apply(client, args)) as R;
        } catch (e) {
          throw watch.error(e);
        } finally {
          watch.answered();
        }
      } catch (e: any) {
        failure = e instanceof Error ? e : new Error(String(e));
        throw hooks.queryError(e);
      } finally {
        client.release(failure ?? this.spoiled(client));
        this.done(owner);
      }
    } finally {
      hooks.settled();
    }
  }

  /**
   * A client of the current credentials for a caller that gives it back itself, with
   * `client.release(error?)` (the pg.Pool face). It stays on its credentials until then: their
   * pool drains, and their lease is revoked, only after it is released or the drain timeout passes.
   * `hooks` as for statement() (queryError unused).
   */
  checkout(opts: CallOptions = {}, hooks: StatementHooks = NO_HOOKS): Promise<PoolClient> {
    const gen = this.active;
    if (!this.idleReady(gen)) return this.checkoutVia(opts, hooks);
    return this.fromIdle(gen, () => this.checkoutVia(opts, hooks), (client, _release, resolve) => resolve(this.lend(client, gen, hooks)));
  }

  private async checkoutVia(opts: CallOptions, hooks: StatementHooks): Promise<PoolClient> {
    let client: PoolClient;
    try {
      if (this.closed) throw new AppError('POOL_CLOSED', 'the pool is closed');
      client = await this.connect(opts.deadline);
    } catch (e) {
      hooks.settled();
      throw hooks.connectError(e);
    }
    return this.lend(client, this.generationOf(client), hooks);
  }

  /** `client`, whose release() gives it back once, lets its generation drain, then runs `hooks.settled`. */
  private lend(client: PoolClient, owner: Generation, hooks: StatementHooks): PoolClient {
    const giveBack = client.release;
    let released = false;
    client.release = (error?: Error | boolean) => {
      if (released) throw new AppError('POOL_DOUBLE_RELEASE', 'release() was called twice for one checkout; call it once per connect()');
      released = true;
      giveBack(error || this.spoiled(client));
      this.done(owner);
      hooks.settled();
    };
    return client;
  }

  /**
   * A client of the current pool. Nothing has been sent yet, so a refusal is safe to retry.
   * Only a password refusal (28P01) of credentials Postgres accepted before (revoked or
   * expired behind our back) gets new credentials at once, and once. Credentials refused
   * before they ever worked, or refused for another reason (28000: pg_hba, NOLOGIN), are not
   * a lease problem (Postgres's clock ahead of Vault's, a configuration change): new ones are
   * tried only after an exponentially growing pause. Postgres starting up or unreachable is
   * retried with backoff for up to connectRetryMillis. Nothing waits past `deadline`.
   */
  private async connect(deadlineGiven?: number): Promise<PoolClient> {
    const callDeadline = deadlineGiven ?? Date.now() + (this.opts.acquireTimeoutMillis ?? 10_000);
    const deadline = Math.min(Date.now() + (this.opts.connectRetryMillis ?? 5000), callDeadline ?? Infinity);
    let renewed = false;
    let lagAttempt = 0;
    for (let attempt = 0; ; attempt++) {
      const gen = this.active;
      try {
        const client = await this.acquireBefore(gen, callDeadline);
        gen.connected = true;
        if (gen === this.active) this.freshRefusals = 0;
        return client;
      } catch (e: any) {
        const lagLeft = e?.code === '28P01' && !gen.connected ? gen.creds.issuedAt + (this.opts.replicaLagWindowMillis ?? 0) - Date.now() : 0;
        if (lagLeft > 0 && !this.closed) {
          // Not replayed on the replica yet: the same credentials will work once it is.
          this.lagRetries++;
          this.count('replica_lag_retry');
          const delay = Math.min(backoffDelay(lagAttempt++, { initialMillis: 100, maxMillis: 1000 }), lagLeft);
          if (Date.now() + delay > callDeadline) {
            throw this.fail(e, 'connect', `the replica has not replayed the creation of ${gen.creds.username} yet (issued ${Date.now() - gen.creds.issuedAt} ms ago)`);
          }
          await sleep(delay);
          continue;
        }
        if (e?.code === '28P01' && gen.connected && !renewed) {
          renewed = true;
          this.count('auth_refused');
          // Newer credentials are being probed (a replica lagging): they take over now, nothing is issued.
          if (this.pending && this.active === gen) {
            this.promote(this.pending);
            continue;
          }
          await beforeDeadline(this.opts.lease.rotateNow('credentials refused by Postgres'), callDeadline, 'new credentials (Postgres refused the current ones, and Vault has not issued new ones yet)');
          if (this.active === gen) this.swapTo(this.opts.lease.current(), { now: true });
          continue;
        }
        if (AUTH_FAILED.has(e?.code) && !gen.connected) {
          this.count(e.code === '28P01' ? 'auth_refused_fresh' : 'auth_refused_28000');
          if (e.code === '28P01' && gen === this.active && Date.now() >= this.nextFreshRotationAt) {
            this.nextFreshRotationAt = Date.now() + backoffDelay(this.freshRefusals++, { initialMillis: 1000, maxMillis: 60_000 });
            const rotation: Promise<void> = this.opts.lease
              .rotateNow('new credentials refused by Postgres')
              .then((c) => this.swapTo(c))
              .catch(() => undefined)
              .finally(() => {
                if (this.freshRotation === rotation) this.freshRotation = undefined;
              });
            this.freshRotation = rotation;
          }
          // Credentials revoked before their first login (a revocation racing a rotation): every
          // request refused meanwhile waits for the one rotation under way (or finds it done: the
          // refusals of concurrent logins come back one by one), then tries once more.
          if (e.code === '28P01' && !renewed && (this.freshRotation || this.active !== gen)) {
            renewed = true;
            // Past the deadline or without new credentials, the refusal itself is the answer.
            const replaced =
              this.active !== gen ||
              (await beforeDeadline(this.freshRotation!, callDeadline, 'new credentials').then(
                () => this.active !== gen,
                () => false,
              ));
            if (replaced) continue;
          }
          throw this.fail(e, 'connect', 'Postgres refused credentials it never accepted before: check its clock against Vault\'s, pg_hba.conf and the role\'s LOGIN attribute');
        }
        if (AUTH_FAILED.has(e?.code)) {
          this.count(e.code === '28P01' ? 'auth_refused' : 'auth_refused_28000');
          throw this.fail(e, 'connect');
        }
        const delay = backoffDelay(attempt, { initialMillis: 100, maxMillis: 1000 });
        // A pause that would end past the deadline cannot help: say the database is unavailable now.
        if (!transientConnectError(e) || Date.now() + delay > deadline || this.closed) throw this.fail(e, 'connect');
        this.count('connect_retry');
        await sleep(delay);
      }
    }
  }

  /**
   * The answer of `work` (statements on `client`), bounded by `deadline`: at the deadline a
   * cancel request goes to Postgres; its confirmation (57014) means the statement did not
   * happen. Without an answer within cancelTimeoutMillis (a frozen or unreachable server), the
   * caller's release(error) destroys the connection, and the outcome is unknown.
   */
  private bounded<T>(client: PoolClient, work: Promise<T>, deadline: number | undefined, onCancel: () => void): Promise<T> {
    if (deadline === undefined) return work;
    // The answer before the deadline (nearly always) settles this with one timer and no race:
    // it runs for every statement.
    return new Promise<T>((resolve, reject) => {
      let late = false;
      const timer = setTimeout(() => {
        late = true;
        this.pastDeadline(client, work, onCancel).then(resolve, reject);
      }, Math.max(0, deadline - Date.now()));
      work.then(
        (value) => {
          if (late) return;
          clearTimeout(timer);
          resolve(value);
        },
        (error) => {
          if (late) return;
          clearTimeout(timer);
          reject(error);
        },
      );
    });
  }

  /** bounded(), once the deadline passed without an answer: cancel, then wait a grace period for one. */
  private async pastDeadline<T>(client: PoolClient, work: Promise<T>, onCancel: () => void): Promise<T> {
    type Settled = { value: T } | { error: any };
    const settled: Promise<Settled> = work.then((value) => ({ value }), (error) => ({ error }));
    onCancel();
    const waitMillis = this.opts.cancelTimeoutMillis ?? 1000;
    this.sendCancel(client, waitMillis);
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), waitMillis)));
    const result = await Promise.race([settled, grace]);
    clearTimeout(timer);
    if (!result) {
      this.count('outcome_unknown');
      // The caller may give the client back without an error (the pg.Pool face): it must not be reused.
      destroyConnection(client);
      throw new OutcomeUnknownError(
        'DB_OUTCOME_UNKNOWN',
        `no answer from Postgres by the deadline, nor within ${waitMillis} ms of the cancel request sent then (a frozen or unreachable server); the connection is closed, and whether the statement took effect is unknown`,
      );
    }
    if ('error' in result) {
      if (result.error?.code === '57014') {
        throw new QueryDeadlineError('DB_DEADLINE', 'the statement was cancelled at its deadline, and Postgres confirmed it: it did not take effect', '57014');
      }
      throw result.error;
    }
    return result.value;
  }

  /** Pool sizes across the current and retiring pools. */
  stats(): { total: number; idle: number; waiting: number; retiring: number } {
    const gens = [this.active, ...(this.pending ? [this.pending] : []), ...this.retiring];
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

  /** Stops taking queries, lets in-flight ones finish (for up to `timeoutMillis`), and closes every pool. */
  async close(opts: { timeoutMillis?: number } = {}): Promise<void> {
    this.closed = true;
    const all = [this.active, ...(this.pending ? [this.pending] : []), ...this.retiring];
    await Promise.all(all.map((g) => this.drain(g, opts.timeoutMillis)));
  }

  private generation(creds: DatabaseCredentials): Generation {
    const ttl = Math.max(1, creds.leaseDurationSeconds);
    const lifetime = this.opts.maxLifetimeSeconds ?? Math.max(1, Math.floor(ttl / 2));
    const statementTimeoutMillis = this.opts.statementTimeoutMillis ?? 30_000;
    const pool = new Pool({
      host: this.opts.host,
      port: this.opts.port,
      database: this.opts.database,
      user: creds.username,
      password: creds.password,
      ssl: pgSsl(this.opts.sslmode, { ca: this.opts.ca }),
      max: this.opts.max ?? 10,
      connectionTimeoutMillis: this.opts.connectionTimeoutMillis ?? 5000,
      idleTimeoutMillis: this.opts.idleTimeoutMillis ?? 10_000,
      maxLifetimeSeconds: Math.min(lifetime, Math.max(1, ttl - 1), MAX_LIFETIME_SECONDS),
      application_name: this.opts.applicationName ?? 'pgvault-app',
      Client: GuardedClient,
      // A host that is gone (no FIN, no RST) is noticed by keepalive probes, not after tcp_retries2 (~15 min).
      keepAlive: true,
      keepAliveInitialDelayMillis: this.opts.keepAliveInitialDelayMillis ?? 10_000,
      // In the startup packet: no SET round trip per query or connection.
      ...(statementTimeoutMillis > 0 && { options: `-c statement_timeout=${Math.round(statementTimeoutMillis)}` }),
    });
    // An idle client whose backend goes away (restart, revocation) must not crash the process.
    pool.on('error', (e: any, client: PoolClient) => {
      this.count(e?.code === '57P01' ? 'terminated' : 'idle_error');
      this.emit('idleError', e, client);
    });
    const gen: Generation = { pool, creds, inFlight: 0, connected: false, drainWaiters: [] };
    this.byPool.set(pool, gen);
    return gen;
  }

  private readonly byPool = new WeakMap<Pool, Generation>();
  private readonly clientOwner = new WeakMap<PoolClient, Generation>();
  /** Clients a cancel request was sent on: a cancel that reaches the backend late would hit the next user's statement. */
  private readonly cancelSent = new WeakSet<PoolClient>();

  /** An error that makes release() destroy `client` rather than keep it, when a cancel was sent on it. */
  private spoiled(client: PoolClient): Error | undefined {
    return this.cancelSent.has(client) ? new AppError('DB_CANCEL_SENT', 'a cancel request was sent on this connection') : undefined;
  }

  /**
   * Bounds each promise-style `client.query` by statementTimeoutMillis + cancelTimeoutMillis from
   * when it is called, or from the answer of the statement before it on the same client (see
   * StatementWatch). Callback and Submittable (cursor, stream) forms are left as they are: their
   * callers own their waits.
   */
  private boundStatements(client: PoolClient): void {
    const statementTimeoutMillis = this.opts.statementTimeoutMillis ?? 30_000;
    if (statementTimeoutMillis <= 0) return;
    const graceMillis = this.opts.cancelTimeoutMillis ?? 1000;
    const query = client.query as (...args: unknown[]) => unknown;
    const watch = new StatementWatch(
      client,
      query,
      statementTimeoutMillis + graceMillis,
      graceMillis,
      (c) => this.sendCancel(c, graceMillis),
      () => this.count('outcome_unknown'),
    );
    (client as Watched)[WATCH] = watch;
    client.once('end', () => watch.stop());
    client.query = function boundedQuery(this: PoolClient, ...args: unknown[]) {
      const first = args[0] as { submit?: unknown; callback?: unknown } | undefined;
      if (typeof args[args.length - 1] === 'function' || typeof first?.submit === 'function' || typeof first?.callback === 'function') {
        return query.apply(client, args);
      }
      watch.sent();
      let result: unknown;
      try {
        result = query.apply(client, args);
      } catch (e) {
        watch.answered();
        throw e;
      }
      if (typeof (result as Promise<unknown> | undefined)?.then !== 'function') {
        watch.answered();
        return result;
      }
      return (result as Promise<unknown>).then(watch.onAnswer, watch.onError);
    } as PoolClient['query'];
  }

  /** A cancel request for the statement running on `client`, which is not used again. */
  private sendCancel(client: PoolClient, waitMillis: number): void {
    this.cancelSent.add(client);
    this.count('deadline_cancel');
    const c = client as unknown as { processID?: number; secretKey?: number };
    if (typeof c.processID === 'number' && typeof c.secretKey === 'number') {
      void sendCancelRequest(this.opts.host, this.opts.port, c.processID, c.secretKey, waitMillis);
    } else {
      this.count('cancel_unavailable');
    }
  }

  private async acquire(gen: Generation): Promise<PoolClient> {
    gen.inFlight++;
    try {
      const client = await gen.pool.connect();
      if (!this.clientOwner.has(client)) {
        // A checked-out client whose backend dies (restart, revocation) emits 'error' besides
        // failing its query: without a listener that would crash the process.
        client.on('error', (e: any) => this.count(e?.code === '57P01' ? 'terminated' : 'connection_lost'));
        this.boundStatements(client);
      }
      this.clientOwner.set(client, gen);
      return client;
    } catch (e) {
      this.done(gen);
      throw e;
    }
  }

  /** acquire(), but a client that arrives after the deadline goes straight back. */
  private acquireBefore(gen: Generation, deadline?: number): Promise<PoolClient> {
    // More idle clients than callers queued before this one: pg-pool hands one over on the next
    // tick (no I/O in between), so no deadline can pass; spares a timer (and a promise).
    if (gen.pool.idleCount > gen.pool.waitingCount) return this.acquire(gen);
    return this.acquireWaiting(gen, deadline);
  }

  private async acquireWaiting(gen: Generation, deadline?: number): Promise<PoolClient> {
    const pending = this.acquire(gen);
    try {
      return await beforeDeadline(pending, deadline, 'a database connection');
    } catch (e: any) {
      if (e?.code === 'REQUEST_DEADLINE') {
        pending.then((c) => {
          c.release();
          this.done(gen);
        }, () => undefined);
      }
      throw e;
    }
  }

  private generationOf(client: PoolClient): Generation {
    return this.clientOwner.get(client) ?? this.active;
  }

  private done(gen: Generation): void {
    gen.inFlight--;
    if (gen.inFlight === 0) for (const wake of gen.drainWaiters.splice(0)) wake();
  }

  private swap(previous: DatabaseCredentials, current: DatabaseCredentials): void {
    if (this.active.creds === current) return;
    if (this.active.creds !== previous) {
      // Not the lease this pool is on (already swapped by an auth retry): just retire it.
      void this.opts.lease.retire(previous);
    }
    this.swapTo(current);
  }

  /**
   * Moves new work to `current`. On a replica, while the active credentials work and `now` is
   * not asked (they were refused), the new ones are probed first and take over only once the
   * replica accepted them: a replay lag then fails nothing and issues nothing more.
   */
  private swapTo(current: DatabaseCredentials, opts: { now?: boolean } = {}): void {
    if (this.closed || this.active.creds === current) return;
    if (this.pending?.creds === current) {
      if (opts.now) this.promote(this.pending);
      return;
    }
    if (this.pending) {
      // Newer credentials replace the ones still probed.
      this.retireGeneration(this.pending);
      this.pending = undefined;
    }
    const next = this.generation(current);
    if (!opts.now && (this.opts.replicaLagWindowMillis ?? 0) > 0 && this.active.connected) {
      this.pending = next;
      void this.probe(next);
      return;
    }
    this.promote(next);
  }

  private promote(next: Generation): void {
    if (this.pending === next) this.pending = undefined;
    const old = this.active;
    this.active = next;
    this.rotations++;
    this.emit('swapped', old.creds.username, next.creds.username);
    this.retireGeneration(old);
  }

  /** Drains a generation nobody takes new work to, then revokes its lease. */
  private retireGeneration(old: Generation): void {
    this.retiring.add(old);
    const started = Date.now();
    void this.drain(old, undefined, { background: true }).then(async () => {
      this.retiring.delete(old);
      this.emit('drained', old.creds.username, Date.now() - started);
      await this.opts.lease.retire(old.creds);
    });
  }

  /**
   * Logs in with pending credentials until the replica accepts them (with backoff), then makes
   * them active. Ends when they are replaced, taken over at once, or the pool closes.
   */
  private async probe(gen: Generation): Promise<void> {
    for (let attempt = 0; this.pending === gen && !this.closed; attempt++) {
      try {
        const client = await this.acquire(gen);
        client.release();
        this.done(gen);
        gen.connected = true;
        if (this.pending === gen && !this.closed) this.promote(gen);
        return;
      } catch {
        // Not replayed yet (28P01), or Postgres unreachable (for the active credentials too).
        this.pendingProbes++;
        this.count('replica_lag_probe');
        await new Promise((r) => setTimeout(r, backoffDelay(attempt, { initialMillis: 100, maxMillis: 1000 })).unref());
      }
    }
  }

  /**
   * Waits for in-flight work (at most the drain timeout), then ends the pool (a stuck client
   * does not hold it up). A `background` drain (a rotation's) never holds the process open.
   */
  private async drain(gen: Generation, timeoutMillis = this.opts.drainTimeoutMillis ?? 30_000, opts: { background?: boolean } = {}): Promise<void> {
    const end = Date.now() + timeoutMillis;
    if (gen.inFlight > 0) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(wake, timeoutMillis);
        if (opts.background) t.unref();
        function wake() {
          clearTimeout(t);
          const i = gen.drainWaiters.indexOf(wake);
          if (i >= 0) gen.drainWaiters.splice(i, 1);
          resolve();
        }
        gen.drainWaiters.push(wake);
      });
    }
    // Closing idle connections takes milliseconds; a close() keeps to its budget, a rotation may linger.
    await beforeDeadline(gen.pool.end(), Math.max(end, Date.now() + (opts.background ? 1000 : 100)), 'the pool to end').catch(() => undefined);
  }

  private count(reason: string): void {
    this.failures.set(reason, (this.failures.get(reason) ?? 0) + 1);
  }

  private fail(e: any, operation: string, hint?: string): AppError {
    if (e instanceof AppError) return e;
    const reason = e?.code && /^[0-9A-Z]{5}$/.test(e.code) ? `sqlstate_${e.code}` : (e?.code ?? 'error').toString().toLowerCase();
    this.count(reason);
    if (operation === 'query' && connectionLost(e)) {
      // Sent, and the connection broke before its answer: it may have committed.
      const err = new OutcomeUnknownError('DB_OUTCOME_UNKNOWN', `query failed: ${e?.message ?? e}; the connection broke before Postgres answered, so whether the statement took effect is unknown`);
      if (this.listenerCount('error') > 0) this.emit('error', err, operation);
      return err;
    }
    // Keep Postgres's own message for the logs; it never contains the password.
    // Only Postgres's own errors carry a SQLSTATE (a socket's EPIPE has the same shape).
    const sqlState = typeof e?.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code) && e.syscall === undefined ? e.code : undefined;
    const err = new DatabaseError('DB_' + operation.toUpperCase(), `${operation} failed: ${e?.message ?? e}${hint ? `; ${hint}` : ''}`, sqlState, { cause: undefined });
    if (this.listenerCount('error') > 0) this.emit('error', err, operation);
    return err;
  }
}
