#!/usr/bin/env node
/**
 * The REST API against a deployed environment:
 *   npm run serve -- <env> [app]            (builds first; npm passes SIGTERM/SIGINT on)
 *   node dist/api/serve.js <env> [app]      (containers, systemd: no npm in between)
 * The app (its AppRole and roles) is the second argument, else PGVAULT_APP, else the app the
 * top-level outputs describe ("api"). The API reads through its readonly and writes through its
 * readwrite role, so the app must have both.
 * The login: PGVAULT_AUTH=jwt with PGVAULT_JWT_FILE (read again at every login); or an AppRole
 * secret_id from PGVAULT_SECRET_ID_WRAPPED_FILE (response-wrapped, unwrapped at login),
 * PGVAULT_SECRET_ID_FILE (read again at every login, so an orchestrator can refresh it) or
 * PGVAULT_SECRET_ID. Only for a docker environment, when none is set, one secret_id is issued
 * for that app with the environment's admin token for each login, and destroyed once that login used it.
 * PORT (default 8080). PGVAULT_START_TIMEOUT_SECONDS bounds the start-up retries (default 30).
 * PGVAULT_REQUEST_TIMEOUT_SECONDS: each request's deadline (default 5).
 * PGVAULT_SHUTDOWN_TIMEOUT_SECONDS: the bound on a shutdown (default 20).
 * PGVAULT_LOGIN_REFUSED_EXIT_SECONDS: how long Vault may refuse every re-login before the
 * server exits 1 (default 60).
 * SIGTERM / SIGINT: stop taking work, drain, revoke every lease and the token, exit 0.
 */
import { appConfigFromOutputs, appRoleLogin, AppConfigError, CredentialRuntime, readOutputs, safeMessage, backoffDelay, sleep, createLogger } from '@pgvault/runtime';
import { ApiServer } from './server';
import { loadEnvironment } from '../stacks/config';
import { outputsFile } from '../ops/local/outputs';
import { destroySecretIdAccessor, issueSecretIdWithAccessor, IssuedSecretId } from '../ops/vault/vault-admin';

const logger = createLogger('pgvault-serve');

/** The roles the API reads and writes through (api/server.ts's defaults). */
const READ_ROLE = 'readonly';
const WRITE_ROLE = 'readwrite';

function seconds(name: string, fallback: number): number {
  const raw = process.env[name];
  const value = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isFinite(value) || value <= 0) throw new AppConfigError('APP_SETTING', `${name} is "${raw}"; expected a number of seconds above 0`);
  return value;
}

/** For docker environments only: a secret_id issued with the admin token, retried until `deadline`. */
async function adminSecretId(envName: string, app: string | undefined, deadline: number): Promise<IssuedSecretId> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await issueSecretIdWithAccessor(envName, { timeoutMillis: Math.min(3000, Math.max(500, deadline - Date.now())), app });
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

/** A signal that arrives while starting stops the server as soon as it has started (then cleanly). */
let onSignal = (signal: string) => {
  logger.info({ signal }, 'signal received while starting; stopping once started');
  pendingSignal = signal;
};
let pendingSignal: string | undefined;
process.on('SIGTERM', () => onSignal('SIGTERM'));
process.on('SIGINT', () => onSignal('SIGINT'));

