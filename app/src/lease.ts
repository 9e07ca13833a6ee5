import { EventEmitter } from 'node:events';
import { AppError, VaultRequestError } from './errors';
import { BackoffOptions, backoffDelay, cappedDelay, renewalDelayMillis } from './backoff';
import { DatabaseCredentials } from './vault';

/** The calls a lease manager makes; VaultSession implements them. */
export interface LeaseSession {
  /** Counts logins; a lease issued under an older generation dies with the older token. */
  readonly tokenGeneration: number;
  issue(mount: string, role: string): Promise<DatabaseCredentials>;
  renew(leaseId: string, incrementSeconds?: number): Promise<number>;
  revoke(leaseId: string, opts?: { timeoutMillis?: number }): Promise<void>;
  /** Logs in again unless a login newer than `failedGeneration` exists; concurrent calls share one login. */
  reloginNow(failedGeneration: number): Promise<void>;
  /**
   * After a 403: logs in again only when Vault refuses the token itself (then resolves true);
   * false when the 403 is the path's own (an edited policy), to be retried with backoff.
   */
  reloginIfTokenRefused(failedGeneration: number): Promise<boolean>;
}

export interface LeaseManagerOptions {
  readonly session: LeaseSession;
  readonly mount: string;
  readonly role: string;
  /** The role's max TTL, when known (from the deploy outputs): rotation happens before it. */
  readonly maxTtlSeconds?: number;
  /** Renew at this fraction of the lease. @default 2/3 */
  readonly renewFraction?: number;
  /** Spread of the renewal time, as a fraction of the lease. @default 0.1 */
  readonly jitter?: number;
  readonly backoff?: BackoffOptions;
  /** How long `start()` keeps retrying before it gives up. @default 30000 */
  readonly startTimeoutMillis?: number;
  /**
   * How many times a failed revocation of a retired lease is tried again, with backoff, and
   * never past the lease's expiry (Vault drops the user then itself). @default 10
   */
  readonly revokeRetries?: number;
}

/** Events: issued, renewed, rotated, revoked, lost, error. None carries a password in its enumerable fields. */
export interface LeaseManagerEvents {
  issued: [creds: DatabaseCredentials];
  renewed: [creds: DatabaseCredentials, leaseDurationSeconds: number];
  /** A renewal was sent (counted whether or not it succeeds). */
  renewAttempt: [creds: DatabaseCredentials];
  rotated: [previous: DatabaseCredentials, current: DatabaseCredentials, reason: string];
  revoked: [creds: DatabaseCredentials];
  /** The current lease was found gone (revoked or expired behind the manager's back). */
  lost: [creds: DatabaseCredentials, reason: string];
  error: [error: AppError, operation: string];
}

/**
 * Keeps one role's credentials alive: renews the lease at about two thirds of its
 * TTL (with jitter), and when renewal is capped by the max TTL, the lease is gone or
 * expired, or its token was replaced, issues new credentials before the old ones expire.
 * Failed calls are retried with bounded exponential backoff; an expired lease is never
 * renewed. A 403 from Vault leads to a new login only when the token itself is refused;
 * otherwise it is the path's error, retried with backoff.
 * The previous credentials of a rotation are renewed while they drain (within their max
 * TTL) and revoked at `retire()`, which the pool calls once they are drained; a failed
 * revocation is retried with backoff (revokeRetries), and the lease is not renewed meanwhile.
 */
export class LeaseManager extends EventEmitter<LeaseManagerEvents> {
  public readonly role: string;
  private readonly opts: LeaseManagerOptions;
  private creds?: DatabaseCredentials;
  /** Lease expiry (ms since epoch) of the current credentials. */
  private expiresAt = 0;
  private capped = false;
  private timer?: NodeJS.Timeout;
  private stopped = false;
  private wake?: () => void;
  private rotation?: Promise<DatabaseCredentials>;
  private lastRotationAt = 0;
  private readonly held = new Set<DatabaseCredentials>();
  /** Renewal timers of credentials that a rotation replaced and that are still draining. */
  private readonly retiring = new Map<DatabaseCredentials, NodeJS.Timeout>();
  /** Credentials waiting for their revocation to be tried again: never renewed. */
  private readonly revoking = new Map<DatabaseCredentials, NodeJS.Timeout | undefined>();
  /** When each held lease expires (ms since epoch), as far as this manager knows. */
  private readonly expiry = new Map<DatabaseCredentials, number>();

