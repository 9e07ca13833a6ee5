import { EventEmitter } from 'node:events';
import { AppConfig, roleEndpoint } from './config';
import { AppError, loginRefused } from './errors';
import { BackoffOptions, backoffDelay, sleep } from './backoff';
import { LeaseManager } from './lease';
import { RotatingPool } from './pool';
import { VaultPgPool } from './pg-pool';
import { VaultSession } from './vault';
import { appRoleLogin, LoginMethod } from './login';

/** The configured login method, else AppRole with the config's secret_id (first) and its source (later logins). */
export function loginMethod(cfg: AppConfig): LoginMethod {
  if (cfg.login) return cfg.login;
  const fixed = cfg.secretId;
  return appRoleLogin({ mount: cfg.approleMount, roleId: cfg.roleId, first: fixed, secretId: cfg.secretIdSource ?? (() => fixed), from: cfg.secretIdFrom });
}

/** How long after issuance a refused login on a replica is taken for replication lag. */
export const DEFAULT_REPLICA_LAG_WINDOW_MILLIS = 3000;

export interface RuntimeOptions {
  /** Roles to hold credentials for. @default every role in the config */
  readonly roles?: readonly string[];
  /** How long start-up keeps retrying Vault before it gives up. @default 30000 */
  readonly startTimeoutMillis?: number;
  readonly backoff?: BackoffOptions;
  /** Connections per role's pool. @default 10 */
  readonly poolSize?: number;
  /**
   * How long re-logins may keep being refused (HTTP 4xx: the secret_id expired or is wrong)
   * before the runtime emits 'fatal'. Meanwhile it keeps retrying and reports not-ready.
   * @default 60000
   */
  readonly loginRefusedFatalMillis?: number;
  /**
   * For roles on a replica: how long after issuance a login refused as a wrong password is
   * taken for replication lag, and retried with the same credentials. @default 3000
   */
  readonly replicaLagWindowMillis?: number;
  /**
   * How long getting a connection may take (credentials included) when the call has no deadline
   * of its own; also the pg.Pool face's connectionTimeoutMillis. @default 10000
   */
  readonly connectionTimeoutMillis?: number;
  /** Postgres's statement_timeout for every connection (0: none). @default 30000 */
  readonly statementTimeoutMillis?: number;
  /** Called for each start-up attempt that failed (for a one-line log). */
  readonly onRetry?: (attempt: number, error: AppError, delayMillis: number) => void;
}

export interface CredentialRuntimeEvents {
  /** Vault has refused every login for loginRefusedFatalMillis: the process should stop so a supervisor can act. */
  fatal: [error: AppError];
}

/** What close() could not do: leases left to expire by themselves. */
export interface CloseResult {
  readonly unrevokedLeases: number;
  readonly tokenRevoked: boolean;
}

/**
 * The app's credential runtime: an AppRole session kept alive, one lease manager and
 * one rotating pool per role, and an orderly shutdown that revokes everything.
 */
export class CredentialRuntime extends EventEmitter<CredentialRuntimeEvents> {
  public readonly session: VaultSession;
  public readonly leases = new Map<string, LeaseManager>();
  public readonly pools = new Map<string, RotatingPool>();
  private readonly pgPools = new Map<string, VaultPgPool>();
  private poolSize?: number;
  private connectionTimeoutMillis?: number;
  private closing?: Promise<CloseResult>;
  private fatalEmitted = false;

  private constructor(session: VaultSession) {
    super();
    this.session = session;
  }

