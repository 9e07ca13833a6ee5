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
import { deploy, destroy, issueSecretId, loadToolchainEnv, outputsFile, readSecretFile, vaultFetch } from '../ops';
import { localDir } from '../stacks/config';
import { AppConfig, appConfigFromOutputs, readOutputs, VaultSession } from '@pgvault/runtime';
import { postgresSsl } from '../ops/postgres/db-bootstrap';

/** Fails (never skips) with what is missing and how to get it. */
export function requireToolchain(): void {
  try {
    loadToolchainEnv();
  } catch (e: any) {
    throw new Error(`end-to-end prerequisite missing: ${e.message}`);
  }
  const docker = spawnSync('docker', ['info'], { encoding: 'utf8', timeout: DOCKER_TIMEOUT_MS });
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

/**
 * A scratch copy of `local` named `as`, on its own ports (so it never meets another suite's
 * containers), changed by `edit`.
 */
export function localCopy(as: string, ports: { postgres: number; vault: number }, edit: (doc: any) => void = () => undefined): string {
  return scratchEnvironment('local', (doc) => {
    doc.description = `A copy of local for the ${as} test, with its own name and ports.`;
    doc.docker = { ...doc.docker, postgresHostPort: ports.postgres, vaultHostPort: ports.vault };
    edit(doc);
  }, as);
}

export async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; seconds: number }> {
  const t = Date.now();
  const value = await fn();
  return { value, seconds: (Date.now() - t) / 1000 };
}

export { deploy, destroy, loadEnvironment };
export { prepareLocalSecrets } from '../ops';

/** Superuser connection to the environment's Postgres. */
export async function adminClient(env: EnvironmentConfig): Promise<Client> {
  const c = new Client({
    host: env.postgres.clientHost,
    port: env.postgres.clientPort,
    database: env.postgres.database,
    user: env.postgres.adminUser,
    password: readSecretFile(env.postgres.adminPasswordFile, 'admin password'),
    ssl: postgresSsl(env),
  });
  await c.connect();
  return c;
}

/** Tries to log in as `user` (on the primary, or at `at`); returns the SQLSTATE of the refusal, or 'ok'. */
export async function tryLogin(env: EnvironmentConfig, user: string, password: string, at: { clientHost: string; clientPort: number; database?: string } = env.postgres): Promise<string> {
  const c = new Client({ host: at.clientHost, port: at.clientPort, database: at.database ?? env.postgres.database, user, password, connectionTimeoutMillis: 5000, ssl: postgresSsl(env) });
  try {
    await c.connect();
    await c.end();
    return 'ok';
  } catch (e: any) {
    return e.code ?? e.message;
  }
}

