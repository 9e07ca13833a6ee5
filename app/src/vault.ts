import * as crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import nodeVault from 'node-vault';
import { AppConfigError, AppError, loginRefused, VaultRequestError } from './errors';
import { BackoffOptions, backoffDelay, cappedDelay, renewalDelayMillis, sleep } from './backoff';

export interface VaultSessionOptions {
  readonly address: string;
  /**
   * Every node of a cluster. A request goes to the node that answered last; a node that does
   * not answer, is sealed or has no leader is skipped for the next, in rounds with bounded backoff.
   * @default [address]
   */
  readonly addresses?: readonly string[];
  /** How long one request may keep looking for a node that serves it. @default 15000 */
  readonly failoverMillis?: number;
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
  /** When the request for the lease was sent (ms since epoch): the lease cannot expire before issuedAt + TTL. */
  readonly issuedAt: number;
  /** The login (VaultSession.tokenGeneration) whose token issued the lease: Vault revokes the lease with that token. */
  readonly tokenGeneration: number;
}

/**
 * Where the AppRole secret_id comes from. It is called for every login, so a secret_id
 * that an orchestrator refreshes (a file written again) is picked up at the next login.
 */
export type SecretIdSource = () => string | Promise<string>;

/**
 * A Vault session that logs in with AppRole. It never takes a token from the
 * environment (node-vault would read VAULT_TOKEN) and never disables TLS checks.
 */
export interface VaultSessionEvents {
  /** A new token replaced the previous one: leases of older tokens should move to it. */
  relogin: [generation: number];
  renewed: [ttlSeconds: number];
  /** A re-login failed; `refused` when Vault refused it (4xx) rather than being unreachable. */
  loginFailed: [error: AppError, refused: boolean];
  error: [error: AppError, operation: string];
}

export class VaultSession extends EventEmitter<VaultSessionEvents> {
  private client: any;
  /** One client per node (a cluster); the session's token travels with the current one. */
  private readonly clients: any[];
  readonly #failoverMillis: number;
  #login?: { mount: string; roleId: string; secretId: SecretIdSource };
  #timer?: NodeJS.Timeout;
  #keepAlive = false;
  #backoff?: BackoffOptions;
  #relogin?: Promise<void>;
  #reloginAttempt = 0;
  #nextLoginAt = 0;
  #lastLoginError?: AppError;
  /** A digest of the last secret_id Vault refused: it is not sent again (see login()). */
  #refusedSecretId?: string;
  #tokenIssuedTtl = 0;
  public readonly address: string;
  /** The login's token TTL and policies, once logged in. */
  public tokenTtlSeconds = 0;
  public policies: string[] = [];
  /** Counts logins: leases remember the generation of the token that issued them. */
  public tokenGeneration = 0;
  /** When the current token expires unless renewed (ms since epoch). */
  public tokenExpiresAt = 0;
  /** Since when re-logins fail (ms since epoch); undefined while the last login succeeded. */
  public loginFailingSince?: number;
  /** Whether the last failed login was refused by Vault (4xx) rather than unreachable. */
  public loginRefused = false;

