/**
 * npm run serve -- <env>: the REST API against a deployed environment.
 * The AppRole secret_id comes from PGVAULT_SECRET_ID_FILE / PGVAULT_SECRET_ID, or, when
 * neither is set, a fresh one is issued with the environment's admin token (local use).
 * PORT (default 8080). PGVAULT_START_TIMEOUT_SECONDS bounds the start-up retries (default 30).
 * SIGTERM / SIGINT: stop taking work, drain, revoke every lease and the token, exit 0.
 */
import { appConfigFromOutputs, ApiServer, CredentialRuntime, readOutputs, safeMessage } from '../app/src';
import { backoffDelay, sleep } from '../app/src/backoff';
import { createLogger } from '../app/src/log';
import { issueSecretId, outputsFile } from './ops';

const logger = createLogger('pgvault-serve');

async function secretId(envName: string, deadline: number): Promise<string | undefined> {
  if (process.env.PGVAULT_SECRET_ID_FILE || process.env.PGVAULT_SECRET_ID) return undefined;
  for (let attempt = 1; ; attempt++) {
    try {
      return await issueSecretId(envName, Math.min(3000, Math.max(500, deadline - Date.now())));
    } catch (e: any) {
      const delay = backoffDelay(attempt);
      if (Date.now() + delay > deadline) {
        throw new Error(`Vault did not issue an AppRole secret_id after ${attempt} attempts (${e.message}); check that Vault runs and answers, then start again`);
      }
      logger.warn({ attempt, delayMillis: delay }, `Vault not answering (attempt ${attempt}: ${safeMessage(e)}); retrying in ${delay} ms`);
      await sleep(delay);
    }
  }
}

async function main(): Promise<void> {
  const envName = process.argv[2] ?? 'local';
  const port = Number(process.env.PORT ?? 8080);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`PORT is "${process.env.PORT}"; expected a port number from 0 to 65535`);
  const timeoutMillis = Number(process.env.PGVAULT_START_TIMEOUT_SECONDS ?? 30) * 1000;
  const deadline = Date.now() + timeoutMillis;
  const outputs = readOutputs(outputsFile(envName));
  const cfg = appConfigFromOutputs(outputs, { secretId: await secretId(envName, deadline) });
  const runtime = await CredentialRuntime.start(cfg, {
    startTimeoutMillis: Math.max(1000, deadline - Date.now()),
    onRetry: (attempt, e, delay) => logger.warn({ attempt, delayMillis: delay, code: e.code }, `Vault login failed (attempt ${attempt}: ${safeMessage(e)}); retrying in ${delay} ms`),
  });
  const api = new ApiServer({ runtime, log: (l) => logger.warn(l) });
  for (const [role, lease] of runtime.leases) {
    lease.on('issued', (c) => logger.info({ role, user: c.username, leaseSeconds: c.leaseDurationSeconds }, 'credentials issued'));
    lease.on('renewed', (c, d) => logger.debug({ role, user: c.username, leaseSeconds: d }, 'lease renewed'));
    lease.on('rotated', (prev, cur, reason) => logger.info({ role, from: prev.username, to: cur.username, reason }, 'credentials rotated'));
    lease.on('revoked', (c) => logger.info({ role, user: c.username }, 'lease revoked'));
    lease.on('error', (e, op) => logger.warn({ role, operation: op, code: e.code }, `${op} failed: ${safeMessage(e)}`));
  }
  runtime.session.on('relogin', () => logger.info('Vault token replaced by a new AppRole login'));
  const bound = await api.listen(port);
  logger.info({ env: envName, port: bound, roles: [...runtime.leases.keys()] }, `serving ${envName} on http://127.0.0.1:${bound}`);

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'draining, revoking leases and the token');
    await api.stop();
    await runtime.close();
    logger.info('stopped cleanly');
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

main().catch((e) => {
  logger.fatal({ code: e?.code }, `cannot start: ${safeMessage(e)}`);
  process.exit(1);
});