/** The app's view: a fresh secret_id, an AppRole login (of `app`; default: PGVAULT_APP, else the top-level AppRole). */
export async function appSession(envName: string, app?: string): Promise<{ cfg: AppConfig; session: VaultSession }> {
  const secretId = await issueSecretId(envName, undefined, app);
  const cfg = appConfigFromOutputs(readOutputs(outputsFile(envName), app), { secretId });
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

/** Bound on a before/after hook that deploys or destroys (a cold ha deploy on a loaded 2-core machine takes minutes). */
export const DEPLOY_HOOK_TIMEOUT_MS = 1_200_000;

/** Bound on one docker CLI call of a test; a call that takes longer is named in the error. */
export const DOCKER_TIMEOUT_MS = 120_000;

/** One docker CLI call, killed at DOCKER_TIMEOUT_MS; a hang (or a docker that cannot start) throws, naming the call. */
function dockerRun(args: string[]) {
  const r = spawnSync('docker', args, { encoding: 'utf8', timeout: DOCKER_TIMEOUT_MS, killSignal: 'SIGKILL' });
  if (r.error) throw new Error(`docker ${args.join(' ')}: ${(r.error as any).code === 'ETIMEDOUT' ? `hung, killed after ${DOCKER_TIMEOUT_MS / 1000} s` : r.error.message}`);
  return r;
}

export function docker(...args: string[]): string {
  const r = dockerRun(args);
  if (r.status !== 0) throw new Error(`docker ${args.join(' ')}: ${r.stderr.trim()}`);
  return r.stdout.trim();
}

/**
 * A docker call of a clean-up whose refusal is expected (unpause of a container that is not
 * paused, rm of one that is gone): a refusal answers false; a hang still throws, naming the call.
 */
export function dockerIfAny(...args: string[]): boolean {
  return dockerRun(args).status === 0;
}

/**
 * A deployment several e2e files share (ha: 6-ha, then 7-replica): deployed when it is not
 * there (cold) or deployed again (warm, no change). Returns whether it was cold.
 */
export async function upShared(envName: string): Promise<{ cold: boolean; seconds: number }> {
  const cold = docker('ps', '-a', '--filter', `name=pgvault-${envName}-`, '--format', '{{.Names}}') === '';
  if (cold) await destroy(envName);
  const t = await timed(() => deploy(envName));
  return { cold, seconds: t.seconds };
}

/** Under test/run.ts, a shared deployment stays up for the next file (the runner destroys it at the end). */
export const keepShared = (): boolean => process.env.PGVAULT_SHARED_DEPLOYMENTS === 'keep';

/**
 * The newest PostgreSQL server installed from Debian's packages (toolchain: package
 * `postgresql`), or PGVAULT_HOST_PG_BIN. Returns its bin directory and major version.
 */
export function hostPostgres(): { bin: string; major: number } {
  const dirs = process.env.PGVAULT_HOST_PG_BIN
    ? [process.env.PGVAULT_HOST_PG_BIN]
    : (fs.existsSync('/usr/lib/postgresql') ? fs.readdirSync('/usr/lib/postgresql') : [])
        .filter((v) => /^\d+$/.test(v))
        .sort((a, b) => Number(b) - Number(a))
        .map((v) => `/usr/lib/postgresql/${v}/bin`);
  const bin = dirs.find((d) => fs.existsSync(path.join(d, 'initdb')));
  if (!bin) throw new Error('end-to-end prerequisite missing: a PostgreSQL server (initdb under /usr/lib/postgresql/<major>/bin); run: npm run toolchain (as root it installs Debian\'s postgresql), or apt-get install postgresql');
  const v = spawnSync(path.join(bin, 'postgres'), ['--version'], { encoding: 'utf8', timeout: 30_000 });
  const major = Number(/(\d+)(\.\d+)?/.exec(v.stdout ?? '')?.[1]);
  if (!major) throw new Error(`cannot tell the version of ${bin}/postgres (${v.stdout ?? v.error?.message}); reinstall it: apt-get install --reinstall postgresql`);
  return { bin, major };
}

/** psql from PATH (the toolchain installs Debian's postgresql-client). */
export function psqlBinary(): string {
  const found = spawnSync('sh', ['-c', 'command -v psql'], { encoding: 'utf8', timeout: 10_000 }).stdout?.trim();
  if (!found) throw new Error('end-to-end prerequisite missing: psql; run: npm run toolchain (as root it installs Debian\'s postgresql-client), or apt-get install postgresql-client');
  return found;
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
  const log = fs.openSync(opts.logFile, 'a', 0o600);
  const [c, a] = opts.asUser && process.getuid?.() === 0 ? ['runuser', ['-u', opts.asUser, '--', cmd, ...args]] : [cmd, args];
  // A process group of its own: the signal reaches the server itself, not only runuser (which
  // does not pass SIGINT on), so no server outlives the test holding its port.
  const child = spawn(c, a, { env: { ...process.env, ...opts.env }, stdio: ['ignore', log, log], detached: true });
  const signal = (sig: NodeJS.Signals) => {
    try {
      process.kill(-child.pid!, sig);
    } catch {
      // already gone
    }
  };
  return {
    child,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        signal('SIGINT');
        setTimeout(() => signal('SIGKILL'), 10_000).unref();
      }),
  };
}

/** Dynamic users of the environment, seen from the superuser's side: members of its group roles. */
export async function dynamicRoles(admin: Client, env: EnvironmentConfig): Promise<string[]> {
  const r = await admin.query(
    `SELECT DISTINCT u.rolname FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member JOIN pg_roles g ON g.oid = m.roleid
      WHERE g.rolname = ANY($1) AND u.rolcanlogin AND u.rolname <> $2 ORDER BY 1`,
    [[env.database.groupRoles.read, env.database.groupRoles.write], env.secretsEngine.vaultUser],
  );
  return r.rows.map((x) => x.rolname);
}

/** Roles whose names are Vault's dynamic users (v-...), whatever their membership. */
export async function vaultNamedRoles(admin: Client): Promise<string[]> {
  return (await admin.query("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%' ORDER BY 1")).rows.map((x) => x.rolname);
}

