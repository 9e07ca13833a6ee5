/**
 * Each stack's Terraform state, wherever the environment keeps it: the local file (read as
 * before), or Terraform's pg backend, which is asked through Terraform itself. The connection
 * string of the state database reaches Terraform as PG_CONN_STR at apply time only, read from the
 * operator's file; nothing here prints it.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { EnvironmentConfig } from '../../stacks/config';
import { pgBackendAttributes, stateFile, stateSchema } from '../../stacks/state-location';
import { readSecretFile } from '../local/local-secrets';
import { stateUnreadable } from './state-trust';
import { killAtTimeout, runTimeoutSeconds, StackRunError, TIMED_OUT } from './runner';

/** Another deploy or destroy of the environment holds the state lock; nothing was changed. */
export class StateLockedError extends Error {
  public readonly code = 'STATE_LOCKED';
}

/** What Terraform prints when the pg backend's lock is taken (the lock itself, or the workspace-creation lock). */
export const LOCK_CONFLICT = /Error acquiring the state lock|Workspace is already locked|already locked for workspace creation/i;

export function stateLocked(env: EnvironmentConfig, command: string): StateLockedError {
  const where = env.state.backend === 'pg' ? ` (Terraform's pg backend, schema ${stateSchema(env.state.schemaPrefix, `${env.name}-secrets`)} of the database named in ${env.state.connectionFile})` : '';
  return new StateLockedError(
    `another deploy of ${env.name} holds the state lock${where}; this ${command} changed nothing. ` +
      `Wait for it to finish, then run 'npm run ${command} -- ${env.name}' again. ` +
      'If no deploy is running any more, its database session still holds the lock: find it with the query in docs/team.md, "A stuck lock", ' +
      "and end it with pg_terminate_backend(<pid>); 'terraform force-unlock' cannot release this lock.",
  );
}

/** The state database's connection string, from the operator's file (mode 0600, a postgres:// URL). */
export function connectionString(env: EnvironmentConfig): string {
  if (env.state.backend !== 'pg') throw new Error(`${env.name} keeps its state locally`);
  const file = env.state.connectionFile;
  let mode: number;
  try {
    mode = fs.statSync(file).mode & 0o777;
  } catch (e: any) {
    throw new Error(`${env.file}: setting "state.connectionFile" names ${file}, which cannot be read (${e.code}); create it (mode 0600) with the state database's postgres:// URL, then deploy again`);
  }
  if (mode & 0o077) {
    throw new Error(`${env.file}: setting "state.connectionFile" names ${file}, whose mode is ${mode.toString(8)}; expected 0600 (it holds a password). Run: chmod 600 ${file}`);
  }
  const value = readSecretFile(file, 'the state database connection string');
  if (!/^postgres(ql)?:\/\//.test(value)) {
    throw new Error(`${file} (setting "state.connectionFile") does not hold a postgres:// URL; expected postgres://<user>:<password>@<host>:<port>/<database>?sslmode=<mode>. Rewrite the file in that form`);
  }
  return value;
}

/**
 * Terraform's environment for the state backend: PG_CONN_STR, and an application_name that
 * names the deploy in pg_stat_activity, so that a stuck lock holder can be found.
 */
export function stateBackendEnv(env: EnvironmentConfig, command: string): Record<string, string> {
  if (env.state.backend !== 'pg') return {};
  return {
    PG_CONN_STR: connectionString(env),
    PGAPPNAME: applicationName(env, command),
  };
}

/** How the deploy's sessions show in pg_stat_activity (at most 63 characters, the pid first). */
function applicationName(env: EnvironmentConfig, command: string): string {
  return `pgvault ${command} ${env.name} pid ${process.pid} ${os.userInfo().username}@${os.hostname()}`.slice(0, 63);
}

/**
 * Runs Terraform in `dir`; returns its stdout. Its output never holds the connection string.
 * Past PGVAULT_TERRAFORM_TIMEOUT_S (a state backend that accepts the connection and never
 * answers) it is stopped, and this fails with a StackRunError naming `what` hung.
 */
function terraform(env: EnvironmentConfig, dir: string, args: string[], what: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const bin = process.env.TERRAFORM_BINARY_NAME || 'terraform';
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { cwd: dir, env: { ...process.env, ...stateBackendEnv(env, 'state'), TF_IN_AUTOMATION: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
    const deadline = killAtTimeout(child, process.env);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const done = (code: number, message?: string) => {
      deadline.clear();
      if (deadline.timedOut()) reject(new StackRunError(what, TIMED_OUT, runTimeoutSeconds(process.env)));
      else resolve({ code, stdout, stderr: message ?? stderr });
    };
    child.on('exit', (code) => done(code ?? 1));
    child.on('error', (e) => done(127, e.message));
  });
}

/**
 * Runs `fn` in a scratch directory whose configuration is only the stack's backend block (the
 * same as the stack's), initialized: Terraform then answers about the stack's state without a
 * synth and without providers.
 */