  constructor(opts: LeaseManagerOptions) {
    super();
    this.opts = opts;
    this.role = opts.role;
  }

  /** Issues the first credentials, retrying with backoff up to startTimeoutMillis. */
  async start(): Promise<DatabaseCredentials> {
    const deadline = Date.now() + (this.opts.startTimeoutMillis ?? 30_000);
    const creds = await this.issueCurrent(deadline);
    this.install(creds);
    return creds;
  }

  /** The credentials new connections should use. */
  current(): DatabaseCredentials {
    if (!this.creds) throw new AppError('LEASE_NOT_STARTED', `no credentials for role ${this.role} yet; call start()`);
    return this.creds;
  }

  get secondsToExpiry(): number {
    return this.creds ? Math.max(0, (this.expiresAt - Date.now()) / 1000) : 0;
  }

  /** Seconds until the current credentials reach the role's max TTL (undefined when unknown). */
  get secondsToMaxTtl(): number | undefined {
    if (!this.creds || this.opts.maxTtlSeconds === undefined) return undefined;
    return Math.max(0, (this.creds.issuedAt + this.opts.maxTtlSeconds * 1000 - Date.now()) / 1000);
  }

  /** The TTL of the current lease when it was issued. */
  get leaseDurationSeconds(): number {
    return this.creds?.leaseDurationSeconds ?? 0;
  }

  /**
   * Issues new credentials now (once at a time; at most once a second unless `force`),
   * for example when Postgres refused the current ones. Resolves with the current credentials.
   * A forced rotation also replaces credentials of an older token than the session's.
   */
  rotateNow(reason: string, opts: { force?: boolean } = {}): Promise<DatabaseCredentials> {
    if (this.rotation) return this.rotation;
    if (!opts.force && this.creds && Date.now() - this.lastRotationAt < 1000) return Promise.resolve(this.creds);
    return this.startRotation(reason);
  }

  /** One rotation at a time; the scheduled ones are not rate-limited. */
  private startRotation(reason: string): Promise<DatabaseCredentials> {
    if (this.rotation) return this.rotation;
    this.rotation = this.rotate(reason).finally(() => {
      this.rotation = undefined;
    });
    return this.rotation;
  }

  /** Revokes credentials that a rotation replaced, once nothing uses them. */
  async retire(creds: DatabaseCredentials): Promise<void> {
    if (!this.held.has(creds) || creds === this.creds || this.revoking.has(creds)) return;
    await this.revokeLease(creds, undefined, 0);
  }

  /** The oldest login generation among the leases held (Infinity when none): older tokens may be revoked. */
  get oldestTokenGeneration(): number {
    return Math.min(Infinity, ...[...this.held].map((c) => c.tokenGeneration));
  }