/**
 * Watches the environment's roles from the superuser's side while something runs (a destroy
 * that removes the container at its end): returns what the last successful look saw.
 */
export function watchRoles(env: EnvironmentConfig): { stop(): Promise<{ vaultNamed: string[]; ours: string[]; looks: number }> } {
  let last = { vaultNamed: [] as string[], ours: [] as string[], looks: 0 };
  let running = true;
  const loop = (async () => {
    let admin: Client | undefined;
    while (running) {
      try {
        if (!admin) {
          admin = await adminClient(env);
          // The server goes away at the end of a destroy: that is expected here.
          admin.on('error', () => undefined);
        }
        const vaultNamed = await vaultNamedRoles(admin);
        const ours = (await admin.query('SELECT rolname FROM pg_roles WHERE rolname = ANY($1) ORDER BY 1', [[
          env.secretsEngine.vaultUser, env.database.groupRoles.read, env.database.groupRoles.write, env.database.ownerRole, env.database.retiredRole,
        ]])).rows.map((x) => x.rolname);
        last = { vaultNamed, ours, looks: last.looks + 1 };
      } catch {
        await admin?.end().catch(() => undefined);
        admin = undefined;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    await admin?.end().catch(() => undefined);
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return last;
    },
  };
}

/**
 * The CLI of the README's direct path that starts on this Node: cdktf-cli 0.21 on Node 20
 * and 22 (its node-pty has no Node 24 build), CDK Terrain's cdktn (toolchain) on 24 and later.
 */
export const directCli = (nodeMajor = Number(process.versions.node.split('.')[0])): 'cdktf' | 'cdktn' => (nodeMajor >= 24 ? 'cdktn' : 'cdktf');

/** Bound on one direct cdktf/cdktn deploy or destroy. */
export const DIRECT_CLI_TIMEOUT_MS = 600_000;

/**
 * Runs the README's direct commands in bash (toolchain env, TF_VAR_* from the local files,
 * umask 077) with `cli` (default: the one that starts on this Node), its output in the test
 * log. Returns the exit code; a run past DIRECT_CLI_TIMEOUT_MS is killed and throws.
 */
export function directCdktf(envName: string, command: string, cli: 'cdktf' | 'cdktn' = directCli()): number {
  const log = process.env.PGVAULT_CDKTF_LOG ? fs.openSync(process.env.PGVAULT_CDKTF_LOG, 'a') : 'ignore';
  const r = spawnSync('bash', ['-c', directScript(envName, command, cli)], { cwd: REPO_ROOT, stdio: ['ignore', log, log], env: { ...process.env, CI: 'true' }, timeout: DIRECT_CLI_TIMEOUT_MS, killSignal: 'SIGKILL' });
  if (typeof log === 'number') fs.closeSync(log);
  if (r.error) throw new Error(`${cli} ${command} of ${envName}: ${(r.error as any).code === 'ETIMEDOUT' ? `hung, killed after ${DIRECT_CLI_TIMEOUT_MS / 1000} s` : r.error.message} (its output: ${process.env.PGVAULT_CDKTF_LOG})`);
  return r.status ?? 1;
}

/** directCdktf without blocking the event loop (a watch can look while it runs); resolves with the exit code. */
export function directCdktfAsync(envName: string, command: string, cli: 'cdktf' | 'cdktn' = directCli()): Promise<number> {
  const log = process.env.PGVAULT_CDKTF_LOG ? fs.openSync(process.env.PGVAULT_CDKTF_LOG, 'a') : 'ignore';
  const child = spawn('bash', ['-c', directScript(envName, command, cli)], { cwd: REPO_ROOT, stdio: ['ignore', log, log], env: { ...process.env, CI: 'true' }, detached: true });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
      reject(new Error(`${cli} ${command} of ${envName}: hung, killed after ${DIRECT_CLI_TIMEOUT_MS / 1000} s (its output: ${process.env.PGVAULT_CDKTF_LOG})`));
    }, DIRECT_CLI_TIMEOUT_MS);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (typeof log === 'number') fs.closeSync(log);
      resolve(code ?? 1);
    });
  });
}

