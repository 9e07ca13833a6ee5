/**
 * Shared end-to-end harness: the real toolchain, real deploys and destroys,
 * admin access to the real Postgres and Vault. No fakes.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync, ChildProcess } from 'node:child_process';
import { Client } from 'pg';
import { EnvironmentConfig, REPO_ROOT, loadEnvironment } from '../stacks/config';
import { deploy, destroy, issueSecretId, loadToolchainEnv, outputsFile, readSecretFile, vaultFetch } from '../scripts/ops';
import { AppConfig, appConfigFromOutputs, readOutputs, VaultSession } from '../app/src';

/** Fails (never skips) with what is missing and how to get it. */
export function requireToolchain(): void {
  try {
    loadToolchainEnv();
  } catch (e: any) {
    throw new Error(`end-to-end prerequisite missing: ${e.message}`);
  }
  const docker = spawnSync('docker', ['info'], { encoding: 'utf8' });
  if (docker.status !== 0) {
    throw new Error('end-to-end prerequisite missing: the Docker engine does not answer `docker info`; run: npm run toolchain (as root it installs and starts dockerd)');
  }
  if (!process.env.VAULT_SERVER_BIN || !fs.existsSync(process.env.VAULT_SERVER_BIN)) {
    throw new Error('end-to-end prerequisite missing: VAULT_SERVER_BIN is not set or does not exist; run: npm run toolchain');
  }
}

/** A scratch environments directory holding a copy of a shipped environment, changed by `edit`. */
export function scratchEnvironment(name: string, edit: (doc: any) => void, as = name): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-envs-'));
  const doc = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'environments', `${name}.json`), 'utf8'));
  delete doc.$schema;
  edit(doc);
  fs.writeFileSync(path.join(dir, `${as}.json`), JSON.stringify(doc, null, 2));
  process.env.PGVAULT_ENVIRONMENTS_DIR = dir;
  return dir;
}

export async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; seconds: number }> {
  const t = Date.now();
  const value = await fn();
  return { value, seconds: (Date.now() - t) / 1000 };
}

export { deploy, destroy, loadEnvironment };

/** Superuser connection to the environment's Postgres. */
export async function adminClient(env: EnvironmentConfig): Promise<Client> {
  const c = new Client({
    host: env.postgres.clientHost,
    port: env.postgres.clientPort,
    database: env.postgres.database,
    user: env.postgres.adminUser,
    password: readSecretFile(env.postgres.adminPasswordFile, 'admin password'),
  });
  await c.connect();
  return c;
}

/** Tries to log in as `user`; returns the SQLSTATE of the refusal, or 'ok'. */
export async function tryLogin(env: EnvironmentConfig, user: string, password: string): Promise<string> {
  const c = new Client({ host: env.postgres.clientHost, port: env.postgres.clientPort, database: env.postgres.database, user, password, connectionTimeoutMillis: 5000 });
  try {
    await c.connect();
    await c.end();
    return 'ok';
  } catch (e: any) {
    return e.code ?? e.message;
  }
}

/** The app's view: a fresh secret_id, an AppRole login. */
export async function appSession(envName: string): Promise<{ cfg: AppConfig; session: VaultSession }> {
  const secretId = await issueSecretId(envName);
  const cfg = appConfigFromOutputs(readOutputs(outputsFile(envName)), { secretId });
  const session = new VaultSession({ address: cfg.vaultAddress, caCert: cfg.vaultCaCert });
  await session.login(cfg.approleMount, cfg.roleId, cfg.secretId);
  return { cfg, session };
}

/** An admin call to the environment's Vault. */
export async function vaultAdmin(env: EnvironmentConfig, method: string, apiPath: string, body?: unknown): Promise<any> {
  const token = readSecretFile(env.vault.tokenFile, 'admin token');
  const address = env.vault.address;
  return vaultFetch(env, `${address}/v1/${apiPath}`, token, method, body);
}

export function docker(...args: string[]): string {
  const r = spawnSync('docker', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`docker ${args.join(' ')}: ${r.stderr.trim()}`);
  return r.stdout.trim();
}

export async function waitFor(what: string, fn: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await fn().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}`);
}

/** A server started as a plain host process for the test; stopped by `stop()`. */
export interface HostProcess {
  readonly child: ChildProcess;
  stop(): Promise<void>;
}

export function startProcess(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; logFile: string; asUser?: string }): HostProcess {
  const log = fs.openSync(opts.logFile, 'a');
  const [c, a] = opts.asUser && process.getuid?.() === 0 ? ['runuser', ['-u', opts.asUser, '--', cmd, ...args]] : [cmd, args];
  const child = spawn(c, a, { env: { ...process.env, ...opts.env }, stdio: ['ignore', log, log], detached: false });
  return {
    child,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGINT');
        setTimeout(() => child.kill('SIGKILL'), 10_000).unref();
      }),
  };
}
