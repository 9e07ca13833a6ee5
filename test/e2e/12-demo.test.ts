/**
 * `npm run demo`, the main job, as a user runs it (toolchain, build, deploy, the checks) on a
 * copy of `local` with its own name and ports: its exit code on success and on failure, and
 * that it never prints a password, a token or a secret_id (the ones it really handled,
 * recorded by test/demo-spy.ts, and the environment's own secret files).
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { localDir, REPO_ROOT } from '../../stacks/config';
import * as h from '../harness';

const ENV = 'demo';
const PG_PORT = 15550;
const VAULT_PORT = 18350;
const DEMO_TIMEOUT_MS = 900_000;

interface DemoRun {
  status: number | null;
  output: string;
  spied: { kind: string; value: string }[];
}

/** `npm run demo -- demo`, with the spy preloaded; stdout and stderr together. */
function npmDemo(spyFile: string): DemoRun {
  fs.rmSync(spyFile, { force: true });
  const r = spawnSync('npm', ['run', 'demo', '--', ENV], {
    cwd: REPO_ROOT,
    encoding: 'utf8',
    env: { ...process.env, NODE_OPTIONS: `--require ${path.join(__dirname, '..', 'demo-spy.js')}`, PGVAULT_DEMO_SPY_FILE: spyFile, PGVAULT_CDKTF_LOG: undefined },
    timeout: DEMO_TIMEOUT_MS,
    killSignal: 'SIGKILL',
  });
  if (r.error) throw new Error(`npm run demo -- ${ENV}: ${(r.error as any).code === 'ETIMEDOUT' ? `hung, killed after ${DEMO_TIMEOUT_MS / 1000} s` : r.error.message}`);
  const spied = fs.existsSync(spyFile)
    ? fs.readFileSync(spyFile, 'utf8').split('\n').filter(Boolean).map((l) => ({ kind: l.slice(0, l.indexOf('\t')), value: l.slice(l.indexOf('\t') + 1) }))
    : [];
  return { status: r.status, output: `${r.stdout}\n${r.stderr}`, spied };
}

/** The environment's secret files (passwords, the root token), as written before the deploy. */
function secretFiles(): { file: string; value: string }[] {
  const dir = localDir(ENV);
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isFile() && !/\.(json|log|tfstate|backup)$/.test(e.name))
    .map((e) => ({ file: e.name, value: fs.readFileSync(path.join(dir, e.name), 'utf8').trim() }))
    .filter((s) => s.value.length >= 8);
}

function assertNoSecretIn(output: string, secrets: { what: string; value: string }[]): void {
  for (const s of secrets) assert.ok(!output.includes(s.value), `the demo printed ${s.what}`);
  assert.doesNotMatch(output, /\b(hv[sbr]|s|b)\.[A-Za-z0-9_-]{20,}/, 'no Vault token shape in the output');
}

describe('npm run demo', () => {
  let spyFile: string;
  let blocker: net.Server | undefined;

  before(async () => {
    h.requireToolchain();
    h.scratchEnvironment('local', (doc) => {
      doc.description = 'A copy of local for the demo test, with its own name and ports.';
      doc.docker.postgresHostPort = PG_PORT;
      doc.docker.vaultHostPort = VAULT_PORT;
    }, ENV);
    spyFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-demo-')), 'spied');
    await h.destroy(ENV);
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  after(async () => {
    await new Promise((r) => (blocker ? blocker.close(r) : r(undefined)));
    await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
    fs.rmSync(path.dirname(spyFile), { recursive: true, force: true });
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  test('on success: exit code 0, every check PASS, and no password, token or secret_id in its output', () => {
    const t = Date.now();
    const run = npmDemo(spyFile);
    console.log(`# figure: npm run demo (warm toolchain, cold deploy of ${ENV}): ${((Date.now() - t) / 1000).toFixed(1)}s`);
    assert.equal(run.status, 0, run.output.slice(-3000));
    assert.match(run.output, /All checks passed\./);
    assert.doesNotMatch(run.output, /\bFAIL\b/);
    for (const role of ['readonly', 'readwrite']) assert.match(run.output, new RegExp(`role ${role}: user v-`));
    const passwords = run.spied.filter((s) => s.kind === 'password');
    assert.ok(passwords.length >= 2, `the spy saw the issued passwords (${passwords.length})`);
    assert.ok(run.spied.some((s) => s.kind === 'token') && run.spied.some((s) => s.kind === 'secret_id'), 'and the token and secret_id');
    const files = secretFiles();
    assert.ok(files.length >= 3, `the environment's secret files exist (${files.map((f) => f.file).join(', ')})`);
    assertNoSecretIn(run.output, [...run.spied.map((s) => ({ what: `a ${s.kind}`, value: s.value })), ...files.map((f) => ({ what: `the content of .local/${ENV}/${f.file}`, value: f.value }))]);
  });

  test('on failure (the Vault port taken): a non-zero exit code, the reason, and no secret in its output', async () => {
    await h.destroy(ENV);
    blocker = net.createServer();
    await new Promise<void>((resolve, reject) => blocker!.once('error', reject).listen(VAULT_PORT, '127.0.0.1', resolve));
    const run = npmDemo(spyFile);
    assert.equal(run.status, 1, run.output.slice(-3000));
    assert.match(run.output, new RegExp(`error: .*${VAULT_PORT}|${VAULT_PORT}.*(in use|already allocated|address already)`, 'i'), 'the reason names the port');
    assert.doesNotMatch(run.output, /All checks passed/);
    assertNoSecretIn(run.output, secretFiles().map((f) => ({ what: `the content of .local/${ENV}/${f.file}`, value: f.value })));
  });
});