/** The README's direct path as a bash script: the toolchain env, TF_VAR_* from the local files, umask 077. */
function directScript(envName: string, command: string, cli: 'cdktf' | 'cdktn'): string {
  const dir = localDir(envName);
  return [
    'set -e',
    'umask 077',
    'eval "$(bash toolchain/toolchain.sh env)"',
    `export TF_VAR_vault_db_setup_password="$(cat '${dir}/vault-setup-password')"`,
    `if [ -f '${dir}/vault-token' ]; then export TF_VAR_vault_dev_root_token="$(cat '${dir}/vault-token')"; fi`,
    `PGVAULT_ONLY_ENV=${envName} ${cli === 'cdktf' ? 'npx cdktf' : 'cdktn'} ${command} --skip-provider-lock --auto-approve`,
  ].join('\n');
}

/** The tail of the cdktf log (what the hooks printed), for assertions on their messages. */
export function cdktfLogSince(offset: number): string {
  const f = process.env.PGVAULT_CDKTF_LOG;
  if (!f || !fs.existsSync(f)) return '';
  // The offset is in bytes (cdktfLogSize), and cdktf's output holds multi-byte characters.
  return fs.readFileSync(f).subarray(offset).toString('utf8');
}

export function cdktfLogSize(): number {
  const f = process.env.PGVAULT_CDKTF_LOG;
  return f && fs.existsSync(f) ? fs.statSync(f).size : 0;
}

/** Every file under dir is 0600 and every directory 0700. Returns the offenders. */
export function loosePermissions(dir: string): string[] {
  const bad: string[] = [];
  const walk = (p: string) => {
    const st = fs.lstatSync(p);
    if (st.isSymbolicLink()) return;
    const mode = st.mode & 0o777;
    if (st.isDirectory()) {
      if (mode !== 0o700) bad.push(`${p} ${mode.toString(8)}`);
      for (const e of fs.readdirSync(p)) walk(path.join(p, e));
    } else if (mode !== 0o600) {
      bad.push(`${p} ${mode.toString(8)}`);
    }
  };
  walk(dir);
  return bad;
}

/**
 * A Postgres server as a plain host process (owned by the postgres user when run as root),
 * initialized with SCRAM authentication, and a superuser connection to it.
 */
export async function startHostPostgres(opts: { bin: string; work: string; port: number; password: string }): Promise<{ server: HostProcess; superuser: Client; dataDir: string; logFile: string }> {
  const dataDir = path.join(opts.work, 'pgdata');
  fs.mkdirSync(dataDir, { mode: 0o700 });
  const pwfile = path.join(opts.work, 'initdb-pw');
  fs.writeFileSync(pwfile, opts.password, { mode: 0o600 });
  const asRoot = process.getuid?.() === 0;
  if (asRoot) spawnSync('chown', ['-R', 'postgres:postgres', dataDir, pwfile]);
  const initdb = spawnSync(asRoot ? 'runuser' : path.join(opts.bin, 'initdb'), [
    ...(asRoot ? ['-u', 'postgres', '--', path.join(opts.bin, 'initdb')] : []),
    '-D', dataDir, '-U', 'postgres', `--pwfile=${pwfile}`, '--auth=scram-sha-256', '--encoding=UTF8',
  ], { encoding: 'utf8', timeout: 120_000 });
  fs.rmSync(pwfile);
  if (initdb.status !== 0) throw new Error(`initdb failed: ${initdb.error?.message ?? initdb.stderr}`);
  const logFile = path.join(opts.work, 'postgres.log');
  const server = startProcess(path.join(opts.bin, 'postgres'), ['-D', dataDir, '-p', String(opts.port), '-c', 'listen_addresses=127.0.0.1', '-c', `unix_socket_directories=${dataDir}`], {
    logFile,
    asUser: 'postgres',
  });
  let superuser: Client | undefined;
  await waitFor('Postgres to accept connections', async () => {
    const c = new Client({ host: '127.0.0.1', port: opts.port, user: 'postgres', password: opts.password, database: 'postgres', connectionTimeoutMillis: 5000 });
    c.on('error', () => undefined);
    await c.connect().catch(async (e) => {
      await c.end().catch(() => undefined);
      throw e;
    });
    superuser = c;
    return true;
  }, 90_000).catch((e) => {
    throw new Error(`${e.message}; Postgres's log ends: ${fs.readFileSync(logFile, 'utf8').slice(-800)}`);
  });
  return { server, superuser: superuser!, dataDir, logFile };
}
