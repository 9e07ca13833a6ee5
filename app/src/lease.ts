import { EventEmitter } from 'node:events';
import { AppError, VaultRequestError } from './errors';
import { BackoffOptions, backoffDelay, renewalDelayMillis, sleep } from './backoff';
import { DatabaseCredentials, VaultSession } from './vault';

export interface LeaseManagerOptions {
  readonly session: VaultSession;
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
}

/** Events: issued, renewed, rotated, revoked, error. None carries a password in its enumerable fields. */
export interface LeaseManagerEvents {
  issued: [creds: DatabaseCredentials];
  renewed: [creds: DatabaseCredentials, leaseDurationSeconds: number];
  rotated: [previous: DatabaseCredentials, current: DatabaseCredentials, reason: string];
  revoked: [creds: DatabaseCredentials];
  error: [error: AppError, operation: string];
}

/**
 * Keeps one role's credentials alive: renews the lease at about two thirds of its
 * TTL (with jitter), and when renewal is capped by the max TTL, or the lease is
 * gone, issues new credentials before the old ones expire. Failed calls are retried
 * with bounded exponential backoff. The previous credentials of a rotation are held
 * until `retire()` (the pool calls it once drained) and revoked then.
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
  private rotation?: Promise<DatabaseCredentials>;
  private lastRotationAt = 0;
  private readonly held = new Set<DatabaseCredentials>();

  constructor(opts: LeaseManagerOptions) {
    super();
    this.opts = opts;
    this.role = opts.role;
  }

  /** Issues the first credentials, retrying with backoff up to startTimeoutMillis. */
  async start(): Promise<DatabaseCredentials> {
    const deadline = Date.now() + (this.opts.startTimeoutMillis ?? 30_000);
    for (let attempt = 0; ; attempt++) {
      try {
        const creds = await this.issue();
        this.install(creds);
        return creds;
      } catch (e) {
        this.report(e, 'issue');
        if (Date.now() > deadline || this.stopped) throw e;
        await sleep(backoffDelay(attempt, this.opts.backoff));
      }
    }
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
    if (!this.held.has(creds) || creds === this.creds) return;
    await this.revokeLease(creds);
  }

  /** Stops renewing and revokes every lease this manager holds. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await Promise.all([...this.held].map((c) => this.revokeLease(c)));
    this.creds = undefined;
  }

  private async issue(): Promise<DatabaseCredentials> {
    const creds = await this.opts.session.issue(this.opts.mount, this.opts.role);
    this.held.add(creds);
    this.emit('issued', creds);
    return creds;
  }

  private install(creds: DatabaseCredentials): void {
    this.creds = creds;
    this.expiresAt = creds.issuedAt + creds.leaseDurationSeconds * 1000;
    this.capped = false;
    this.lastRotationAt = Date.now();
    this.schedule(creds.leaseDurationSeconds);
  }

  private schedule(ttlSeconds: number, delayMillis?: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    const delay = delayMillis ?? renewalDelayMillis(ttlSeconds, this.opts.renewFraction, this.opts.jitter);
    this.timer = setTimeout(() => void this.tick(0), delay);
    this.timer.unref();
  }

  private async tick(attempt: number): Promise<void> {
    if (this.stopped || !this.creds) return;
    const creds = this.creds;
    const toMax = this.secondsToMaxTtl;
    // Renewing further cannot help when the lease is capped, or the max TTL is within reach.
    if (this.capped || !creds.renewable || (toMax !== undefined && toMax < creds.leaseDurationSeconds)) {
      await this.startRotation(this.capped ? 'max TTL reached' : 'max TTL near').catch(() => undefined);
      return;
    }
    try {
      const duration = await this.opts.session.renew(creds.leaseId, creds.leaseDurationSeconds);
      if (this.creds !== creds || this.stopped) return;
      this.expiresAt = Date.now() + duration * 1000;
      this.capped = duration < creds.leaseDurationSeconds;
      this.emit('renewed', creds, duration);
      this.schedule(duration);
    } catch (e) {
      if (this.creds !== creds || this.stopped) return;
      this.report(e, 'renew');
      if (leaseGone(e)) {
        await this.startRotation('lease revoked').catch(() => undefined);
        return;
      }
      // Vault unreachable or failing: retry with backoff, but not past the expiry.
      const remaining = this.expiresAt - Date.now();
      const delay = Math.min(backoffDelay(attempt, this.opts.backoff), Math.max(200, remaining / 2));
      if (this.timer) clearTimeout(this.timer);
      this.timer = setTimeout(() => void this.tick(attempt + 1), delay);
      this.timer.unref();
    }
  }

  private async rotate(reason: string): Promise<DatabaseCredentials> {
    for (let attempt = 0; !this.stopped; attempt++) {
      try {
        const previous = this.creds;
        const next = await this.issue();
        this.install(next);
        if (previous) {
          if (this.listenerCount('rotated') > 0) this.emit('rotated', previous, next, reason);
          else await this.retire(previous);
        }
        return next;
      } catch (e) {
        this.report(e, 'rotate');
        await sleep(backoffDelay(attempt, this.opts.backoff));
      }
    }
    throw new AppError('LEASE_STOPPED', `lease manager for ${this.role} stopped`);
  }

  private async revokeLease(creds: DatabaseCredentials): Promise<void> {
    try {
      await this.opts.session.revoke(creds.leaseId);
      this.held.delete(creds);
      this.emit('revoked', creds);
    } catch (e) {
      if (leaseGone(e)) {
        this.held.delete(creds);
        return;
      }
      this.report(e, 'revoke');
    }
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
