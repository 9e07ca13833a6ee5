/**
 * How the runtime logs in to Vault: one strategy per method, behind one interface, so the
 * session (vault.ts) logs in the same way whatever the method is.
 * - AppRole with a secret_id source (a value, a file read at every login, an issuer);
 * - AppRole with a response-wrapped secret_id (the trusted-orchestrator pattern);
 * - JWT (workload identity: a projected service-account token, a CI job's OIDC token).
 * No strategy ever puts a token, a JWT or a secret_id into a message.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { AppConfigError, AppError, VaultRequestError } from './errors';

/** The Vault calls a strategy may make before its login: the session's own, with its failover. */
export interface LoginContext {
  /** A write. `token` replaces the session's token in X-Vault-Token for this call only. */
  write(path: string, body: Record<string, unknown>, opts?: { token?: string }): Promise<any>;
}

/** One login request: where to send it, what to send, and a digest of its secret. */
export interface LoginRequest {
  readonly path: string;
  readonly body: Readonly<Record<string, string>>;
  /** A digest of the secret sent (secret_id, JWT): one Vault refused is not sent again. */
  readonly digest: string;
}

export interface LoginMethod {
  /** For messages: what logs in, e.g. "AppRole login" or "JWT login (role pgvault-app)". */
  readonly name: string;
  /** For messages: where the secret comes from (never the value). */
  readonly from: string;
  /** The code of the error when the same secret, refused before, would be sent again. */
  readonly refusedAgainCode: string;
  /** What to fix when Vault refuses the login (one clause, appended to Vault's reason). */
  readonly refusedHint: string;
  /** Called before every login: reads the secret from its source (again) and builds the request. */
  prepare(ctx: LoginContext): Promise<LoginRequest>;
  /** Called after every login that was sent, whatever its outcome (serve destroys its issued secret_id here). */
  settled?(outcome: 'ok' | 'failed'): void | Promise<void>;
}

export function sha256(value: string): string {
  return crypto.createHash('sha256').update(value).digest('hex');
}

/**
 * Where the AppRole secret_id comes from. It is called for every login, so a secret_id
 * that an orchestrator refreshes (a file written again) is picked up at the next login.
 */
export type SecretIdSource = () => string | Promise<string>;

async function readSource(source: () => string | Promise<string>, code: string, what: string): Promise<string> {
  try {
    return await source();
  } catch (e: any) {
    throw e instanceof AppError ? e : new AppError(code, `cannot obtain the ${what}: ${e?.message ?? e}`);
  }
}

/** Reads a secret file (trimmed) for a setting; the errors name the setting and the file, never the content. */
export function readSecretSetting(setting: string, file: string, what: string, code: string): string {
  let value: string;
  try {
    value = fs.readFileSync(file, 'utf8').trim();
  } catch (e: any) {
    throw new AppConfigError(code, `${setting} names ${file}, which cannot be read (${e.code ?? e.message}); point it at a file holding ${what}`);
  }
  if (!value) throw new AppConfigError(code, `${setting} names ${file}, which is empty; write ${what} into it`);
  return value;
}

export interface AppRoleLoginOptions {
  readonly mount: string;
  readonly roleId: string;
  /** Asked at every login. */
  readonly secretId: SecretIdSource;
  /** A secret_id already read, used by the first login only (then `secretId` is asked). */
  readonly first?: string;
  readonly from?: string;
  readonly settled?: LoginMethod['settled'];
}

/** AppRole with a secret_id from a source asked at every login. */
export function appRoleLogin(opts: AppRoleLoginOptions): LoginMethod {
  let first = opts.first;
  return {
    name: 'AppRole login',
    from: opts.from ?? 'the configuration',
    refusedAgainCode: 'APP_SECRET_ID_REFUSED',
    refusedHint: `the secret_id from ${opts.from ?? 'the configuration'} is wrong, expired, used up, bound to other addresses or of another role: issue a new one and start again`,
    async prepare() {
      const id = first ?? (await readSource(opts.secretId, 'APP_SECRET_ID', 'AppRole secret_id'));
      first = undefined;
      return { path: `auth/${opts.mount}/login`, body: { role_id: opts.roleId, secret_id: id }, digest: sha256(id) };
    },
    settled: opts.settled,
  };
}

export interface JwtLoginOptions {
  readonly mount: string;
  readonly role: string;
  /** The file holding the JWT: read again at every login, as Kubernetes rotates projected tokens. */
  readonly file: string;
  /** The setting that named the file, for messages. @default "PGVAULT_JWT_FILE" */
  readonly setting?: string;
}

