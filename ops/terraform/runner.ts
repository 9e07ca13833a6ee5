/**
 * Deploys and destroys synthesized stacks with Terraform itself, as `cdktf deploy` / `cdktf
 * destroy` would, without the cdktf CLI's start-up and orchestration:
 *
 * - synth: the precompiled app (`node dist/stacks/main.js`), skipped when nothing it reads
 *   changed since the last synth of the environment (see `synthKey`) and the stacks' files are
 *   still the ones it wrote;
 * - `terraform init` only when a working directory needs it (see `initKey`), or when Terraform
 *   says so;
 * - `terraform apply` / `destroy` per stack, in dependency order (the reverse to destroy);
 *   stacks that do not depend on each other run at the same time.
 *
 * The working directories, the state and the outputs are the ones `cdktf deploy` uses, so
 * either can follow the other.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ChildProcess, spawn } from 'node:child_process';
import { EnvironmentConfig, REPO_ROOT } from '../../stacks/config';

/** Where cdktf (cdktf.json's default) and this runner write the synthesized stacks. */
export const OUTDIR = path.join(REPO_ROOT, 'cdktf.out');

/** A stack as synthesized: its id, its Terraform working directory and the stacks it needs first. */
export interface SynthesizedStack {
  readonly name: string;
  readonly dir: string;
  readonly dependencies: readonly string[];
}

/** Where the runner's output goes: the log file or the terminal. */
export type Sink = (text: string, stream: 'stdout' | 'stderr') => void;

/** A Terraform (or synth) run that failed; `what` names it, e.g. "terraform apply of local-secrets". */
export class StackRunError extends Error {
  constructor(
    public readonly what: string,
    public readonly exitCode: number,
    /** Set when the run was killed at its deadline (see runTimeoutSeconds). */
    public readonly timedOutAfterSeconds?: number,
  ) {
    super(
      timedOutAfterSeconds === undefined
        ? `${what} exited with ${exitCode}`
        : `${what} did not finish within ${timedOutAfterSeconds} s and was killed (PGVAULT_TERRAFORM_TIMEOUT_S sets the bound)`,
    );
  }
}

/** Exit code of a run killed at its deadline (as timeout(1)). */
export const TIMED_OUT = 124;

/** Bound on one spawned terraform (or synth) run: PGVAULT_TERRAFORM_TIMEOUT_S, default 15 minutes. */
export function runTimeoutSeconds(env: NodeJS.ProcessEnv = process.env): number {
  const v = Number(env.PGVAULT_TERRAFORM_TIMEOUT_S);
  return Number.isFinite(v) && v > 0 ? v : 900;
}

/**
 * Stops `child` once runTimeoutSeconds (of `env`) have passed: SIGTERM, then SIGKILL 10 s later.
 * `onTimeout` runs as it is stopped. Call `clear()` when the child has ended; `timedOut()` says
 * whether it was stopped.
 */
export function killAtTimeout(child: ChildProcess, env: NodeJS.ProcessEnv, onTimeout: (seconds: number) => void = () => undefined): { timedOut(): boolean; clear(): void } {
  let timedOut = false;
  const seconds = runTimeoutSeconds(env);
  const deadline = setTimeout(() => {
    timedOut = true;
    onTimeout(seconds);
    child.kill('SIGTERM');
    setTimeout(() => child.kill('SIGKILL'), 10_000).unref();
  }, seconds * 1000);
  deadline.unref();
  return { timedOut: () => timedOut, clear: () => clearTimeout(deadline) };
}

/** The error for a failed run: a timeout says so, anything else gives the exit code. */
const runError = (what: string, code: number, env: NodeJS.ProcessEnv) => new StackRunError(what, code, code === TIMED_OUT ? runTimeoutSeconds(env) : undefined);

const seconds = (since: number) => ((Date.now() - since) / 1000).toFixed(2);

const sha256 = (data: string | Buffer) => crypto.createHash('sha256').update(data).digest('hex');

/**
 * Size and modification time of every file under `dir` (tsc rewrites only what changed), but
 * the kept schema validators (stacks/schema-validator.ts), which a first run writes.
 */
function treeFingerprint(dir: string, skip: ReadonlySet<string>): string[] {
  const lines: string[] = [];
  const walk = (p: string) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(p, { withFileTypes: true });
    } catch {
      lines.push(`${p} absent`);
      return;
    }
    for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
      if (skip.has(e.name) || e.name.startsWith('.schema-validator-')) continue;
      const f = path.join(p, e.name);
      if (e.isDirectory()) walk(f);
      else {
        const st = fs.statSync(f);
        lines.push(`${f} ${st.size} ${st.mtimeMs}`);
      }
    }
  };
  walk(dir);
  return lines;
}

