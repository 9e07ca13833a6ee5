import { AppConfig } from './config';
import { AppError } from './errors';
import { BackoffOptions, backoffDelay, sleep } from './backoff';
import { LeaseManager } from './lease';
import { RotatingPool } from './pool';
import { VaultSession } from './vault';

export interface RuntimeOptions {
  /** Roles to hold credentials for. @default every role in the config */
  readonly roles?: readonly string[];
  /** How long start-up keeps retrying Vault before it gives up. @default 30000 */
  readonly startTimeoutMillis?: number;
  readonly backoff?: BackoffOptions;
  /** Connections per role's pool. @default 10 */
  readonly poolSize?: number;
  /** Called for each start-up attempt that failed (for a one-line log). */
  readonly onRetry?: (attempt: number, error: AppError, delayMillis: number) => void;
}

/**
 * The app's credential runtime: an AppRole session kept alive, one lease manager and
 * one rotating pool per role, and an orderly shutdown that revokes everything.
 */
export class CredentialRuntime {
  public readonly session: VaultSession;
  public readonly leases = new Map<string, LeaseManager>();
  public readonly pools = new Map<string, RotatingPool>();
  private closing?: Promise<void>;

  private constructor(session: VaultSession) {
    this.session = session;
  }

  /** Logs in and issues credentials for every role, retrying with bounded backoff. */
  static async start(cfg: AppConfig, opts: RuntimeOptions = {}): Promise<CredentialRuntime> {
    const session = new VaultSession({ address: cfg.vaultAddress, caCert: cfg.vaultCaCert });
    const deadline = Date.now() + (opts.startTimeoutMillis ?? 30_000);
    for (let attempt = 1; ; attempt++) {
      try {
        await session.login(cfg.approleMount, cfg.roleId, cfg.secretId);
        break;
      } catch (e: any) {
        const delay = backoffDelay(attempt, opts.backoff);
        if (Date.now() + delay > deadline) {
          throw new AppError(e.code ?? 'VAULT_LOGIN', `cannot log in to Vault at ${cfg.vaultAddress} after ${attempt} attempts: ${e.message}`);
        }
        opts.onRetry?.(attempt, e, delay);
        await sleep(delay);
      }
    }
    const rt = new CredentialRuntime(session);
    session.keepAlive(opts.backoff);
    try {
      for (const role of opts.roles ?? cfg.roles) {
        const lease = new LeaseManager({
          session,
          mount: cfg.mountPath,
          role,
          maxTtlSeconds: cfg.roleMaxTtlSeconds?.[role],
          backoff: opts.backoff,
          startTimeoutMillis: Math.max(1000, deadline - Date.now()),
        });
        lease.on('error', () => undefined);
        await lease.start();
        rt.leases.set(role, lease);
        const pool = new RotatingPool({
          lease,
          host: cfg.postgres.host,
          port: cfg.postgres.port,
          database: cfg.postgres.database,
          sslmode: cfg.postgres.sslmode,
          max: opts.poolSize,
          applicationName: `pgvault-app-${role}`,
        });
        pool.on('error', () => undefined);
        rt.pools.set(role, pool);
      }
      // Leases hang off the token that issued them: after a re-login, move them to the new token.
      session.on('relogin', () => {
        for (const lease of rt.leases.values()) void lease.rotateNow('new Vault token', { force: true }).catch(() => undefined);
      });
      session.on('error', () => undefined);
    } catch (e) {
      await rt.close();
      throw e;
    }
    return rt;
  }

  pool(role: string): RotatingPool {
    const p = this.pools.get(role);
    if (!p) throw new AppError('APP_ROLE', `no pool for role "${role}"; roles held: ${[...this.pools.keys()].join(', ')}`);
    return p;
  }

  lease(role: string): LeaseManager {
    const l = this.leases.get(role);
    if (!l) throw new AppError('APP_ROLE', `no lease for role "${role}"`);
    return l;
  }

  /** Drains every pool, revokes every lease, then revokes the token. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await Promise.all([...this.pools.values()].map((p) => p.close()));
      await Promise.all([...this.leases.values()].map((l) => l.stop()));
      await this.session.revokeSelf().catch(() => undefined);
    })();
    return this.closing;
  }
}
