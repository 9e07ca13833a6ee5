/**
 * npm run bench:deploy [-- <env>] [--runs N] [--cold-runs N] [--before <git revision>]
 *
 * What a deploy costs beyond Terraform's own work, measured in one run (not a test: it prints,
 * it does not assert). The environment (default `local`, a docker environment) is deployed,
 * destroyed and deployed again: never point it at one whose data matters.
 *
 * 1. No change: `npm run deploy -- <env>` against plain `terraform apply -auto-approve` of the
 *    same synthesized stacks, one after the other, in their already initialized working
 *    directories; alternating runs (the order rotates each round), medians, their ratio, and
 *    where the difference goes (npm's start-up, Node's start-up and the CLI's modules, the
 *    synth and the deploy's own checks, from the lines the runner writes to the log).
 * 2. A deploy after a change to the environment's file (a new synth, one resource changed).
 * 3. Cold deploy and destroy times.
 *
 * With --before <revision> (e.g. the commit before the fast deploy), that revision is
 * extracted into a scratch directory (git archive, then npm ci: once, kept for later runs)
 * and measured in the same run, alternating with this tree, on the same deployed environment
 * (its .local directory is shared through PGVAULT_LOCAL_DIR). Without it, the figures of
 * issue 16 stand in for "before".
 *
 * BENCH_RUNS (default 5) and BENCH_COLD_RUNS (default 2: the runs of 2 and 3) set the same as the options.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { REPO_ROOT, loadEnvironment, localDir } from '../stacks/config';
import { loadToolchainEnv, readSecretFile } from '../ops';
import { killAtTimeout } from '../ops/terraform/runner';

const args = process.argv.slice(2);
const option = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const envName = args.find((a, i) => !a.startsWith('--') && !args[i - 1]?.startsWith('--')) ?? 'local';
const RUNS = Number(option('--runs') ?? process.env.BENCH_RUNS ?? 5);
const COLD_RUNS = Number(option('--cold-runs') ?? process.env.BENCH_COLD_RUNS ?? 2);
const BEFORE = option('--before');

/** The reference of issue 16, measured on this machine before the change. */
const ISSUE_REFERENCE = { noChange: 7.63, plain: 2.72 };

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const fmt = (x: number) => `${x.toFixed(2)} s`;

let logFile = '';

/**
 * Runs a command with its output in the log; returns the wall-clock seconds. Throws with the log's tail on failure.
 * Past PGVAULT_TERRAFORM_TIMEOUT_S (the deploy's own bound on a terraform run) it is killed, and the error names it.
 */
function timedRun(cmd: string, argv: string[], opts: { cwd: string; env: NodeJS.ProcessEnv; ok?: number[] }): Promise<number> {
  const fd = fs.openSync(logFile, 'a');
  fs.writeSync(fd, `\n### bench: ${cmd} ${argv.join(' ')} (in ${opts.cwd})\n`);
  const started = process.hrtime.bigint();
  return new Promise<number>((resolve, reject) => {
    const child = spawn(cmd, argv, { cwd: opts.cwd, env: opts.env, stdio: ['ignore', fd, fd] });
    let hung: number | undefined;
    const deadline = killAtTimeout(child, opts.env, (seconds) => (hung = seconds));
    child.on('error', (e) => {
      deadline.clear();
      reject(e);
    });
    child.on('exit', (code) => {
      deadline.clear();
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      fs.closeSync(fd);
      if (hung === undefined && (opts.ok ?? [0]).includes(code ?? -1)) return resolve(seconds);
      const tail = fs.readFileSync(logFile, 'utf8').split('\n').slice(-30).join('\n');
      const how = hung === undefined ? `exited with ${code}` : `did not finish within ${hung} s and was killed (PGVAULT_TERRAFORM_TIMEOUT_S sets the bound)`;
      reject(new Error(`${cmd} ${argv.join(' ')} ${how}; the log (${logFile}) ends:\n${tail}`));
    });
  });
}

function logSize(): number {
  return fs.statSync(logFile).size;
}