async function main(): Promise<void> {
  const envName = process.argv[2] ?? 'local';
  const port = Number(process.env.PORT ?? 8080);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`PORT is "${process.env.PORT}"; expected a port number from 0 to 65535`);
  const deadline = Date.now() + seconds('PGVAULT_START_TIMEOUT_SECONDS', 30) * 1000;
  const requestTimeoutMillis = seconds('PGVAULT_REQUEST_TIMEOUT_SECONDS', 5) * 1000;
  const shutdownMillis = seconds('PGVAULT_SHUTDOWN_TIMEOUT_SECONDS', 20) * 1000;
  const loginRefusedMillis = seconds('PGVAULT_LOGIN_REFUSED_EXIT_SECONDS', 60) * 1000;
  const env = loadEnvironment(envName);
  // The argument, else PGVAULT_APP (readOutputs reads it, and names it in its errors).
  const app: string | undefined = process.argv[3];
  const outputs = readOutputs(outputsFile(envName), app);
  const missing = [READ_ROLE, WRITE_ROLE].filter((r) => !outputs.roles.includes(r));
  if (missing.length) {
    throw new AppConfigError(
      'APP_ROLES',
      `app "${outputs.app ?? app}" of environment ${envName} has the roles ${outputs.roles.join(', ')}, not ${missing.join(' and ')}: the API reads through "${READ_ROLE}" and writes through "${WRITE_ROLE}". ` +
        `Give the app both roles under "apps" in ${env.file} and deploy again, or serve an app that has them (PGVAULT_APP).`,
    );
  }
  let cfg;
  const e = process.env;
  if (e.PGVAULT_SECRET_ID_FILE || e.PGVAULT_SECRET_ID || e.PGVAULT_SECRET_ID_WRAPPED_FILE || (e.PGVAULT_AUTH && e.PGVAULT_AUTH !== 'approle')) {
    cfg = appConfigFromOutputs(outputs);
  } else if (env.infrastructure === 'docker') {
    // One secret_id per login, destroyed (by its accessor) once the login has used it: none is left lying around.
    let issued: IssuedSecretId | undefined = await adminSecretId(envName, outputs.app, deadline);
    const first = issued.value;
    const login = appRoleLogin({
      mount: outputs.approle_mount,
      roleId: outputs.approle_role_id,
      first,
      secretId: async () => {
        issued = await issueSecretIdWithAccessor(envName, { timeoutMillis: 5000, app: outputs.app });
        return issued.value;
      },
      from: `the admin token of the docker environment ${envName} (app ${outputs.app})`,
      settled: async () => {
        const used = issued;
        issued = undefined;
        if (!used) return;
        try {
          await destroySecretIdAccessor(envName, used.accessor, 5000, outputs.app);
        } catch (err) {
          logger.warn({ accessor: used.accessor }, `could not destroy the used secret_id (${safeMessage(err)}); it expires with its TTL`);
        }
      },
    });
    cfg = appConfigFromOutputs(outputs, { secretId: first, login, secretIdFrom: login.from });
  } else {
    throw new AppConfigError(
      'APP_SECRET_ID',
      `environment ${envName} is "infrastructure": "${env.infrastructure}": the server does not use the admin token there. ` +
        `Set PGVAULT_AUTH=jwt with PGVAULT_JWT_FILE, PGVAULT_SECRET_ID_WRAPPED_FILE to a file holding a wrapped secret_id, or PGVAULT_SECRET_ID_FILE to a file (mode 0600) holding an AppRole secret_id, issued by whoever holds the admin token: ` +
        `vault write -f -field=secret_id auth/${outputs.approle_mount}/role/${outputs.approle_role_name}/secret-id`,
    );
  }
  const runtime = await CredentialRuntime.start(cfg, {
    startTimeoutMillis: Math.max(1000, deadline - Date.now()),
    loginRefusedFatalMillis: loginRefusedMillis,
    onRetry: (attempt, e, delay) => logger.warn({ attempt, delayMillis: delay, code: e.code }, `Vault login failed (attempt ${attempt}: ${safeMessage(e)}); retrying in ${delay} ms`),
  });
  const api = new ApiServer({ runtime, requestTimeoutMillis, logger });
  for (const [role, lease] of runtime.leases) {
    lease.on('issued', (c) => logger.info({ role, user: c.username, leaseSeconds: c.leaseDurationSeconds }, 'credentials issued'));
    lease.on('renewed', (c, d) => logger.debug({ role, user: c.username, leaseSeconds: d }, 'lease renewed'));
    lease.on('rotated', (prev, cur, reason) => logger.info({ role, from: prev.username, to: cur.username, reason }, 'credentials rotated'));
    lease.on('revoked', (c) => logger.info({ role, user: c.username }, 'lease revoked'));
    lease.on('lost', (c, why) => logger.warn({ role, user: c.username }, `lease lost: ${why}`));
    lease.on('error', (e, op) => logger.warn({ role, operation: op, code: e.code }, `${op} failed: ${safeMessage(e)}`));
  }
  runtime.session.on('relogin', () => logger.info(`Vault token replaced by a new ${cfg.login?.name ?? 'AppRole login'}`));
  runtime.session.on('loginFailed', (e, refused) => logger.warn({ code: e.code, refused }, `re-login failed: ${safeMessage(e)}`));
  runtime.session.on('lateLease', (role, revoked) => logger.warn({ role, revoked }, revoked ? 'credentials Vault sent after their request gave up were revoked' : 'credentials Vault sent after their request gave up could not be revoked; they expire with their TTL'));

  let stopping = false;
  const shutdown = async (why: string, code: number) => {
    if (stopping) return;
    stopping = true;
    // The bound holds whatever Vault, Postgres or clients do; the steps below fit inside it.
    setTimeout(() => {
      logger.error(`shutdown did not finish within ${shutdownMillis / 1000} s; exiting with leases left to expire by themselves`);
      process.exit(1);
    }, shutdownMillis).unref();
    logger.info({ reason: why }, 'draining, revoking leases and the token');
    // The API's own grace covers a write's cancel bound, so a 504 is sent before its connection closes.
    await api.stop(Math.min(requestTimeoutMillis + 3000, shutdownMillis / 3));
    const r = await runtime.close({ timeoutMillis: shutdownMillis / 2 });
    if (r.unrevokedLeases > 0 || !r.tokenRevoked) {
      logger.warn({ unrevokedLeases: r.unrevokedLeases, tokenRevoked: r.tokenRevoked }, 'not everything could be revoked (Vault unreachable, or the token already expired); what is left expires with its TTL');
    }
    logger.info(code === 0 ? 'stopped cleanly' : 'stopped');
    process.exit(code);
  };
  onSignal = (signal) => void shutdown(signal, 0);
  if (pendingSignal) return onSignal(pendingSignal);
  runtime.on('fatal', (e) => {
    logger.fatal({ code: e.code }, safeMessage(e));
    void shutdown('Vault refuses every login', 1);
  });
  // Last resort: a bug must not leave leases and the token behind.
  process.on('uncaughtException', (e) => {
    logger.fatal({ code: (e as any)?.code }, `uncaught exception: ${safeMessage(e)}`);
    void shutdown('uncaught exception', 1);
  });
  process.on('unhandledRejection', (e) => logger.error(`unhandled rejection (serving on): ${safeMessage(e)}`));

  const bound = await api.listen(port);
  logger.info({ env: envName, app: outputs.app, port: bound, roles: [...runtime.leases.keys()] }, `serving ${envName} on http://127.0.0.1:${bound}`);
}

main().catch((e) => {
  logger.fatal({ code: e?.code }, `cannot start: ${safeMessage(e)}`);
  process.exit(1);
});