async function inBackendDir<T>(env: EnvironmentConfig, stackId: string, fn: (dir: string) => Promise<T>): Promise<T> {
  if (env.state.backend !== 'pg') throw new Error(`${env.name} keeps its state locally`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-state-'));
  try {
    fs.writeFileSync(path.join(dir, 'backend.tf.json'), JSON.stringify({ terraform: { backend: { pg: pgBackendAttributes(env.state.schemaPrefix, stackId) } } }));
    const init = await terraform(env, dir, ['init', '-input=false', '-no-color'], `terraform init of ${stackId}'s state backend (pg, schema ${stateSchema(env.state.schemaPrefix, stackId)})`);
    if (init.code !== 0) throw new Error(`terraform init of ${stackId}'s state backend (pg, schema ${stateSchema(env.state.schemaPrefix, stackId)}) failed: ${lastError(init.stderr)}`);
    return await fn(dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function lastError(stderr: string): string {
  const lines = stderr.split('\n').map((l) => l.replace(/^[│╷╵]\s?/, '').trim()).filter((l) => l && !/CLI configuration|terraformrc/.test(l));
  const i = lines.findIndex((l) => l.startsWith('Error'));
  return (i >= 0 ? lines.slice(i, i + 4) : lines.slice(-3)).join(' ');
}

/** Where a stack's state is kept, as the messages name it. */
export function stateWhere(env: EnvironmentConfig, stackId: string): string {
  return env.state.backend === 'local' ? stateFile(env, stackId) : `Terraform's pg backend, schema ${stateSchema(env.state.schemaPrefix, stackId)}`;
}

/**
 * A stack's state as Terraform wrote it, or undefined when there is none (no local file, or an
 * empty pg state). A state that exists but cannot be read or parsed, a local file that is empty
 * (Terraform truncates it before writing) included, is a STATE_UNREADABLE error, never "none".
 */
export async function readState(env: EnvironmentConfig, stackId: string): Promise<any | undefined> {
  const where = stateWhere(env, stackId);
  let text: string;
  if (env.state.backend === 'local') {
    const file = stateFile(env, stackId);
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (e: any) {
      if (e.code === 'ENOENT') return undefined;
      throw stateUnreadable(env.name, stackId, where, `${e.code ?? e.message}`, backupOf(file));
    }
    if (!text.trim()) throw stateUnreadable(env.name, stackId, where, 'the file is empty', backupOf(file));
  } else {
    const what = `terraform state pull of ${stackId} (pg, schema ${stateSchema(env.state.schemaPrefix, stackId)})`;
    const pulled = await inBackendDir(env, stackId, (dir) => terraform(env, dir, ['state', 'pull'], what));
    if (pulled.code !== 0) throw new Error(`terraform state pull of ${stackId} failed: ${lastError(pulled.stderr)}`);
    if (!pulled.stdout.trim()) return undefined;
    text = pulled.stdout;
  }
  let state: any;
  try {
    state = JSON.parse(text);
  } catch (e: any) {
    throw stateUnreadable(env.name, stackId, where, `not valid JSON (${e.message}; ${text.length} bytes)`, env.state.backend === 'local' ? backupOf(stateFile(env, stackId)) : undefined);
  }
  if (state === null || typeof state !== 'object' || (state.resources !== undefined && !Array.isArray(state.resources))) {
    throw stateUnreadable(env.name, stackId, where, 'it is JSON, but not a Terraform state (no "resources" list)');
  }
  return state;
}

/** Terraform's previous copy of a local state file, when there is one. */
function backupOf(file: string): string | undefined {
  return fs.existsSync(`${file}.backup`) ? `${file}.backup` : undefined;
}

/** The addresses of the managed resources in a stack's state: what a destroy has to remove. */
export async function stateResources(env: EnvironmentConfig, stackId: string): Promise<string[]> {
  const state = await readState(env, stackId);
  if (!state?.resources) return [];
  return state.resources
    .filter((r: any) => r.mode === 'managed')
    .map((r: any) => `${r.module ? `${r.module}.` : ''}${r.type}.${r.name}`);
}

/**
 * Runs `fn` while holding the stack's state lock: the pg backend's own session-level advisory
 * lock, on the key Terraform uses (the id of the stack's row in `<schema>.states`). A repair of
 * Vault made here then cannot run under another machine's deploy. Local state: `fn` runs as is.
 */
export async function holdingStateLock<T>(env: EnvironmentConfig, stackId: string, command: string, fn: () => Promise<T>): Promise<T> {
  if (env.state.backend !== 'pg') return fn();
  // Loaded here: local-state deploys do not pay for the pg client.
  const { Client } = await import('pg');
  const client = new Client({ connectionString: connectionString(env), application_name: applicationName(env, `${command}-check`), connectionTimeoutMillis: 10_000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (e: any) {
    throw new Error(`cannot reach the state database named in ${env.state.connectionFile}: ${e.message}`);
  }
  try {
    const schema = stateSchema(env.state.schemaPrefix, stackId);
    const r = await client.query(`SELECT id, pg_try_advisory_lock(id) AS locked FROM "${schema}".states WHERE name = 'default'`).catch((e) => {
      if (e.code === '42P01' || e.code === '3F000') return { rows: [] as any[] }; // no state yet
      throw e;
    });
    if (r.rows.length && !r.rows[0].locked) throw stateLocked(env, command);
    try {
      return await fn();
    } finally {
      if (r.rows.length) await client.query('SELECT pg_advisory_unlock($1)', [r.rows[0].id]).catch(() => undefined);
    }
  } finally {
    await client.end().catch(() => undefined);
  }
}