/** JWT auth: the workload's own identity token, read from its file at every login. */
export function jwtLogin(opts: JwtLoginOptions): LoginMethod {
  const setting = opts.setting ?? 'PGVAULT_JWT_FILE';
  return {
    name: `JWT login (role ${opts.role})`,
    from: `${setting} (${opts.file})`,
    refusedAgainCode: 'APP_JWT_REFUSED',
    refusedHint:
      `the JWT in ${setting} (${opts.file}) does not pass role ${opts.role} of auth/${opts.mount}: ` +
      "check its signature key, audience (aud), subject (sub) and expiry (exp) against the environment's appAccess.jwt",
    async prepare() {
      const jwt = readSecretSetting(setting, opts.file, 'a JWT', 'APP_JWT');
      if (!/^[\w-]+\.[\w-]+\.[\w-]*$/.test(jwt)) {
        throw new AppConfigError('APP_JWT', `${setting} names ${opts.file}, which does not hold a JWT (expected three base64url parts separated by dots); point it at the workload's identity token`);
      }
      return { path: `auth/${opts.mount}/login`, body: { role: opts.role, jwt }, digest: sha256(jwt) };
    },
  };
}

export interface WrappedSecretIdLoginOptions {
  readonly mount: string;
  readonly roleId: string;
  /** The AppRole's name: the wrapping token must have been made at auth/<mount>/role/<roleName>/secret-id. */
  readonly roleName: string;
  /** The file holding the wrapping token, written by the orchestrator. Read at every login. */
  readonly file: string;
  readonly setting?: string;
}

/** Vault's words for a wrapping token that was already unwrapped, or that expired: it cannot tell which. */
export const WRAPPED_NOT_VALID_HINT = 'used or expired; if not by you, it may have been stolen; check the audit log for its accessor';

function notValid(e: unknown): boolean {
  return e instanceof VaultRequestError && (e.status === 400 || e.status === 403 || e.status === 404) && /not valid|does not exist|permission denied|invalid/i.test(e.message);
}

/**
 * AppRole with a response-wrapped secret_id. Each wrapping token serves one login: it is
 * looked up first (its creation path must be this role's secret-id), then unwrapped. A token
 * Vault calls "not valid" stops the start (used or expired: possibly stolen). Once its secret_id
 * has been used, the next login reads the file again; if it still holds the token already
 * unwrapped, that is "waiting for a new file", not theft.
 */
export function wrappedSecretIdLogin(opts: WrappedSecretIdLoginOptions): LoginMethod {
  const setting = opts.setting ?? 'PGVAULT_SECRET_ID_WRAPPED_FILE';
  const expectedPath = `auth/${opts.mount}/role/${opts.roleName}/secret-id`;
  /** Digests of the wrapping tokens this process unwrapped. */
  const unwrapped = new Set<string>();
  return {
    name: 'AppRole login (wrapped secret_id)',
    from: `${setting} (${opts.file})`,
    refusedAgainCode: 'APP_SECRET_ID_REFUSED',
    refusedHint: `the secret_id unwrapped from ${setting} (${opts.file}) was refused (expired, used up, or bound to other addresses): have the orchestrator write a new wrapped secret_id`,
    async prepare(ctx) {
      const token = readSecretSetting(setting, opts.file, 'a wrapping token (npm run --silent secret-id -- <env> --wrap-ttl <seconds>)', 'APP_WRAPPED');
      const digest = sha256(token);
      if (unwrapped.has(digest)) {
        throw new AppConfigError('APP_WRAPPED_WAITING', `${setting} (${opts.file}) still holds the wrapping token this process already unwrapped and used; waiting for a new file from the orchestrator`);
      }
      let info: any;
      try {
        info = await ctx.write('sys/wrapping/lookup', { token });
      } catch (e) {
        if (notValid(e)) throw new AppConfigError('APP_WRAPPED_INVALID', `the wrapping token in ${setting} (${opts.file}) is not valid: ${WRAPPED_NOT_VALID_HINT}`);
        throw e;
      }
      const creationPath = String(info?.data?.creation_path ?? '');
      if (creationPath !== expectedPath) {
        throw new AppConfigError(
          'APP_WRAPPED_PATH',
          `the wrapping token in ${setting} (${opts.file}) was made at "${creationPath || '(unknown)'}", not at "${expectedPath}": it wraps something else, so it is not unwrapped; ask for a wrapped secret_id of this role (npm run --silent secret-id -- <env> --wrap-ttl <seconds>)`,
        );
      }
      let res: any;
      try {
        res = await ctx.write('sys/wrapping/unwrap', {}, { token });
      } catch (e) {
        if (notValid(e)) throw new AppConfigError('APP_WRAPPED_INVALID', `the wrapping token in ${setting} (${opts.file}) is not valid: ${WRAPPED_NOT_VALID_HINT}`);
        throw e;
      }
      unwrapped.add(digest);
      const secretId = res?.data?.secret_id;
      if (typeof secretId !== 'string' || !secretId) {
        throw new AppConfigError('APP_WRAPPED_PATH', `the wrapping token in ${setting} (${opts.file}) held no secret_id; ask for a wrapped secret_id of this role`);
      }
      return { path: `auth/${opts.mount}/login`, body: { role_id: opts.roleId, secret_id: secretId }, digest: sha256(secretId) };
    },
  };
}
