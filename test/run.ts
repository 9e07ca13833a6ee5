/**
 * Runs the test files with node's test runner, one file at a time:
 * unit (synth, config, statements) first, then end to end against the real toolchain.
 *   node dist/test/run.js          all
 *   node dist/test/run.js unit     unit only
 *   node dist/test/run.js e2e      end to end only
 *   node dist/test/run.js faults   fault tests of the API only
 *   node dist/test/run.js e2e 6-,7-   the files of a layer whose names start with 6- or 7-
 *
 * Nothing can hang the run: every test and hook gets a timeout (PGVAULT_TEST_TIMEOUT_MS; see
 * nodeTestArgs), every file a deadline (PGVAULT_FILE_TIMEOUT_S) after which its process
 * group is killed and the test that was running is named. Deployments the suites
 * share (ha: 6-ha, then 7-replica) are destroyed at the end of the run, whatever happened.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { localDir } from '../stacks/config';

/** Per layer: each test's and hook's timeout, and each file's deadline. */
const LIMITS: Record<string, { testMs: number; fileS: number }> = {
  unit: { testMs: 60_000, fileS: 300 },
  e2e: { testMs: 900_000, fileS: 2_400 },
  faults: { testMs: 300_000, fileS: 1_200 },
};

/** Environments that several e2e files deploy and leave up for the next one (see test/harness.ts). */
export const SHARED_ENVIRONMENTS = ['ha'];

interface FileResult {
  readonly file: string;
  readonly seconds: number;
  readonly counts: Record<'tests' | 'pass' | 'fail' | 'cancelled' | 'skipped', number>;
  readonly problem?: string;
}

/**
 * The counts from a report's summary: the spec reporter's (`ℹ tests 12`) or TAP's (`# tests 12`).
 * (A file reporter would lose its trailer to --test-force-exit; stdout is read instead.)
 */
export function tapCounts(report: string): FileResult['counts'] {
  const count = (k: string) => Number(new RegExp(`^(?:#|ℹ) ${k} (\\d+)$`, 'm').exec(report)?.[1] ?? 0);
  return { tests: count('tests'), pass: count('pass'), fail: count('fail'), cancelled: count('cancelled'), skipped: count('skipped') };
}

/** The last test the spec reporter showed as started or done, to name what hung. */
function lastTestLine(output: string): string {
  const lines = output.split('\n').map((l) => l.trim()).filter((l) => /^[▶✔✖﹣#]/.test(l) || /^# Subtest/.test(l));
  return lines[lines.length - 1] ?? '(no test had reported yet)';
}

/**
 * node's arguments for one file: hooks bounded by the preload (test/timeouts.ts), tests by
 * --test-timeout on Node 22 and later (on Node 20 that option bounds the whole file, which
 * the runner's deadline does already). --test-force-exit: a timed-out test's handles (a hung
 * deploy) do not keep the file's process alive.
 */
export function nodeTestArgs(testMs: number, nodeMajor = Number(process.versions.node.split('.')[0])): string[] {
  // DEP0044: cdktf 0.21 (archived) calls util.isArray, deprecated at run time from Node 22 on.
  return ['--disable-warning=DEP0044', '--require', path.join(__dirname, 'timeouts.js'), '--test', '--test-concurrency=1', '--test-force-exit', ...(nodeMajor >= 22 ? [`--test-timeout=${testMs}`] : [])];
}

/** The file's process running now: a Ctrl-C of the runner ends its group too (it has its own). */
let current: { pid?: number } | undefined;

function runFile(file: string, limits: { testMs: number; fileS: number }): Promise<FileResult> {
  const testMs = Number(process.env.PGVAULT_TEST_TIMEOUT_MS ?? limits.testMs);
  const args = [
    ...nodeTestArgs(testMs),
    '--test-reporter=spec',
    file,
  ];
  const started = Date.now();
  return new Promise((resolve) => {
    // A process group of its own, so that a deadline ends the servers and deploys it started too.
    const child = spawn(process.execPath, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
      env: { ...process.env, PGVAULT_TEST_TIMEOUT_MS: String(testMs) },
    });
    current = child;
    let tail = '';
    let summary = '';
    const relay = (to: NodeJS.WriteStream) => (d: Buffer) => {
      to.write(d);
      tail = (tail + d.toString()).slice(-8192);
      // The spec reporter's summary lines, wherever they fall (a long failure list follows them).
      for (const m of tail.matchAll(/^ℹ (tests|pass|fail|cancelled|skipped) \d+$/gm)) if (!summary.includes(`${m[0]}\n`)) summary += `${m[0]}\n`;
    };
    child.stdout.on('data', relay(process.stdout));
    child.stderr.on('data', relay(process.stderr));
    const deadlineS = Number(process.env.PGVAULT_FILE_TIMEOUT_S ?? limits.fileS);
    let problem: string | undefined;
    const kill = (signal: NodeJS.Signals) => {
      try {
        process.kill(-child.pid!, signal);
      } catch {
        // already gone
      }
    };
    const timer = setTimeout(() => {
      problem = `${path.relative(process.cwd(), file)} did not finish within ${deadlineS} s (PGVAULT_FILE_TIMEOUT_S); killed. Last test seen: ${lastTestLine(tail)}`;
      console.error(`\n[test/run] TIMEOUT: ${problem}`);
      kill('SIGTERM');
      setTimeout(() => kill('SIGKILL'), 10_000).unref();
    }, deadlineS * 1000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const counts = tapCounts(summary);
      if (!problem && code !== 0) problem = `${path.relative(process.cwd(), file)} exited with ${code ?? signal}`;
      resolve({ file, seconds: (Date.now() - started) / 1000, counts, problem });
    });
  });
}