  /**
   * Logs in and issues credentials for every role, retrying with bounded backoff while
   * Vault is unreachable. A login that Vault refuses (wrong or expired secret_id) fails at once.
   */
  static async start(cfg: AppConfig, opts: RuntimeOptions = {}): Promise<CredentialRuntime> {
    const session = new VaultSession({ address: cfg.vaultAddress, addresses: cfg.vaultAddresses, caCert: cfg.vaultCaCert });
    const deadline = Date.now() + (opts.startTimeoutMillis ?? 30_000);
    const method = loginMethod(cfg);
    for (let attempt = 1; ; attempt++) {
      try {
        await session.loginWith(method);
        break;
      } catch (e: any) {
        // A wrapped token that is not valid, or taken for another path, is refused as it is (its message says why).
        if (e instanceof AppError && /^APP_WRAPPED_/.test(e.code)) throw e;
        if (loginRefused(e)) {
          throw new AppError('VAULT_LOGIN_REFUSED', `Vault at ${cfg.vaultAddress} refused the ${method.name} (${e.message}); ${method.refusedHint}`);
        }
        const delay = backoffDelay(attempt, opts.backoff);
        if (Date.now() + delay > deadline) {
          throw new AppError(e.code ?? 'VAULT_LOGIN', `cannot log in to Vault at ${cfg.vaultAddress} after ${attempt} attempts: ${e.message}`);
        }
        opts.onRetry?.(attempt, e, delay);
        await sleep(delay);
      }
    }
    const rt = new CredentialRuntime(session);
    rt.poolSize = opts.poolSize;
    rt.connectionTimeoutMillis = opts.connectionTimeoutMillis;
    session.on('error', () => undefined);
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
        rt.leases.set(role, lease);
        await lease.start();
        const endpoint = roleEndpoint(cfg, role);
        const pool = new RotatingPool({
          lease,
          host: endpoint.host,
          port: endpoint.port,
          database: endpoint.database ?? cfg.postgres.database,
          sslmode: cfg.postgres.sslmode,
          ca: cfg.postgres.caCert,
          replicaLagWindowMillis: endpoint.target === 'replica' ? (opts.replicaLagWindowMillis ?? DEFAULT_REPLICA_LAG_WINDOW_MILLIS) : 0,
          max: opts.poolSize,
          acquireTimeoutMillis: opts.connectionTimeoutMillis,
          statementTimeoutMillis: opts.statementTimeoutMillis,
          applicationName: `pgvault-app-${role}`,
        });
        pool.on('error', () => undefined);
        rt.pools.set(role, pool);
      }
      // Leases hang off the token that issued them: after a re-login, move them all to the new
      // token, then revoke the old token (not before: Vault would revoke its leases with it).
      session.on('relogin', () => {
        for (const lease of rt.leases.values()) {
          void lease
            .rotateNow('new Vault token', { force: true })
            .then(() => rt.revokeSupersededTokens())
            .catch(() => undefined);
        }
      });
      for (const lease of rt.leases.values()) lease.on('revoked', () => rt.revokeSupersededTokens());
      const fatalAfter = opts.loginRefusedFatalMillis ?? 60_000;
      session.on('loginFailed', (e, refused) => {
        if (!refused || rt.fatalEmitted || session.loginFailingSince === undefined) return;
        if (session.loginFailingForMillis >= fatalAfter) {
          rt.fatalEmitted = true;
          rt.emit('fatal', new AppError('VAULT_LOGIN_REFUSED', `Vault has refused every ${method.name} for ${Math.round(session.loginFailingForMillis / 1000)} s (${e.message}); the secret from ${method.from} is wrong or expired: provide a fresh one`));
        }
      });
    } catch (e) {
      await rt.close({ timeoutMillis: 5000 });
      throw e;
    }
    return rt;
  }

  /** Revokes tokens that re-logins replaced once no lease of theirs is held any more. */
  private revokeSupersededTokens(): void {
    if (this.closing) return;
    const oldest = Math.min(...[...this.leases.values()].map((l) => l.oldestTokenGeneration));
    if (oldest > 1) void this.session.revokeSupersededTokens(Math.min(oldest, this.session.tokenGeneration)).catch(() => undefined);
  }

  pool(role: string): RotatingPool {
    const p = this.pools.get(role);
    if (!p) throw new AppError('APP_ROLE', `no pool for role "${role}"; roles held: ${[...this.pools.keys()].join(', ')}`);
    return p;
  }

  /**
   * The role's pool as a pg.Pool stand-in, for Kysely, Drizzle or code written for pg. One per
   * role; its end() releases the face only (close() revokes), and a new one replaces an ended one.
   * Its connect() and query() wait at most connectionTimeoutMillis for a client.
   */
  pgPool(role: string): VaultPgPool {
    let face = this.pgPools.get(role);
    if (!face || face.ending) {
      face = new VaultPgPool(this.pool(role), { max: this.poolSize, connectionTimeoutMillis: this.connectionTimeoutMillis });
      this.pgPools.set(role, face);
    }
    return face;
  }

  lease(role: string): LeaseManager {
    const l = this.leases.get(role);
    if (!l) throw new AppError('APP_ROLE', `no lease for role "${role}"`);
    return l;
  }

  /** "ok", or why Vault logins currently fail ("login refused": 4xx; "login failing": unreachable). */
  get vaultLogin(): 'ok' | 'login refused' | 'login failing' {
    if (this.session.loginFailingSince === undefined) return 'ok';
    return this.session.loginRefused ? 'login refused' : 'login failing';
  }

  /**
   * Drains every pool, revokes every lease, then revokes the token. Idempotent. Completes
   * within `timeoutMillis` (default 15 s) whatever Vault or Postgres do, on a cluster too
   * (every Vault call, failover included, keeps to what is left): half of it for the drain,
   * the rest for the revocations; what cannot be revoked expires by itself.
   */
  close(opts: { timeoutMillis?: number } = {}): Promise<CloseResult> {
    this.closing ??= (async () => {
      const budget = opts.timeoutMillis ?? 15_000;
      const end = Date.now() + budget;
      this.session.stopKeepAlive();
      await Promise.all([...this.pools.values()].map((p) => p.close({ timeoutMillis: budget / 2 })));
      const revokeBudget = Math.max(100, (end - Date.now()) / 2);
      await Promise.all([...this.leases.values()].map((l) => l.stop({ timeoutMillis: revokeBudget })));
      const unrevokedLeases = [...this.leases.values()].reduce((n, l) => n + l.heldCount, 0);
      const tokenRevoked = await this.session.revokeSelf({ timeoutMillis: Math.max(100, end - Date.now()) }).then(
        () => true,
        () => false,
      );
      return { unrevokedLeases, tokenRevoked };
    })();
    return this.closing;
  }
}