  /**
   * Stops renewing and revokes every lease this manager holds, each call bounded by
   * `timeoutMillis`. A lease that cannot be revoked (Vault down) expires by itself.
   */
  async stop(opts: { timeoutMillis?: number } = {}): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    for (const t of this.retiring.values()) clearTimeout(t);
    this.retiring.clear();
    for (const t of this.revoking.values()) clearTimeout(t);
    this.revoking.clear();
    this.wake?.();
    await Promise.all([...this.held].map((c) => this.revokeLease(c, opts.timeoutMillis)));
    this.creds = undefined;
  }

  /** Leases held (current and draining); after stop(), the ones that could not be revoked. */
  get heldCount(): number {
    return this.held.size;
  }

  private async issue(): Promise<DatabaseCredentials> {
    const creds = await this.opts.session.issue(this.opts.mount, this.opts.role);
    this.held.add(creds);
    if (this.stopped) {
      // Stopped while the request was in flight: nobody will use these.
      await this.revokeLease(creds);
      throw new AppError('LEASE_STOPPED', `lease manager for ${this.role} stopped`);
    }
    this.emit('issued', creds);
    return creds;
  }

  /**
   * Issues credentials of the session's current token. Credentials that come back from a
   * token replaced while the request was in flight are revoked and asked for again: Vault
   * revokes them when the old token goes. A 403 asks the session to log in again.
   */
  private async issueCurrent(deadline = Infinity): Promise<DatabaseCredentials> {
    for (let attempt = 0; ; attempt++) {
      if (this.stopped) throw new AppError('LEASE_STOPPED', `lease manager for ${this.role} stopped`);
      const generation = this.opts.session.tokenGeneration;
      try {
        const creds = await this.issue();
        if (creds.tokenGeneration >= this.opts.session.tokenGeneration) return creds;
        void this.revokeLease(creds, undefined, 0);
        attempt = -1;
        continue;
      } catch (e) {
        if (this.stopped) throw e;
        this.report(e, 'issue');
        // A 403 of the creds path alone (an edited policy) is retried as it is: a new login cannot help.
        if (forbidden(e)) await this.opts.session.reloginIfTokenRefused(generation).catch(() => false);
        const delay = backoffDelay(attempt, this.opts.backoff);
        if (Date.now() + delay > deadline) throw e;
        await this.pause(delay);
      }
    }
  }

  private install(creds: DatabaseCredentials): void {
    this.creds = creds;
    this.expiresAt = creds.issuedAt + creds.leaseDurationSeconds * 1000;
    this.expiry.set(creds, this.expiresAt);
    this.capped = false;
    this.lastRotationAt = Date.now();
    this.schedule(creds.leaseDurationSeconds);
  }

  private schedule(ttlSeconds: number, delayMillis?: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    const delay = delayMillis ?? renewalDelayMillis(ttlSeconds, this.opts.renewFraction, this.opts.jitter);
    this.timer = setTimeout(() => void this.tick(0), cappedDelay(delay));
    this.timer.unref();
  }

  private async tick(attempt: number): Promise<void> {
    if (this.stopped || !this.creds) return;
    const creds = this.creds;
    // An expired lease is gone in Vault: never renew it, replace it.
    if (Date.now() >= this.expiresAt) {
      await this.startRotation('lease expired').catch(() => undefined);
      return;
    }
    if (creds.tokenGeneration < this.opts.session.tokenGeneration) {
      await this.startRotation('new Vault token').catch(() => undefined);
      return;
    }
    const toMax = this.secondsToMaxTtl;
    // Renewing further cannot help when the lease is capped, or the max TTL is within reach.
    if (this.capped || !creds.renewable || (toMax !== undefined && toMax < creds.leaseDurationSeconds)) {
      await this.startRotation(this.capped ? 'max TTL reached' : 'max TTL near').catch(() => undefined);
      return;
    }
    const generation = this.opts.session.tokenGeneration;
    try {
      const sentAt = Date.now();
      this.emit('renewAttempt', creds);
      const duration = await this.opts.session.renew(creds.leaseId, creds.leaseDurationSeconds);
      if (this.creds !== creds || this.stopped) return;
      this.expiresAt = sentAt + duration * 1000;
      this.expiry.set(creds, this.expiresAt);
      this.capped = duration < creds.leaseDurationSeconds;
      this.emit('renewed', creds, duration);
      this.schedule(duration);
    } catch (e) {
      if (this.creds !== creds || this.stopped) return;
      this.report(e, 'renew');
      if (leaseGone(e)) {
        this.emit('lost', creds, 'Vault says the lease is gone');
        await this.startRotation('lease revoked').catch(() => undefined);
        return;
      }
      if (forbidden(e) && (await this.opts.session.reloginIfTokenRefused(generation).catch(() => false))) {
        // The token was revoked or expired, and its leases with it.
        await this.startRotation('Vault token refused').catch(() => undefined);
        return;
      }
      if (this.creds !== creds || this.stopped) return;
      // Vault unreachable or failing: retry with backoff, but not past the expiry (then rotate).
      const remaining = this.expiresAt - Date.now();
      const delay = Math.min(backoffDelay(attempt, this.opts.backoff), Math.max(0, remaining));
      if (this.timer) clearTimeout(this.timer);
      this.timer = setTimeout(() => void this.tick(attempt + 1), cappedDelay(delay));
      this.timer.unref();
    }
  }

  private async rotate(reason: string): Promise<DatabaseCredentials> {
    const previous = this.creds;
    const previousExpiresAt = this.expiresAt;
    const next = await this.issueCurrent();
    this.install(next);
    if (previous) {
      this.renewWhileDraining(previous, previousExpiresAt);
      if (this.listenerCount('rotated') > 0) this.emit('rotated', previous, next, reason);
      else await this.retire(previous);
    }
    return next;
  }

  /**
   * Renews replaced credentials while they drain, so a transaction in progress is not cut
   * at their expiry; Vault caps the renewals at the role's max TTL (and at the token's life).
   */
  private renewWhileDraining(creds: DatabaseCredentials, expiresAt: number): void {
    const plan = (until: number) => {
      if (this.stopped || !this.held.has(creds) || this.revoking.has(creds)) return;
      const remaining = until - Date.now();
      if (remaining <= 0) return;
      const t = setTimeout(async () => {
        if (this.stopped || !this.held.has(creds) || this.revoking.has(creds)) return;
        try {
          const sentAt = Date.now();
          this.emit('renewAttempt', creds);
          const duration = await this.opts.session.renew(creds.leaseId, creds.leaseDurationSeconds);
          if (duration > 0) this.expiry.set(creds, Math.max(this.expiry.get(creds) ?? 0, sentAt + duration * 1000));
          if (duration > 0 && sentAt + duration * 1000 > until) plan(sentAt + duration * 1000);
        } catch (e) {
          // Expiry, the max TTL or a down Vault ends the extension; the drain timeout bounds the rest.
          if (!leaseGone(e)) this.report(e, 'renew_retiring');
        }
      }, cappedDelay(remaining * (this.opts.renewFraction ?? 2 / 3)));
      t.unref();
      this.retiring.set(creds, t);
    };
    plan(expiresAt);
  }

  /**
   * Revokes a lease. With `attempt` (a retired lease), a failure is tried again with backoff,
   * at most revokeRetries times and not past the lease's expiry; meanwhile it is not renewed.
   */
  private async revokeLease(creds: DatabaseCredentials, timeoutMillis?: number, attempt?: number): Promise<void> {
    const t = this.retiring.get(creds);
    if (t) clearTimeout(t);
    this.retiring.delete(creds);
    if (attempt !== undefined) this.revoking.set(creds, undefined);
    try {
      await this.opts.session.revoke(creds.leaseId, timeoutMillis === undefined ? undefined : { timeoutMillis });
      this.forget(creds);
      this.emit('revoked', creds);
    } catch (e) {
      if (leaseGone(e)) {
        this.forget(creds);
        return;
      }
      this.report(e, 'revoke');
      if (attempt === undefined || this.stopped || !this.revoking.has(creds)) return;
      const expiresAt = this.expiry.get(creds) ?? creds.issuedAt + creds.leaseDurationSeconds * 1000;
      const delay = backoffDelay(attempt, this.opts.backoff);
      if (attempt >= (this.opts.revokeRetries ?? 10) || Date.now() + delay >= expiresAt) {
        // Past the last try, or the lease expires first: Vault drops the user at its expiry.
        this.revoking.delete(creds);
        return;
      }
      const retry = setTimeout(() => {
        if (this.revoking.get(creds) === retry) void this.revokeLease(creds, undefined, attempt + 1);
      }, cappedDelay(delay));
      retry.unref();
      this.revoking.set(creds, retry);
    }
  }

  private forget(creds: DatabaseCredentials): void {
    this.held.delete(creds);
    this.revoking.delete(creds);
    this.expiry.delete(creds);
  }

  /** Sleeps, but stop() wakes it. */
  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, cappedDelay(ms));
      function done() {
        clearTimeout(t);
        resolve();
      }
      this.wake = done;
    });
  }

  private report(e: unknown, operation: string): void {
    const err = e instanceof AppError ? e : new AppError('LEASE_ERROR', String((e as Error)?.message ?? e));
    if (this.listenerCount('error') > 0) this.emit('error', err, operation);
  }
}

/** Vault says the lease no longer exists (revoked or expired behind our back). */
export function leaseGone(e: unknown): boolean {
  return e instanceof VaultRequestError && e.status === 400 && /lease (not found|is not renewable|.*expired)|invalid lease/i.test(e.message);
}

/** Vault refused the token (revoked or expired): log in again. */
function forbidden(e: unknown): boolean {
  return e instanceof VaultRequestError && e.status === 403;
}
