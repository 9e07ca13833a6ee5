/**
 * Errors with stable `code`s. Messages never carry a secret: no token, password,
 * secret_id or connection string with credentials.
 */
export class AppError extends Error {
  public readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Configuration is missing or unusable (outputs file, secret_id, CA file). */
export class AppConfigError extends AppError {}

/** Vault refused or failed a request. `status` is the HTTP status when there was one. */
export class VaultRequestError extends AppError {
  public readonly status?: number;
  public readonly path: string;
  constructor(code: string, message: string, path: string, status?: number, options?: { cause?: unknown }) {
    super(code, message, options);
    this.path = path;
    this.status = status;
  }
}

/**
 * Vault refused an AppRole login for good (HTTP 4xx other than 408 and 429): a wrong,
 * expired or used-up secret_id, or a wrong role_id. Trying the same again cannot help.
 */
export function loginRefused(e: unknown): boolean {
  if (e instanceof AppConfigError) return true;
  const status = e instanceof VaultRequestError ? e.status : undefined;
  return status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429;
}

/** Postgres refused or failed a query or connection. */
export class DatabaseError extends AppError {
  /** The SQLSTATE, when Postgres sent one. */
  public readonly sqlState?: string;
  constructor(code: string, message: string, sqlState?: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.sqlState = sqlState;
  }
}

/**
 * What is known of a statement that failed:
 * - `not_applied`: it never reached Postgres, or Postgres answered with an error (an
 *   autocommit statement that fails, is cancelled or times out is rolled back);
 * - `unknown`: it was sent and no answer came (the deadline passed and the cancel went
 *   unanswered, or the connection broke): it may have committed.
 */
export type QueryOutcome = 'not_applied' | 'unknown';

/**
 * A statement whose outcome is unknown (code `DB_OUTCOME_UNKNOWN`): it was sent, and neither
 * its answer nor a confirmed cancellation came back before the connection was closed. A write
 * may have committed: retrying it may write twice (unless it carries an idempotency key).
 */
export class OutcomeUnknownError extends DatabaseError {
  public readonly outcome = 'unknown' as const;
}

/** The statement was cancelled at its deadline and Postgres confirmed it (SQLSTATE 57014): it did not happen. Code `DB_DEADLINE`. */
export class QueryDeadlineError extends DatabaseError {
  public readonly outcome = 'not_applied' as const;
}

/** What is known of `e`'s statement: unknown only for an OutcomeUnknownError. */
export function queryOutcome(e: unknown): QueryOutcome {
  return e instanceof OutcomeUnknownError ? 'unknown' : 'not_applied';
}

/** One or more verification checks did not hold. */
export class VerificationError extends AppError {}

/** Reduces any error to a message that is safe to print. */
export function safeMessage(e: unknown): string {
  if (e instanceof AppError) return `${e.code}: ${e.message}`;
  if (e && typeof e === 'object' && 'code' in e && 'message' in e) {
    return `${String((e as any).code)}: ${stripSecrets(String((e as any).message))}`;
  }
  return stripSecrets(String(e instanceof Error ? e.message : e));
}

/** Removes credentials from URLs (user:pass@) in free text. */
export function stripSecrets(text: string): string {
  return text.replace(/(\w+:\/\/)[^\s/@:]+:[^\s/@]+@/g, '$1***:***@');
}