/**
 * Variables the synth reads (stacks/config.ts, stacks/main.ts) or passes to cdktf: a change to
 * one of them synthesizes again. PGVAULT_CDKTF_LOG only says where output goes.
 */
const SYNTH_VARIABLES = /^(PGVAULT_|POSTGRES_|VAULT_|BAO_|CDKTF_)/;

/**
 * Everything the synth of one environment reads: the compiled app (all of dist/, so that a
 * change to any compiled file counts), the installed packages, cdktf.json, the environment's
 * file and the variables above.
 */
function synthKey(env: EnvironmentConfig, childEnv: NodeJS.ProcessEnv): string {
  const variables = Object.entries(childEnv)
    .filter(([k]) => SYNTH_VARIABLES.test(k) && k !== 'PGVAULT_CDKTF_LOG')
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}=${v}`);
  const file = (f: string) => {
    try {
      return sha256(fs.readFileSync(f));
    } catch {
      return 'absent';
    }
  };
  return sha256(
    [
      ...treeFingerprint(path.join(REPO_ROOT, 'dist'), new Set(['.tsbuildinfo', '.build-stamp'])),
      `lock ${file(path.join(REPO_ROOT, 'node_modules', '.package-lock.json'))}`,
      `cdktf.json ${file(path.join(REPO_ROOT, 'cdktf.json'))}`,
      `environment ${env.file} ${file(env.file)}`,
      ...variables,
    ].join('\n'),
  );
}

interface SynthStamp {
  readonly key: string;
  readonly stacks: (SynthesizedStack & { readonly sha256: string })[];
}

const synthStampFile = (env: EnvironmentConfig) => path.join(OUTDIR, `.pgvault-synth-${env.name}.json`);

/** The stacks of the last synth of this environment, when nothing it read has changed since. */
function freshSynth(env: EnvironmentConfig, key: string): SynthesizedStack[] | undefined {
  let stamp: SynthStamp;
  try {
    stamp = JSON.parse(fs.readFileSync(synthStampFile(env), 'utf8'));
  } catch {
    return undefined;
  }
  if (stamp.key !== key) return undefined;
  for (const s of stamp.stacks) {
    try {
      // A direct `cdktf synth` (another environment, other variables) may have rewritten it.
      if (sha256(fs.readFileSync(path.join(s.dir, 'cdk.tf.json'))) !== s.sha256) return undefined;
    } catch {
      return undefined;
    }
  }
  return stamp.stacks.map(({ name, dir, dependencies }) => ({ name, dir, dependencies }));
}

/**
 * Runs a command; its output goes to `sink`, each line prefixed like cdktf's ("<stack>  <line>").
 * Past runTimeoutSeconds it is stopped (SIGTERM, then SIGKILL) and answers TIMED_OUT.
 */
function run(cmd: string, args: string[], opts: { cwd: string; env: NodeJS.ProcessEnv; sink: Sink; prefix: string }): Promise<number> {
  return new Promise<number>((resolve) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
    const deadline = killAtTimeout(child, opts.env, (seconds) =>
      opts.sink(`${opts.prefix}[pgvault] ${path.basename(cmd)} ${args[0] ?? ''} did not finish within ${seconds} s: stopping it\n`, 'stderr'),
    );
    const relay = (stream: 'stdout' | 'stderr') => {
      let partial = '';
      return {
        data: (d: Buffer) => {
          const lines = (partial + d.toString()).split('\n');
          partial = lines.pop()!;
          if (lines.length) opts.sink(lines.map((l) => `${opts.prefix}${l}\n`).join(''), stream);
        },
        end: () => {
          if (partial) opts.sink(`${opts.prefix}${partial}\n`, stream);
          partial = '';
        },
      };
    };
    const out = relay('stdout');
    const err = relay('stderr');
    child.stdout.on('data', out.data);
    child.stderr.on('data', err.data);
    const done = (code: number) => {
      deadline.clear();
      out.end();
      err.end();
      resolve(deadline.timedOut() ? TIMED_OUT : code);
    };
    // Output still held open by a leftover grandchild (a hook's process) must not hang the run.
    child.on('exit', (c, signal) => setTimeout(() => done(c ?? (signal ? 128 : 1)), 2000).unref());
    child.on('close', (c, signal) => done(c ?? (signal ? 128 : 1)));
    child.on('error', () => done(127));
  });
}

/**
 * Synthesizes the environment with the precompiled app, unless the last synth is still current.
 * `childEnv` is the environment Terraform will run in; the synth gets it without TF_VAR_*, as
 * under cdktf.
 */
export async function synthesize(env: EnvironmentConfig, childEnv: NodeJS.ProcessEnv, sink: Sink): Promise<SynthesizedStack[]> {
  const key = synthKey(env, childEnv);
  const fresh = freshSynth(env, key);
  if (fresh) {
    sink(`[pgvault] synth of ${env.name}: up to date\n`, 'stdout');
    return fresh;
  }
  const started = Date.now();
  fs.rmSync(synthStampFile(env), { force: true });
  const synthEnv: NodeJS.ProcessEnv = { CDKTF_OUTDIR: OUTDIR };
  for (const [k, v] of Object.entries(childEnv)) if (!k.startsWith('TF_VAR_')) synthEnv[k] = v;
  synthEnv.CDKTF_OUTDIR = OUTDIR;
  const main = path.join(REPO_ROOT, 'dist', 'stacks', 'main.js');
  // DEP0044: cdktf 0.21 (archived) calls util.isArray, deprecated at run time from Node 22 on.
  const code = await run(process.execPath, ['--disable-warning=DEP0044', main], { cwd: REPO_ROOT, env: synthEnv, sink, prefix: '' });
  if (code !== 0) throw runError(`the synth of ${env.name} (node dist/stacks/main.js)`, code, childEnv);
  const manifest = JSON.parse(fs.readFileSync(path.join(OUTDIR, 'manifest.json'), 'utf8'));
  const stacks: SynthStamp['stacks'] = [];
  for (const m of Object.values<any>(manifest.stacks)) {
    for (const a of m.annotations ?? []) sink(`${m.name}  ${a.level}: ${a.message}\n`, 'stderr');
    const dir = path.join(OUTDIR, m.workingDirectory);
    stacks.push({ name: m.name, dir, dependencies: m.dependencies ?? [], sha256: sha256(fs.readFileSync(path.join(dir, 'cdk.tf.json'))) });
  }
  const stamp: SynthStamp = { key, stacks };
  fs.writeFileSync(`${synthStampFile(env)}.${process.pid}`, JSON.stringify(stamp, null, 2));
  fs.renameSync(`${synthStampFile(env)}.${process.pid}`, synthStampFile(env));
  sink(`[pgvault] synth of ${env.name}: ${seconds(started)}s\n`, 'stdout');
  return stacks.map(({ name, dir, dependencies }) => ({ name, dir, dependencies }));
}

/**
 * What `terraform init` set a working directory up from: the stack's terraform block (backend,
 * required providers), its modules, the lock file and the CLI configuration (the offline mirror).
 */
function initKey(dir: string, childEnv: NodeJS.ProcessEnv): string {
  const tf = JSON.parse(fs.readFileSync(path.join(dir, 'cdk.tf.json'), 'utf8'));
  let lock = 'absent';
  try {
    lock = fs.readFileSync(path.join(dir, '.terraform.lock.hcl'), 'utf8');
  } catch {
    // not initialized yet
  }
  return sha256(JSON.stringify([tf.terraform ?? {}, tf.module ?? {}, lock, childEnv.TF_CLI_CONFIG_FILE ?? '', childEnv.TF_PLUGIN_CACHE_DIR ?? '']));
}

const initStampFile = (dir: string) => path.join(dir, '.terraform', 'pgvault-init');

function initialized(dir: string, childEnv: NodeJS.ProcessEnv): boolean {
  try {
    return fs.readFileSync(initStampFile(dir), 'utf8') === initKey(dir, childEnv);
  } catch {
    return false;
  }
}

/** What Terraform prints when a working directory must be initialized (again) first; nothing was changed. */
const NEEDS_INIT = /Backend initialization required|Backend configuration changed|Required plugins are not installed|Inconsistent dependency lock file|Missing required provider|Module not installed|please run "terraform init"|run "terraform init"/i;

export type StackCommand = 'deploy' | 'destroy';

/** Runs Terraform in one stack's working directory; `tail` keeps the end of its output. */
async function terraformStack(stack: SynthesizedStack, command: StackCommand, childEnv: NodeJS.ProcessEnv, sink: Sink): Promise<void> {
  const bin = childEnv.TERRAFORM_BINARY_NAME || 'terraform';
  const prefix = `${stack.name}  `;
  let output = '';
  const capture: Sink = (d, s) => {
    output = (output + d).slice(-16_384);
    sink(d, s);
  };
  const init = async (upgrade = false) => {
    const started = Date.now();
    const code = await run(bin, ['init', '-input=false', '-no-color', ...(upgrade ? ['-upgrade'] : [])], { cwd: stack.dir, env: childEnv, sink: capture, prefix });
    if (code !== 0) throw runError(`terraform init of ${stack.name}`, code, childEnv);
    fs.writeFileSync(initStampFile(stack.dir), initKey(stack.dir, childEnv));
    sink(`${prefix}[pgvault] terraform init: ${seconds(started)}s\n`, 'stdout');
  };
  if (!initialized(stack.dir, childEnv)) await init();
  const verb = command === 'deploy' ? 'apply' : 'destroy';
  const args = [verb, '-auto-approve', '-input=false', '-no-color'];
  const started = Date.now();
  let code = await run(bin, args, { cwd: stack.dir, env: childEnv, sink: capture, prefix });
  if (code !== 0 && code !== TIMED_OUT && NEEDS_INIT.test(output)) {
    // The directory changed under us (a provider rebuilt, a lock file edited): init, then once more.
    await init(/-upgrade/.test(output));
    code = await run(bin, args, { cwd: stack.dir, env: childEnv, sink: capture, prefix });
  }
  if (code !== 0) throw runError(`terraform ${verb} of ${stack.name}`, code, childEnv);
  sink(`${prefix}[pgvault] terraform ${verb}: ${seconds(started)}s\n`, 'stdout');
}

/**
 * Runs `command` on the chosen stacks with Terraform: see `inDependencyOrder`.
 */
export function runStacks(all: readonly SynthesizedStack[], chosen: readonly string[], command: StackCommand, childEnv: NodeJS.ProcessEnv, sink: Sink): Promise<void> {
  return inDependencyOrder(all, chosen, command, (s) => terraformStack(s, command, childEnv, sink));
}

/**
 * Calls `runOne` for each chosen stack: in dependency order to deploy, the reverse to destroy,
 * independent stacks at the same time. A dependency outside `chosen` is taken as satisfied (as
 * cdktf's --ignore-missing-stack-dependencies). After a failure no further stack starts; the
 * first failure is thrown once the running ones are done.
 */
export async function inDependencyOrder(
  all: readonly SynthesizedStack[],
  chosen: readonly string[],
  command: StackCommand,
  runOne: (stack: SynthesizedStack) => Promise<void>,
): Promise<void> {
  const stacks = chosen.map((id) => {
    const s = all.find((x) => x.name === id);
    if (!s) throw new Error(`stack ${id} was not synthesized (found: ${all.map((x) => x.name).join(', ') || 'none'}); check the stack name, or synthesize again`);
    return s;
  });
  const ids = new Set(chosen);
  // What must be done before each stack: its dependencies (deploy) or its dependants (destroy).
  const before = new Map(
    stacks.map((s) => [
      s.name,
      command === 'deploy' ? s.dependencies.filter((d) => ids.has(d)) : stacks.filter((o) => o.dependencies.includes(s.name)).map((o) => o.name),
    ]),
  );
  const done = new Set<string>();
  const started = new Set<string>();
  let failure: unknown;
  await new Promise<void>((resolve) => {
    let running = 0;
    const next = () => {
      if (failure === undefined) {
        for (const s of stacks) {
          if (started.has(s.name) || !before.get(s.name)!.every((d) => done.has(d))) continue;
          started.add(s.name);
          running++;
          Promise.resolve()
            .then(() => runOne(s))
            .then(
              () => done.add(s.name),
              (e) => (failure ??= e),
            )
            .finally(() => {
              running--;
              next();
            });
        }
      }
      if (running === 0) resolve();
    };
    next();
  });
  if (failure !== undefined) throw failure;
  const left = stacks.filter((s) => !done.has(s.name)).map((s) => s.name);
  if (left.length) throw new Error(`stacks ${left.join(', ')} depend on each other (a cycle); none of them was run`);
}

/**
 * A stack's outputs as `cdktf deploy --outputs-file` writes them: name → value, sensitive ones
 * left out. Read from the local state file when the stack keeps one, else from Terraform.
 */
export async function stackOutputs(stack: SynthesizedStack, childEnv: NodeJS.ProcessEnv): Promise<Record<string, unknown>> {
  const tf = JSON.parse(fs.readFileSync(path.join(stack.dir, 'cdk.tf.json'), 'utf8'));
  const local = tf.terraform?.backend?.local;
  let outputs: Record<string, { value: unknown; sensitive?: boolean }>;
  if (local) {
    const file = path.resolve(stack.dir, local.path ?? 'terraform.tfstate');
    try {
      outputs = JSON.parse(fs.readFileSync(file, 'utf8')).outputs ?? {};
    } catch {
      outputs = {};
    }
  } else {
    let out = '';
    const code = await run(childEnv.TERRAFORM_BINARY_NAME || 'terraform', ['output', '-json', '-no-color'], {
      cwd: stack.dir,
      env: childEnv,
      prefix: '',
      sink: (d, s) => {
        if (s === 'stdout') out += d;
      },
    });
    if (code !== 0) throw runError(`terraform output of ${stack.name}`, code, childEnv);
    outputs = JSON.parse(out || '{}');
  }
  const result: Record<string, unknown> = {};
  for (const [k, o] of Object.entries(outputs)) if (!o.sensitive) result[k] = o.value;
  return result;
}