/** Destroys the shared deployments the files left up (the files leave them only under this runner). */
function destroyShared(): void {
  const cli = path.join(__dirname, '..', 'scripts', 'cli.js');
  for (const env of SHARED_ENVIRONMENTS) {
    const names = spawnSync('docker', ['ps', '-a', '--filter', `name=pgvault-${env}-`, '--format', '{{.Names}}'], { encoding: 'utf8', timeout: 30_000 });
    if (!names.stdout?.trim() && !fs.existsSync(localDir(env))) continue;
    console.log(`[test/run] destroying the shared deployment ${env}`);
    const r = spawnSync(process.execPath, [cli, 'destroy', env], { stdio: 'inherit', timeout: 600_000, killSignal: 'SIGKILL' });
    if (r.error || r.status !== 0) console.error(`[test/run] destroy of ${env} failed (${r.error?.message ?? `exit ${r.status}`}); run: npm run destroy -- ${env}`);
  }
}

async function main(): Promise<number> {
  const layers = process.argv[2] ? [process.argv[2]] : ['unit', 'e2e', 'faults'];
  const only = process.argv[3]?.split(',');
  const files: { file: string; layer: string }[] = [];
  for (const layer of layers) {
    const dir = path.join(__dirname, layer);
    if (!fs.existsSync(dir) || !LIMITS[layer]) {
      console.error(`no test layer "${layer}" (expected ${dir}; layers: ${Object.keys(LIMITS).join(', ')})`);
      return 2;
    }
    files.push(...fs.readdirSync(dir).filter((f) => f.endsWith('.test.js') && (!only || only.some((p) => f.startsWith(p)))).sort((a, b) => a.localeCompare(b, 'en', { numeric: true })).map((f) => ({ file: path.join(dir, f), layer })));
  }
  if (!files.length) {
    console.error(`no test file in ${layers.join(', ')}${only ? ` whose name starts with ${only.join(' or ')}` : ''}`);
    return 2;
  }
  // cdktf's own output goes to a log file; a failing deploy shows its tail.
  const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-test-'));
  process.env.PGVAULT_CDKTF_LOG ??= path.join(logDir, 'cdktf.log');
  // The e2e files leave the shared deployments up for the next file; destroyed below.
  process.env.PGVAULT_SHARED_DEPLOYMENTS = 'keep';
  console.log(`cdktf output: ${process.env.PGVAULT_CDKTF_LOG}`);
  const started = Date.now();
  const results: FileResult[] = [];
  const stop = () => {
    try {
      if (current?.pid) process.kill(-current.pid, 'SIGTERM');
    } catch {
      // already gone
    }
    destroyShared();
    process.exit(130);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    for (const { file, layer } of files) results.push(await runFile(file, LIMITS[layer]));
  } finally {
    if (layers.includes('e2e')) destroyShared();
  }
  const total = { tests: 0, pass: 0, fail: 0, cancelled: 0, skipped: 0 };
  console.log('\n[test/run] per file:');
  for (const r of results) {
    for (const k of Object.keys(total) as (keyof typeof total)[]) total[k] += r.counts[k];
    console.log(`  ${r.problem ? 'FAIL' : 'ok  '} ${path.relative(process.cwd(), r.file).padEnd(40)} ${r.seconds.toFixed(0).padStart(5)} s  ${r.counts.pass}/${r.counts.tests}`);
  }
  const problems = results.filter((r) => r.problem);
  for (const p of problems) console.log(`  - ${p.problem}`);
  console.log(
    `[test/run] tests ${total.tests}, pass ${total.pass}, fail ${total.fail}, cancelled ${total.cancelled}, skipped ${total.skipped}; ` +
      `${files.length} files in ${((Date.now() - started) / 1000).toFixed(0)} s on Node ${process.version}`,
  );
  // The plain closing line CI reads (failures include cancelled tests and files that died).
  console.log(`tests: ${total.pass} passed, ${total.fail + total.cancelled + problems.length} failed`);
  return problems.length || total.fail || total.cancelled ? 1 : 0;
}

if (require.main === module) main().then((code) => process.exit(code));