/** The runner's own timing lines ("[pgvault] terraform apply: 2.31s") written to the log since `offset`. */
function runnerTimes(offset: number): { synth: number; terraform: number } {
  const text = fs.readFileSync(logFile, 'utf8').slice(offset);
  let synth = 0;
  let terraform = 0;
  for (const m of text.matchAll(/\[pgvault\] synth of \S+: ([\d.]+)s/g)) synth += Number(m[1]);
  for (const m of text.matchAll(/\[pgvault\] terraform (?:init|apply|destroy): ([\d.]+)s/g)) terraform += Number(m[1]);
  return { synth, terraform };
}

/** A checkout of the project with its packages installed: this tree, or the "before" revision. */
interface Checkout {
  readonly label: string;
  readonly dir: string;
}

function prepareBefore(rev: string): Checkout {
  const git = (...a: string[]) => spawnSync('git', a, { cwd: REPO_ROOT, encoding: 'utf8' });
  const commit = git('rev-parse', '--short', rev).stdout.trim();
  if (!commit) throw new Error(`--before ${rev}: git rev-parse does not know this revision in ${REPO_ROOT}; give a commit of this repository (e.g. e343d9d)`);
  const dir = path.join(os.tmpdir(), `pgvault-before-${commit}`);
  if (!fs.existsSync(path.join(dir, 'package.json'))) {
    fs.mkdirSync(dir, { recursive: true });
    const r = spawnSync('bash', ['-c', `git archive ${commit} | tar -x -C '${dir}'`], { cwd: REPO_ROOT, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`extracting ${commit} into ${dir} failed: ${r.stderr.trim()}`);
  }
  if (!fs.existsSync(path.join(dir, 'node_modules', '.package-lock.json'))) {
    console.error(`[bench] npm ci in ${dir} (once)`);
    const r = spawnSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: dir, stdio: ['ignore', 'ignore', 'inherit'] });
    if (r.status !== 0) throw new Error(`npm ci in ${dir} failed; run it there by hand to see why`);
  }
  return { label: `before (${commit})`, dir };
}

