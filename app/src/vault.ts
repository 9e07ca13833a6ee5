import { EventEmitter } from 'node:events';
import * as http from 'node:http';
import * as https from 'node:https';
import { performance } from 'node:perf_hooks';
import nodeVault from 'node-vault';
import { AppConfigError, AppError, loginRefused, VaultRequestError } from './errors';
import { BackoffOptions, backoffDelay, cappedDelay, renewalDelayMillis, sleep } from './backoff';
import { appRoleLogin, LoginMethod, SecretIdSource } from './login';

export interface VaultSessionOptions {
  readonly address: string;
  /**
   * Every node of a cluster. A request goes to the node that answered last; a node that does
   * not answer, is sealed or has no leader is skipped for the next, in rounds with bounded backoff.
   * @default [address]
   */
  readonly addresses?: readonly string[];
  /**
   * How long one request may keep looking for a node that serves it, unless its caller gives
   * less time (a shutdown's budget, say): every call keeps to what its caller has left. @default 15000
   */
  readonly failoverMillis?: number;
  /** PEM CA to trust. TLS verification is always on. */
  readonly caCert?: string;
  /**
   * Per-request timeout. For a read of credentials this is how long the caller waits: the
   * request itself stays open (up to CREDS_REQUEST_TIMEOUT_MILLIS) so that a lease Vault
   * creates late is still known, and revoked. @default 5000
   */
  readonly timeoutMillis?: number;
}

/**
 * A read of credentials is never aborted before this: longer than Vault's own
 * max_request_duration (90 s), so its answer, and the lease id in it, is never lost.
 */
export const CREDS_REQUEST_TIMEOUT_MILLIS = 95_000;

/** A monotonic clock (ms): intervals measured with it survive the wall clock being stepped. */
const monotonic = () => performance.now();

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
 * A Vault session that logs in with AppRole. It never takes a token from the
 * environment (node-vault would read VAULT_TOKEN) and never disables TLS checks.
 */
export interface VaultSessionEvents {
  /** A new token replaced the previous one: leases of older tokens should move to it. */
  relogin: [generation: number];
  renewed: [ttlSeconds: number];
  /** A re-login failed; `refused` when Vault refused it (4xx) rather than being unreachable. */
  loginFailed: [error: AppError, refused: boolean];
  /** Credentials arrived after their caller stopped waiting: their lease was revoked at once (or not, when that failed). */
  lateLease: [role: string, revoked: boolean];
  error: [error: AppError, operation: string];
}