  constructor(opts: VaultSessionOptions) {
    super();
    if (!/^https?:\/\//.test(opts.address)) {
      throw new AppConfigError('APP_VAULT_ADDR', `Vault address "${opts.address}" is not an http(s) URL; expected e.g. http://127.0.0.1:8200`);
    }
    this.address = opts.address;
    const addresses = opts.addresses?.length ? opts.addresses : [opts.address];
    for (const a of addresses) {
      if (!/^https?:\/\//.test(a)) throw new AppConfigError('APP_VAULT_ADDR', `Vault address "${a}" (of the address list) is not an http(s) URL; expected e.g. https://127.0.0.1:8200`);
    }
    this.clients = addresses.map((endpoint) => {
      const client = nodeVault({
        apiVersion: 'v1',
        endpoint,
        token: 'unset',
        rpDefaults: { strictSSL: true, timeout: opts.timeoutMillis ?? 5000 },
        requestOptions: opts.caCert ? { ca: opts.caCert, strictSSL: true } : { strictSSL: true },
      } as any);
      // The token must not show when the session (or a runtime holding it) is logged or inspected.
      Object.defineProperty(client, 'token', { value: undefined, writable: true, enumerable: false, configurable: true });
      return client;
    });
    this.client = this.clients[0];
    this.#failoverMillis = opts.failoverMillis ?? 15_000;
    this.token = '';
  }

  private set token(value: string) {
    this.client.token = value || undefined;
  }

  get loggedIn(): boolean {
    return Boolean(this.client.token);
  }

  /**
   * Logs in with AppRole. `secretId` may be a source, asked at every login; re-logins use
   * `later` when given (for example a file an orchestrator refreshes), else the same.
   */
  async login(mount: string, roleId: string, secretId: string | SecretIdSource, later?: SecretIdSource): Promise<void> {
    const source: SecretIdSource = typeof secretId === 'function' ? secretId : () => secretId;
    let id: string;
    try {
      id = await source();
    } catch (e: any) {
      throw e instanceof AppError ? e : new AppError('APP_SECRET_ID', `cannot obtain the AppRole secret_id: ${e?.message ?? e}`);
    }
    const path = `auth/${mount}/login`;
    // Vault locks a role_id out (403 for every instance, 15 min by default) after a few failed
    // logins: a refused secret_id is never sent again; the next login waits for a new one.
    const digest = crypto.createHash('sha256').update(id).digest('hex');
    if (digest === this.#refusedSecretId) {
      throw new AppConfigError('APP_SECRET_ID_REFUSED', 'Vault refused this secret_id before; waiting for a new one from its source');
    }
    const sentAt = Date.now();
    let res: any;
    try {
      res = await this.call(path, () => this.client.write(path, { role_id: roleId, secret_id: id }));
    } catch (e) {
      if (loginRefused(e)) this.#refusedSecretId = digest;
      throw e;
    }
    this.#refusedSecretId = undefined;
    this.token = res.auth.client_token;
    this.tokenGeneration++;
    this.tokenTtlSeconds = res.auth.lease_duration;
    this.tokenExpiresAt = sentAt + res.auth.lease_duration * 1000;
    this.#tokenIssuedTtl = res.auth.lease_duration;
    this.policies = res.auth.policies ?? [];
    this.#login = { mount, roleId, secretId: later ?? source };
  }

  /**
   * Logs in again now, unless a login newer than `failedGeneration` already happened
   * (then the caller just retries with the newer token). Concurrent calls share one login.
   * Emits 'relogin' on success, 'loginFailed' on failure.
   */
  reloginNow(failedGeneration = this.tokenGeneration): Promise<void> {
    if (this.#relogin) return this.#relogin;
    if (this.tokenGeneration > failedGeneration) return Promise.resolve();
    // After a failed login, the next waits for its backoff, whoever asks: no burst of logins.
    if (this.#lastLoginError && Date.now() + 50 < this.#nextLoginAt) return Promise.reject(this.#lastLoginError);
    const l = this.#login;
    if (!l) return Promise.reject(new AppError('VAULT_NOT_LOGGED_IN', 'no AppRole login to repeat; call login() first'));
    this.#relogin = (async () => {
      try {
        await this.login(l.mount, l.roleId, l.secretId);
        this.#reloginAttempt = 0;
        this.#lastLoginError = undefined;
        this.loginFailingSince = undefined;
        this.loginRefused = false;
        this.scheduleKeepAlive(renewalDelayMillis(this.tokenTtlSeconds));
        this.emit('relogin', this.tokenGeneration);
      } catch (e: any) {
        const err = e instanceof AppError ? e : new AppError('VAULT_LOGIN', String(e?.message ?? e));
        this.loginFailingSince ??= Date.now();
        this.loginRefused = loginRefused(err);
        // Keep trying with backoff until a login succeeds, whoever asked for this one.
        const delay = backoffDelay(this.#reloginAttempt++, this.#backoff);
        this.#lastLoginError = err;
        this.#nextLoginAt = Date.now() + delay;
        this.scheduleKeepAlive(delay);
        this.emit('loginFailed', err, this.loginRefused);
        throw err;
      }
    })().finally(() => {
      this.#relogin = undefined;
    });
    return this.#relogin;
  }

  /**
   * Keeps the token alive: renews it at about two thirds of its TTL, and logs in
   * again (emitting 'relogin') as soon as a renewal is capped by the max TTL or the
   * token is refused or expired. A failed re-login is retried with backoff until it succeeds.
   */
  keepAlive(backoff?: BackoffOptions): void {
    this.#keepAlive = true;
    this.#backoff = backoff;
    this.scheduleKeepAlive(renewalDelayMillis(this.tokenTtlSeconds));
  }

  private scheduleKeepAlive(delay: number): void {
    if (this.#timer) clearTimeout(this.#timer);
    if (!this.#keepAlive) return;
    this.#timer = setTimeout(() => void this.keepAliveTick(0), cappedDelay(delay));
    this.#timer.unref();
  }

  private async keepAliveTick(renewAttempt: number): Promise<void> {
    if (!this.#login || !this.#keepAlive) return;
    // A re-login is pending (an earlier one failed), or the token is past its expiry: log in.
    if (this.loginFailingSince === undefined && Date.now() < this.tokenExpiresAt) {
      try {
        const sentAt = Date.now();
        const ttl = await this.renewSelf();
        this.tokenExpiresAt = sentAt + ttl * 1000;
        if (ttl >= this.#tokenIssuedTtl) {
          this.emit('renewed', ttl);
          this.scheduleKeepAlive(renewalDelayMillis(ttl));
          return;
        }
        // Capped by the max TTL: log in again while the old token still works, so leases can move.
      } catch (e) {
        if (!(e instanceof VaultRequestError && e.status === 403)) {
          // Vault unreachable or failing: retry the renewal with backoff, but not past the expiry.
          if (this.listenerCount('error') > 0) this.emit('error', e as AppError, 'token');
          const remaining = this.tokenExpiresAt - Date.now();
          if (this.#timer) clearTimeout(this.#timer);
          if (!this.#keepAlive) return;
          this.#timer = setTimeout(() => void this.keepAliveTick(renewAttempt + 1), cappedDelay(Math.min(backoffDelay(renewAttempt, this.#backoff), Math.max(0, remaining))));
          this.#timer.unref();
          return;
        }
        // 403: the token was revoked or expired.
      }
    }
    await this.reloginNow().catch((e) => {
      if (this.listenerCount('error') > 0) this.emit('error', e as AppError, 'login');
    });
  }

  /** Stops the keep-alive timer. */
  stopKeepAlive(): void {
    this.#keepAlive = false;
    if (this.#timer) clearTimeout(this.#timer);
  }

  /** Reads new credentials from `<mount>/creds/<role>`. */
  async issue(mount: string, role: string): Promise<DatabaseCredentials> {
    const path = `${mount}/creds/${role}`;
    const tokenGeneration = this.tokenGeneration;
    const issuedAt = Date.now();
    const res = await this.call(path, () => this.client.read(path));
    const creds = {
      role,
      leaseId: res.lease_id,
      leaseDurationSeconds: res.lease_duration,
      renewable: res.renewable,
      username: res.data.username,
      issuedAt,
      tokenGeneration,
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
  async revoke(leaseId: string, opts: { timeoutMillis?: number } = {}): Promise<void> {
    const path = `sys/leases/revoke/${leaseId}`;
    await this.call(path, () => this.client.write(path, {}, requestTimeout(opts.timeoutMillis)));
  }

  /** Renews this session's own token. */
  async renewSelf(): Promise<number> {
    const path = 'auth/token/renew-self';
    const res = await this.call(path, () => this.client.write(path, {}));
    this.tokenTtlSeconds = res.auth.lease_duration;
    return this.tokenTtlSeconds;
  }

  /** Revokes this session's own token; the session is logged out afterwards. */
  async revokeSelf(opts: { timeoutMillis?: number } = {}): Promise<void> {
    this.stopKeepAlive();
    if (!this.loggedIn) return;
    const path = 'auth/token/revoke-self';
    await this.call(path, () => this.client.write(path, {}, requestTimeout(opts.timeoutMillis)));
    this.token = '';
  }

  /** A raw read with this session's token (used to prove what the token may not do). */
  async read(path: string): Promise<any> {
    return this.call(path, () => this.client.read(path));
  }

  /** The node the session talks to now (a cluster moves it to a node that serves). */
  get currentAddress(): string {
    return this.client?.endpoint ?? this.address;
  }

  private async call<T>(path: string, fn: () => Promise<T>): Promise<any> {
    if (this.clients.length < 2) return this.callOnce(path, fn);
    const deadline = Date.now() + this.#failoverMillis;
    for (let round = 0; ; round++) {
      for (let n = 0; n < this.clients.length; n++) {
        try {
          return await this.callOnce(path, fn);
        } catch (e) {
          if (!(e instanceof VaultRequestError) || !nodeUnavailable(e) || Date.now() > deadline) throw e;
          const i = this.clients.indexOf(this.client);
          const token = this.client.token;
          this.client = this.clients[(i + 1) % this.clients.length];
          this.client.token = token;
        }
      }
      // Every node refused: an election is under way. Wait (bounded) before the next round.
      await sleep(Math.min(backoffDelay(round, { initialMillis: 200, maxMillis: 2000 }), Math.max(0, deadline - Date.now())));
    }
  }

  private async callOnce<T>(path: string, fn: () => Promise<T>): Promise<any> {
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

/**
 * A node that cannot serve the request, where another node may: no answer, sealed or
 * standby without a leader (503), or a standby that cannot reach the leader (500, 502).
 */
function nodeUnavailable(e: VaultRequestError): boolean {
  if (e.status === undefined) return true;
  if (e.status === 503 || e.status === 502) return true;
  return e.status === 500 && /leader|active (cluster )?node|sealed|standby/i.test(e.message);
}

/** node-vault request options for a per-call timeout (a shutdown must not wait 5 s per call). */
function requestTimeout(ms?: number): Record<string, unknown> | undefined {
  return ms === undefined ? undefined : { timeout: Math.max(1, Math.round(ms)) };
}