async function main(): Promise<void> {
  loadToolchainEnv();
  const env = loadEnvironment(envName);
  if (env.infrastructure !== 'docker') {
    throw new Error(`environment ${envName} is "infrastructure": "${env.infrastructure}"; the deploy benchmark destroys and redeploys it, so it runs on docker environments only (e.g. local)`);
  }
  logFile = process.env.PGVAULT_CDKTF_LOG ?? path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-bench-')), 'deploy.log');
  fs.writeFileSync(logFile, '', { flag: 'a' });
  console.log(`environment ${envName}; output of every command in ${logFile}; node ${process.version}, ${os.cpus().length} cores, load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}\n`);

  const after: Checkout = { label: 'this tree', dir: REPO_ROOT };
  const before = BEFORE ? prepareBefore(BEFORE) : undefined;
  // Both checkouts act on one deployed environment: the same state, secrets and outputs.
  const childEnv: NodeJS.ProcessEnv = { ...process.env, PGVAULT_LOCAL_DIR: path.dirname(localDir(envName)), PGVAULT_CDKTF_LOG: logFile };
  const npmRun = (c: Checkout, script: string) => timedRun('npm', ['run', '--silent', script, '--', envName], { cwd: c.dir, env: childEnv });

  const stacks = env.infrastructure === 'docker' ? [`${envName}-infra`, `${envName}-secrets`] : [`${envName}-secrets`];
  const plain = async () => {
    const tfEnv: NodeJS.ProcessEnv = {
      ...childEnv,
      TF_VAR_vault_db_setup_password: readSecretFile(env.secretsEngine.setupPasswordFile, 'the Vault setup password'),
      TF_VAR_vault_dev_root_token: readSecretFile(env.vault.tokenFile, 'the Vault dev root token'),
    };
    const each: number[] = [];
    for (const id of stacks) {
      each.push(await timedRun(tfEnv.TERRAFORM_BINARY_NAME || 'terraform', ['apply', '-auto-approve', '-input=false'], { cwd: path.join(REPO_ROOT, 'cdktf.out', 'stacks', id), env: tfEnv }));
    }
    return each;
  };

  console.error('[bench] warm-up: a deploy from each checkout (builds, synthesizes and initializes what they need)');
  await npmRun(after, 'deploy');
  if (before) await npmRun(before, 'deploy');
  await npmRun(after, 'deploy');

  // 1. No change, alternating.
  const times: Record<string, number[]> = { after: [], plain: [], before: [], npm: [], cli: [], synth: [], runnerTerraform: [], outside: [] };
  const perStack: number[][] = stacks.map(() => []);
  const steps: Record<string, () => Promise<void>> = {
    after: async () => {
      const mark = logSize();
      times.after.push(await npmRun(after, 'deploy'));
      const r = runnerTimes(mark);
      times.synth.push(r.synth);
      times.runnerTerraform.push(r.terraform);
      times.outside.push(times.after[times.after.length - 1] - r.synth - r.terraform);
    },
    plain: async () => {
      const each = await plain();
      each.forEach((t, i) => perStack[i].push(t));
      times.plain.push(each.reduce((a, b) => a + b, 0));
    },
    ...(before ? { before: async () => void times.before.push(await npmRun(before, 'deploy')) } : {}),
    // Where the rest goes: npm's start-up (a script that runs nothing of ours), Node's and the CLI's.
    npm: async () => void times.npm.push(await timedRun('npm', ['run', '--silent', 'env'], { cwd: REPO_ROOT, env: childEnv })),
    cli: async () => void times.cli.push(await timedRun(process.execPath, [path.join(REPO_ROOT, 'dist', 'scripts', 'cli.js')], { cwd: REPO_ROOT, env: childEnv, ok: [2] })),
  };
  const order = Object.keys(steps);
  for (let round = 0; round < RUNS; round++) {
    const rotated = [...order.slice(round % order.length), ...order.slice(0, round % order.length)];
    console.error(`[bench] no-change round ${round + 1}/${RUNS}: ${rotated.join(', ')}`);
    for (const step of rotated) await steps[step]();
  }

  const a = median(times.after);
  const b = median(times.plain);
  console.log(`No-change deploy of ${envName}, ${RUNS} alternating runs each, medians:`);
  console.log(`  npm run deploy -- ${envName} (${after.label})`.padEnd(56) + `${fmt(a)}   runs: ${times.after.map((t) => t.toFixed(2)).join(' ')}`);
  console.log(`  plain terraform apply -auto-approve, ${stacks.length} stacks`.padEnd(56) + `${fmt(b)}   runs: ${times.plain.map((t) => t.toFixed(2)).join(' ')}`);
  stacks.forEach((id, i) => console.log(`    ${id}`.padEnd(56) + fmt(median(perStack[i]))));
  console.log(`  ratio deploy/plain`.padEnd(56) + `${(a / b).toFixed(2)}x`);
  if (before) {
    const c = median(times.before);
    console.log(`  npm run deploy -- ${envName} (${before.label})`.padEnd(56) + `${fmt(c)}   runs: ${times.before.map((t) => t.toFixed(2)).join(' ')}`);
    console.log(`  ratio before/plain`.padEnd(56) + `${(c / b).toFixed(2)}x   (this tree is ${(c / a).toFixed(1)}x faster)`);
  } else {
    console.log(`  before (issue 16's figures): ${ISSUE_REFERENCE.noChange} s against ${ISSUE_REFERENCE.plain} s plain, ${(ISSUE_REFERENCE.noChange / ISSUE_REFERENCE.plain).toFixed(2)}x`);
  }
  const npm = median(times.npm);
  const cli = median(times.cli);
  const synth = median(times.synth);
  const tf = median(times.runnerTerraform);
  console.log(`  where the deploy's time goes (medians):`);
  console.log(`    npm's start-up (npm run --silent env)`.padEnd(56) + fmt(npm));
  console.log(`    Node's start-up, the CLI's modules, toolchain env`.padEnd(56) + fmt(cli));
  console.log(`    synth (0 when up to date)`.padEnd(56) + fmt(synth));
  console.log(`    terraform, as the runner timed it`.padEnd(56) + fmt(tf));
  // Per deploy: its time outside the synth and Terraform; then npm's and Node's shares taken out.
  const rest = median(times.outside) - npm - cli;
  console.log(`    the rest (build check, preflight, Vault, outputs)`.padEnd(56) + fmt(rest) + (rest < 0 ? '   (within the noise)' : ''));
  console.log('');

  const checkouts = before ? [after, before] : [after];

  // 2. A deploy after a change: the environment's file edited (a role's TTL), so the deploy
  //    synthesizes again and Terraform changes one resource. Both checkouts read the copy.
  const envDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-bench-envs-'));
  const doc = JSON.parse(fs.readFileSync(env.file, 'utf8'));
  delete doc.$schema;
  const role = Object.keys(doc.roles)[0];
  const ttl = doc.roles[role].defaultTtlSeconds as number;
  const changed: Record<string, number[]> = Object.fromEntries(checkouts.map((c) => [c.label, []]));
  for (let round = 0; round < COLD_RUNS; round++) {
    for (const c of round % 2 ? [...checkouts].reverse() : checkouts) {
      doc.roles[role].defaultTtlSeconds = doc.roles[role].defaultTtlSeconds === ttl ? ttl - 1 : ttl;
      fs.writeFileSync(path.join(envDir, `${envName}.json`), JSON.stringify(doc, null, 2));
      console.error(`[bench] changed-deploy round ${round + 1}/${COLD_RUNS}: ${c.label} (roles.${role}.defaultTtlSeconds ${doc.roles[role].defaultTtlSeconds})`);
      changed[c.label].push(await timedRun('npm', ['run', '--silent', 'deploy', '--', envName], { cwd: c.dir, env: { ...childEnv, PGVAULT_ENVIRONMENTS_DIR: envDir } }));
    }
  }
  fs.rmSync(envDir, { recursive: true, force: true });
  if (COLD_RUNS > 0) {
    console.log(`Deploy after a change to ${envName}'s file (a new synth, one role updated; ${COLD_RUNS} runs each, medians):`);
    for (const c of checkouts) console.log(`  ${c.label}`.padEnd(24) + `${fmt(median(changed[c.label]))} (${changed[c.label].map((x) => x.toFixed(1)).join(' ')})`);
    console.log('');
  }

  // 3. Cold deploy and destroy, alternating between the checkouts.
  const cold: Record<string, { deploy: number[]; destroy: number[] }> = Object.fromEntries(checkouts.map((c) => [c.label, { deploy: [], destroy: [] }]));
  for (let round = 0; round < COLD_RUNS; round++) {
    const rotated = round % 2 ? [...checkouts].reverse() : checkouts;
    for (const c of rotated) {
      console.error(`[bench] cold round ${round + 1}/${COLD_RUNS}: destroy and deploy from ${c.label}`);
      cold[c.label].destroy.push(await npmRun(c, 'destroy'));
      cold[c.label].deploy.push(await npmRun(c, 'deploy'));
    }
  }
  await npmRun(after, 'destroy');
  if (COLD_RUNS === 0) return;
  console.log(`Cold deploy and destroy of ${envName} (npm run deploy / destroy, ${COLD_RUNS} runs each, medians):`);
  for (const c of checkouts) {
    const t = cold[c.label];
    console.log(`  ${c.label}`.padEnd(24) + `deploy ${fmt(median(t.deploy))} (${t.deploy.map((x) => x.toFixed(1)).join(' ')})   destroy ${fmt(median(t.destroy))} (${t.destroy.map((x) => x.toFixed(1)).join(' ')})`);
  }
  if (!before) console.log('  before: see docs/measurements.md, "Measured times" (cold deploy 19–27 s, destroy 17–25 s), or run with --before e343d9d');
  console.log(`\nThe environment ${envName} is destroyed.`);
}

main().catch((e) => {
  console.error(`bench failed: ${e.message}`);
  process.exit(1);
});
