import { EventEmitter } from 'node:events';
import nodeVault from 'node-vault';
import { AppConfigError, AppError, VaultRequestError } from './errors';
import { BackoffOptions, backoffDelay, renewalDelayMillis } from './backoff';

export interface VaultSessionOptions {
  readonly address: string;
  /** PEM CA to trust. TLS verification is always on. */
  readonly caCert?: string;
  /** Per-request timeout. @default 5000 */
  readonly timeoutMillis?: number;
}

/** Dynamic database credentials under a Vault lease. The password is not enumerable. */
export interface DatabaseCredentials {
  readonly role: string;
  readonly leaseId: string;
  readonly leaseDurationSeconds: number;
  readonly renewable: boolean;
  readonly username: string;
  readonly password: string;
  /** When the lease was issued (ms since epoch). */
  readonly issuedAt: number;
}

/**
 * A Vault session that logs in with AppRole. It never takes a token from the
 * environment (node-vault would read VAULT_TOKEN) and never disables TLS checks.
 */
export interface VaultSessionEvents {
  /** A new token replaced one that could not be renewed any more: leases should move to it. */
  relogin: [];
  renewed: [ttlSeconds: number];
  error: [error: AppError, operation: string];
}

export class VaultSession extends EventEmitter<VaultSessionEvents> {
  private readonly client: any;
  #login?: { mount: string; roleId: string; secretId: string };
  #timer?: NodeJS.Timeout;
  #tokenIssuedTtl = 0;
  public readonly address: string;
  /** The login's token TTL and policies, once logged in. */
  public tokenTtlSeconds = 0;
  public policies: string[] = [];

  constructor(opts: VaultSessionOptions) {
    super();
    if (!/^https?:\/\//.test(opts.address)) {
      throw new AppConfigError('APP_VAULT_ADDR', `Vault address "${opts.address}" is not an http(s) URL; expected e.g. http://127.0.0.1:8200`);
    }
    this.address = opts.address;
    this.client = nodeVault({
      apiVersion: 'v1',
      endpoint: opts.address,
      token: 'unset',
      rpDefaults: { strictSSL: true, timeout: opts.timeoutMillis ?? 5000 },
      requestOptions: opts.caCert ? { ca: opts.caCert, strictSSL: true } : { strictSSL: true },
    } as any);
    this.token = '';
  }

  private set token(value: string) {
    this.client.token = value || undefined;
  }

  get loggedIn(): boolean {
    return Boolean(this.client.token);
  }

  /** Logs in with AppRole. */
  async login(mount: string, roleId: string, secretId: string): Promise<void> {
    const path = `auth/${mount}/login`;
    const res = await this.call(path, () => this.client.write(path, { role_id: roleId, secret_id: secretId }));
    this.token = res.auth.client_token;
    this.tokenTtlSeconds = res.auth.lease_duration;
    this.#tokenIssuedTtl = res.auth.lease_duration;
    this.policies = res.auth.policies ?? [];
    this.#login = { mount, roleId, secretId };
  }

  /**
   * Keeps the token alive: renews it at about two thirds of its TTL, and logs in
   * again (emitting 'relogin') when it can no longer be renewed or renewal is capped.
   */
  keepAlive(backoff?: BackoffOptions): void {
    const schedule = (delay: number, attempt: number) => {
      if (this.#timer) clearTimeout(this.#timer);
      this.#timer = setTimeout(() => void run(attempt), delay);
      this.#timer.unref();
    };
    const run = async (attempt: number) => {
      if (!this.#login) return;
      try {
        const before = this.tokenTtlSeconds;
        const ttl = await this.renewSelf().catch(async (e) => {
          if (e instanceof VaultRequestError && e.status === 403) return -1;
          throw e;
        });
        if (ttl < 0 || ttl < Math.min(before, this.#tokenIssuedTtl) / 2) {
          // Expired, revoked or capped by its max TTL: log in again while the old token still works.
          const l = this.#login;
          await this.login(l.mount, l.roleId, l.secretId);
          this.emit('relogin');
        } else {
          this.emit('renewed', ttl);
        }
        schedule(renewalDelayMillis(this.tokenTtlSeconds), 0);
      } catch (e) {
        if (this.listenerCount('error') > 0) this.emit('error', e as AppError, 'token');
        schedule(backoffDelay(attempt, backoff), attempt + 1);
      }
    };
    schedule(renewalDelayMillis(this.tokenTtlSeconds), 0);
  }

  /** Stops the keep-alive timer. */
  stopKeepAlive(): void {
    if (this.#timer) clearTimeout(this.#timer);
  }

  /** Reads new credentials from `<mount>/creds/<role>`. */
  async issue(mount: string, role: string): Promise<DatabaseCredentials> {
    const path = `${mount}/creds/${role}`;
    const res = await this.call(path, () => this.client.read(path));
    const creds = {
      role,
      leaseId: res.lease_id,
      leaseDurationSeconds: res.lease_duration,
      renewable: res.renewable,
      username: res.data.username,
      issuedAt: Date.now(),
    } as DatabaseCredentials;
    Object.defineProperty(creds, 'password', { value: res.data.password, enumerable: false });
    return creds;
  }

  /** Renews a lease; returns the new lease duration (Vault may cap it at the max TTL). */
  async renew(leaseId: string, incrementSeconds?: number): Promise<number> {
    const path = `sys/leases/renew/${leaseId}`;
    const res = await this.call(path, () => this.client.write(path, incrementSeconds ? { increment: incrementSeconds } : {}));
    return res.lease_duration;
  }

  /** Revokes a lease: Vault drops the database user. */
  async revoke(leaseId: string): Promise<void> {
    const path = `sys/leases/revoke/${leaseId}`;
    await this.call(path, () => this.client.write(path, {}));
  }

  /** Renews this session's own token. */
  async renewSelf(): Promise<number> {
    const path = 'auth/token/renew-self';
    const res = await this.call(path, () => this.client.write(path, {}));
    this.tokenTtlSeconds = res.auth.lease_duration;
    return this.tokenTtlSeconds;
  }

  /** Revokes this session's own token; the session is logged out afterwards. */
  async revokeSelf(): Promise<void> {
    this.stopKeepAlive();
    if (!this.loggedIn) return;
    const path = 'auth/token/revoke-self';
    await this.call(path, () => this.client.write(path, {}));
    this.token = '';
  }

  /** A raw read with this session's token (used to prove what the token may not do). */
  async read(path: string): Promise<any> {
    return this.call(path, () => this.client.read(path));
  }

  private async call<T>(path: string, fn: () => Promise<T>): Promise<any> {
    try {
      return await fn();
    } catch (e: any) {
      const status: number | undefined = e?.response?.statusCode;
      // Only Vault's error text is kept: it never contains the request's secrets.
      const why = status ? `HTTP ${status}: ${String(e.message).slice(0, 300)}` : `${e?.code ?? 'ERROR'}: ${e?.message ?? e}`;
      const code = status === 403 ? 'VAULT_FORBIDDEN' : status ? 'VAULT_HTTP' : 'VAULT_UNREACHABLE';
      throw new VaultRequestError(code, `Vault ${path} failed (${why})`, path, status);
    }
  }
}
