import pino, { Logger } from 'pino';

/** Field names whose values are replaced before a log line is written, at any depth used here. */
export const REDACTED_PATHS = [
  'password', 'token', 'secretId', 'secret_id', 'client_token',
  '*.password', '*.token', '*.secretId', '*.secret_id', '*.client_token',
  'headers["x-vault-token"]', '*.headers["x-vault-token"]',
];

/**
 * A structured (JSON lines) logger on stderr with secrets redacted. Messages built by this
 * package never contain a secret either; redaction is the second line of defence.
 * LOG_LEVEL sets the level (default info).
 */
export function createLogger(name = 'pgvault-app'): Logger {
  return pino(
    { name, level: process.env.LOG_LEVEL ?? 'info', redact: { paths: REDACTED_PATHS, censor: '[redacted]' } },
    pino.destination({ dest: 2, sync: true }),
  );
}