export class VaultSession extends EventEmitter<VaultSessionEvents> {
  private client: any;
  /** One client per node (a cluster); the session's token travels with the current one. */
  private readonly clients: any[];
  readonly #failoverMillis: number;
  readonly #timeoutMillis: number;
  /** Our own agents: close() can end requests still open (late credentials) once the token is revoked. */
  readonly #agents: { http: http.Agent; https: https.Agent };
  /** Tokens replaced by a re-login, by generation: revoked once their leases moved (revokeSupersededTokens). */
  readonly #superseded = new Map<number, string>();
  #tokenCheck?: { generation: number; result: Promise<boolean> };
  /** Bumped whenever the keep-alive timer is armed: a tick that armed none arms one. */
  #armed = 0;
  /** tokenExpiresAt on the monotonic clock. */
  #tokenExpiresAtMono = 0;
  #loginFailingSinceMono?: number;
  /** Reads of credentials still open, by path: the next caller waits for one rather than sending another. */
  readonly #openIssues = new Map<string, OpenIssue>();
  #login?: LoginMethod;
  #timer?: NodeJS.Timeout;
  #keepAlive = false;
  #backoff?: BackoffOptions;
  #relogin?: Promise<void>;
  #reloginAttempt = 0;
  #nextLoginAt = 0;
  #lastLoginError?: AppError;
  /** A digest of the last secret (secret_id, JWT) Vault refused: it is not sent again (see loginWith()). */
  #refusedSecret?: string;
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
    this.#timeoutMillis = opts.timeoutMillis ?? 5000;
    this.#agents = {
      http: new http.Agent({ keepAlive: true }),
      https: new https.Agent({ keepAlive: true, rejectUnauthorized: true, ...(opts.caCert ? { ca: opts.caCert } : {}) }),
    };
    this.clients = addresses.map((endpoint) => {
      const client = nodeVault({
        apiVersion: 'v1',
        endpoint,
        token: 'unset',
        rpDefaults: { strictSSL: true, timeout: this.#timeoutMillis },
        requestOptions: {
          ...(opts.caCert ? { ca: opts.caCert } : {}),
          strictSSL: true,
          httpAgent: this.#agents.http,
          httpsAgent: this.#agents.https,
        },
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

  /** For how long re-logins have failed (ms, on a monotonic clock); 0 while the last login succeeded. */
  get loginFailingForMillis(): number {
    return this.#loginFailingSinceMono === undefined ? 0 : monotonic() - this.#loginFailingSinceMono;
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
    await this.loginWith(appRoleLogin({ mount, roleId, secretId: source }));
    if (later) this.#login = appRoleLogin({ mount, roleId, secretId: later });
  }

  /** Logs in with `method` (AppRole, wrapped secret_id, JWT); re-logins use the same method. */
  async loginWith(method: LoginMethod): Promise<void> {
    const req = await method.prepare({
      write: (path, body, o) =>
        this.call(path, (ro) => this.client.write(path, body, o?.token ? { ...ro, headers: { 'X-Vault-Token': o.token } } : ro), { idempotent: false }),
    });
    // Vault locks a role_id out (403 for every instance, 15 min by default) after a few failed
    // logins: a refused secret is never sent again; the next login waits for a new one.
    if (req.digest === this.#refusedSecret) {
      throw new AppConfigError(method.refusedAgainCode, `Vault refused this secret before (${method.name}); waiting for a new one from ${method.from}`);
    }
    const sentAt = Date.now();
    const sentMono = monotonic();
    let res: any;
    try {
      // Not idempotent: a login that timed out may have completed on its node (a secret_id use
      // spent, a token nobody will revoke), so it moves on only when that node surely did not serve it.
      res = await this.call(req.path, (o) => this.client.write(req.path, req.body, o), { idempotent: false });
    } catch (e) {
      if (loginRefused(e)) this.#refusedSecret = req.digest;
      await this.#settle(method, 'failed');
      throw e;
    }
    this.#refusedSecret = undefined;
    if (this.client.token) this.#superseded.set(this.tokenGeneration, this.client.token);
    this.token = res.auth.client_token;
    this.tokenGeneration++;
    this.tokenTtlSeconds = res.auth.lease_duration;
    this.tokenExpiresAt = sentAt + res.auth.lease_duration * 1000;
    this.#tokenExpiresAtMono = sentMono + res.auth.lease_duration * 1000;
    this.#tokenIssuedTtl = res.auth.lease_duration;
    this.policies = res.auth.policies ?? [];
    this.#login = method;
    await this.#settle(method, 'ok');
  }

  /** The method's clean-up after a login; its failure never fails the login. */
  async #settle(method: LoginMethod, outcome: 'ok' | 'failed'): Promise<void> {
    try {
      await method.settled?.(outcome);
    } catch (e: any) {
      if (this.listenerCount('error') > 0) this.emit('error', e instanceof AppError ? e : new AppError('VAULT_LOGIN_SETTLE', String(e?.message ?? e)), 'login_settle');
    }
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
    if (this.#lastLoginError && monotonic() + 50 < this.#nextLoginAt) return Promise.reject(this.#lastLoginError);
    const l = this.#login;
    if (!l) return Promise.reject(new AppError('VAULT_NOT_LOGGED_IN', 'no login to repeat; call login() or loginWith() first'));
    this.#relogin = (async () => {
      try {
        await this.loginWith(l);
        this.#reloginAttempt = 0;
        this.#lastLoginError = undefined;
        this.loginFailingSince = undefined;
        this.#loginFailingSinceMono = undefined;
        this.loginRefused = false;
        this.scheduleKeepAlive(renewalDelayMillis(this.tokenTtlSeconds));
        this.emit('relogin', this.tokenGeneration);
      } catch (e: any) {
        const err = e instanceof AppError ? e : new AppError('VAULT_LOGIN', String(e?.message ?? e));
        this.loginFailingSince ??= Date.now();
        this.#loginFailingSinceMono ??= monotonic();
        this.loginRefused = loginRefused(err);
        // Keep trying with backoff until a login succeeds, whoever asked for this one.
        const delay = backoffDelay(this.#reloginAttempt++, this.#backoff);
        this.#lastLoginError = err;
        this.#nextLoginAt = monotonic() + delay;
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

  private scheduleKeepAlive(delay: number, renewAttempt = 0): void {
    if (this.#timer) clearTimeout(this.#timer);
    if (!this.#keepAlive) return;
    this.#armed++;
    this.#timer = setTimeout(() => void this.keepAliveTick(renewAttempt), cappedDelay(delay));
    this.#timer.unref();
  }

  private async keepAliveTick(renewAttempt: number): Promise<void> {
    if (!this.#login || !this.#keepAlive) return;
    const armed = this.#armed;
    try {
      await this.keepAliveStep(renewAttempt);
    } finally {
      // Whatever happened (a login refused by the backoff gate, say), the keep-alive goes on.
      if (this.#armed === armed && this.#keepAlive) this.scheduleKeepAlive(Math.max(50, this.#nextLoginAt - monotonic()));
    }
  }

  private async keepAliveStep(renewAttempt: number): Promise<void> {
    // A re-login is pending (an earlier one failed), or the token is past its expiry: log in.
    if (this.loginFailingSince === undefined && monotonic() < this.#tokenExpiresAtMono) {
      try {
        const sentAt = Date.now();
        const sentMono = monotonic();
        const ttl = await this.renewSelf();
        this.tokenExpiresAt = sentAt + ttl * 1000;
        this.#tokenExpiresAtMono = sentMono + ttl * 1000;
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
          const remaining = this.#tokenExpiresAtMono - monotonic();
          this.scheduleKeepAlive(Math.min(backoffDelay(renewAttempt, this.#backoff), Math.max(0, remaining)), renewAttempt + 1);
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

  /**
   * Reads new credentials from `<mount>/creds/<role>`. The caller waits at most `timeoutMillis`
   * (default: the session's timeoutMillis); the request itself stays open (Vault creates the
   * user even when it answers late). The next read of the same path takes that request over
   * rather than sending another, and credentials that arrive while nobody waits have their
   * lease revoked at once ('lateLease'). Not idempotent: after a timeout or a lost connection
   * it is never sent to another node, only when a node surely did not serve it.
   */
  async issue(mount: string, role: string, opts: { timeoutMillis?: number } = {}): Promise<DatabaseCredentials> {
    const path = `${mount}/creds/${role}`;
    const waitMillis = Math.max(1, opts.timeoutMillis ?? this.#timeoutMillis);
    // Only a request nobody waits for, on the node in use, is taken over: two callers never get
    // the same lease, and after a timeout on a cluster the next attempt goes to another node.
    let pending = this.#openIssues.get(path);
    if (!pending || pending.waiting || pending.node !== this.client) {
      const p: OpenIssue = {
        node: this.client,
        tokenGeneration: this.tokenGeneration,
        issuedAt: Date.now(),
        waiting: false,
        request: this.call(path, () => this.client.read(path, { timeout: CREDS_REQUEST_TIMEOUT_MILLIS }), { timeoutMillis: waitMillis, idempotent: false }),
      };
      this.#openIssues.set(path, p);
      p.request.then(
        (r) => {
          if (!p.waiting && r?.lease_id) void this.revokeLate(role, r.lease_id);
        },
        () => undefined,
      ).finally(() => {
        if (this.#openIssues.get(path) === p) this.#openIssues.delete(path);
      });
      pending = p;
    }
    const open = pending;
    open.waiting = true;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        open.waiting = false;
        // The request stays where it is; later calls try the next node (a paused node answers nothing).
        if (this.clients.length > 1 && this.client === open.node) this.nextNode();
        reject(new VaultRequestError('VAULT_TIMEOUT', `Vault ${path} did not answer within ${waitMillis} ms; the request stays open for the next attempt, and credentials nobody waits for are revoked`, path));
      }, waitMillis);
      timer.unref();
    });
    const res = await Promise.race([open.request, late]).finally(() => clearTimeout(timer));
    const creds = {
      role,
      leaseId: res.lease_id,
      leaseDurationSeconds: res.lease_duration,
      renewable: res.renewable,
      username: res.data.username,
      issuedAt: open.issuedAt,
      tokenGeneration: open.tokenGeneration,
    } as DatabaseCredentials;
    Object.defineProperty(creds, 'password', { value: res.data.password, enumerable: false });
    return creds;
  }

  /** Revokes a lease whose credentials came after their caller gave up; nobody else knows it. */
  private async revokeLate(role: string, leaseId: string): Promise<void> {
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await this.revoke(leaseId);
        this.emit('lateLease', role, true);
        return;
      } catch (e) {
        if (e instanceof VaultRequestError && e.status !== undefined && e.status < 500) break;
        await sleep(backoffDelay(attempt, this.#backoff));
      }
    }
    this.emit('lateLease', role, false);
  }

  /** Renews a lease; returns the new lease duration (Vault may cap it at the max TTL). */
  async renew(leaseId: string, incrementSeconds?: number, opts: { timeoutMillis?: number } = {}): Promise<number> {
    const path = `sys/leases/renew/${leaseId}`;
    const res = await this.call(path, (o) => this.client.write(path, incrementSeconds ? { increment: incrementSeconds } : {}, o), opts);
    return res.lease_duration;
  }

  /** Revokes a lease: Vault drops the database user. `timeoutMillis` bounds the whole call, failover included. */
  async revoke(leaseId: string, opts: { timeoutMillis?: number } = {}): Promise<void> {
    const path = `sys/leases/revoke/${leaseId}`;
    await this.call(path, (o) => this.client.write(path, {}, o), opts);
  }

  /** Renews this session's own token. */
  async renewSelf(opts: { timeoutMillis?: number } = {}): Promise<number> {
    const path = 'auth/token/renew-self';
    const res = await this.call(path, (o) => this.client.write(path, {}, o), opts);
    this.tokenTtlSeconds = res.auth.lease_duration;
    return this.tokenTtlSeconds;
  }

  /**
   * Whether Vault refuses this session's token itself: a 403 of another path may be that
   * path's own error (an edited policy), which a new login cannot fix. When the token is
   * refused (lookup-self answers 403), logs in again (shared with every caller) and resolves
   * true; resolves false when the token is fine, or Vault cannot tell now (then the caller
   * retries its own call with backoff). Concurrent callers share one check.
   */
  reloginIfTokenRefused(failedGeneration = this.tokenGeneration): Promise<boolean> {
    if (this.tokenGeneration > failedGeneration) return Promise.resolve(true);
    if (this.#tokenCheck?.generation === failedGeneration) return this.#tokenCheck.result;
    const result = (async () => {
      const path = 'auth/token/lookup-self';
      try {
        await this.call(path, (o) => this.client.read(path, o));
        return false;
      } catch (e) {
        if (!(e instanceof VaultRequestError && e.status === 403)) return false;
      }
      await this.reloginNow(failedGeneration);
      return true;
    })().finally(() => {
      if (this.#tokenCheck?.result === result) this.#tokenCheck = undefined;
    });
    this.#tokenCheck = { generation: failedGeneration, result };
    return result;
  }

  /**
   * Revokes the tokens that re-logins replaced, older than `belowGeneration`: call it once no
   * lease of theirs is in use, since Vault revokes a token's leases with it. A token Vault
   * already refuses is forgotten; one that cannot be revoked now is tried at the next call.
   */
  async revokeSupersededTokens(belowGeneration: number, opts: { timeoutMillis?: number } = {}): Promise<number> {
    let revoked = 0;
    for (const [generation, token] of [...this.#superseded]) {
      if (generation >= belowGeneration) continue;
      const path = 'auth/token/revoke-self';
      try {
        await this.call(path, (o) => this.client.write(path, {}, { ...o, headers: { 'X-Vault-Token': token } }), opts);
        revoked++;
        this.#superseded.delete(generation);
      } catch (e) {
        if (e instanceof VaultRequestError && e.status === 403) this.#superseded.delete(generation);
        else if (this.listenerCount('error') > 0) this.emit('error', e as AppError, 'revoke_superseded_token');
      }
    }
    return revoked;
  }

  /**
   * Revokes this session's own token (Vault revokes its leases with it); the session is
   * logged out afterwards, and requests still open (late credentials) are ended.
   */
  async revokeSelf(opts: { timeoutMillis?: number } = {}): Promise<void> {
    this.stopKeepAlive();
    if (!this.loggedIn) return;
    const path = 'auth/token/revoke-self';
    try {
      await this.call(path, (o) => this.client.write(path, {}, o), opts);
      this.token = '';
    } finally {
      this.#agents.http.destroy();
      this.#agents.https.destroy();
    }
  }

  /** A raw read with this session's token (used to prove what the token may not do). */
  async read(path: string): Promise<any> {
    return this.call(path, (o) => this.client.read(path, o));
  }

  /** The node the session talks to now (a cluster moves it to a node that serves). */
  get currentAddress(): string {
    return this.client?.endpoint ?? this.address;
  }

  /**
   * One Vault call, moved to the next node of a cluster while nodes cannot serve it. The whole
   * call, failover included, ends within `timeoutMillis` (default: failoverMillis), and each
   * request within what is left of it (at most the per-request timeout). A call that is not
   * idempotent moves on only when the node surely did not serve it (see nodeUnavailable).
   */
  private async call<T>(path: string, fn: (requestOptions: { timeout?: number }) => Promise<T>, opts: { timeoutMillis?: number; idempotent?: boolean } = {}): Promise<any> {
    const end = monotonic() + (opts.timeoutMillis ?? (this.clients.length < 2 ? this.#timeoutMillis : this.#failoverMillis));
    const requestOptions = () => ({ timeout: Math.max(1, Math.round(Math.min(this.#timeoutMillis, end - monotonic()))) });
    if (this.clients.length < 2) return this.callOnce(path, () => fn(requestOptions()));
    for (let round = 0; ; round++) {
      for (let n = 0; n < this.clients.length; n++) {
        try {
          return await this.callOnce(path, () => fn(requestOptions()));
        } catch (e) {
          if (!(e instanceof VaultRequestError) || !nodeUnavailable(e, opts.idempotent ?? true) || monotonic() >= end) throw e;
          this.nextNode();
        }
      }
      // Every node refused: an election is under way. Wait (bounded) before the next round.
      await sleep(Math.min(backoffDelay(round, { initialMillis: 200, maxMillis: 2000 }), Math.max(0, end - monotonic())));
    }
  }

  /** Moves the session to the next node of the cluster, with its token. */
  private nextNode(): void {
    const i = this.clients.indexOf(this.client);
    const token = this.client.token;
    this.client = this.clients[(i + 1) % this.clients.length];
    this.client.token = token;
  }

  private async callOnce<T>(path: string, fn: () => Promise<T>): Promise<any> {
    try {
      return await fn();
    } catch (e: any) {
      const status: number | undefined = e?.response?.statusCode;
      // Only Vault's error text is kept: it never contains the request's secrets.
      const why = status ? `HTTP ${status}: ${String(e.message).slice(0, 300)}` : `${e?.code ?? 'ERROR'}: ${e?.message ?? e}`;
      const code = status === 403 ? 'VAULT_FORBIDDEN' : status ? 'VAULT_HTTP' : 'VAULT_UNREACHABLE';
      throw new VaultRequestError(code, `Vault ${path} failed (${why})`, path, status, { cause: status ? undefined : { code: e?.code } });
    }
  }
}

/** A read of credentials under way, and whether a caller still waits for it. */
interface OpenIssue {
  readonly request: Promise<any>;
  /** The node (client) it was sent to: only a caller on that node takes it over. */
  readonly node: unknown;
  /** When it was sent: the lease cannot expire before issuedAt + TTL. */
  readonly issuedAt: number;
  readonly tokenGeneration: number;
  waiting: boolean;
}

/** Connection errors that prove the request never reached the node. */
const NOT_SENT = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN']);

/**
 * A node that cannot serve the request, where another node may: no answer, sealed or
 * standby without a leader (503), or a standby that cannot reach the leader (500, 502).
 * For a call that is not idempotent, "no answer" counts only when the connection was never
 * made: after a timeout or a reset the node may have done the work.
 */
function nodeUnavailable(e: VaultRequestError, idempotent: boolean): boolean {
  if (e.status === undefined) return idempotent || NOT_SENT.has((e.cause as { code?: string } | undefined)?.code ?? '');
  if (e.status === 503 || e.status === 502) return true;
  return e.status === 500 && /leader|active (cluster )?node|sealed|standby/i.test(e.message);
}
