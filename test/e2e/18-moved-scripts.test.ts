/**
 * End to end on `compat` (a copy of `local` on its own ports): an environment deployed by the
 * code from before the operations code moved (scripts/ → ops/, commit 27b68d8) is destroyed
 * by the code of this tree, and nothing of it is left.
 *
 * What makes it faithful: the deploy is the old code itself, not a state edited to look like
 * one. The commit is extracted with `git archive` (no `npm ci`: its package-lock.json is this
 * tree's, so its node_modules links to this tree's packages, except its own @pgvault/runtime,
 * which links to its own app/), built, and deployed with its CLI as `npm run deploy` ran it,
 * into this tree's `.local/` (PGVAULT_LOCAL_DIR): the state holds what every environment
 * deployed before the move holds, the hook script `../../../dist/scripts/hooks.js` in each hook's
 * input. This tree's destroy then synthesizes its own configuration (the hooks run
 * dist/ops/hooks.js) against that state: the state check must take the old path for a moved
 * script, not for tampering, and the hooks must accept the old path in their input.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { REPO_ROOT, localDir } from '../../stacks/config';
import * as h from '../harness';

const ENV = 'compat';
/** The last commit before the move. */
const BEFORE_MOVE = '27b68d8';
const OLD_HOOKS = '../../../dist/scripts/hooks.js';
const NEW_HOOKS = '../../../dist/ops/hooks.js';
/** The time the old tree's build and deploy may take. */
const OLD_STEP_TIMEOUT_MS = 600_000;

/** BEFORE_MOVE extracted and built in a scratch directory (kept for later runs: the build is skipped when up to date). */
function oldTree(): string {
  const dir = path.join(os.tmpdir(), `pgvault-before-move-${BEFORE_MOVE}`);
  if (!fs.existsSync(path.join(dir, 'package.json'))) {
    fs.mkdirSync(dir, { recursive: true });
    const r = spawnSync('bash', ['-c', `git archive ${BEFORE_MOVE} | tar -x -C '${dir}'`], { cwd: REPO_ROOT, encoding: 'utf8', timeout: 60_000 });
    if (r.status !== 0) {
      fs.rmSync(dir, { recursive: true, force: true });
      throw new Error(`end-to-end prerequisite missing: the commit ${BEFORE_MOVE} (the code before the move) in ${REPO_ROOT}'s git history: ${r.stderr.trim()}. Run this test from a git clone of the project.`);
    }
    const modules = path.join(dir, 'node_modules');
    fs.mkdirSync(path.join(modules, '@pgvault'), { recursive: true });
    for (const name of fs.readdirSync(path.join(REPO_ROOT, 'node_modules'))) {
      if (name !== '@pgvault') fs.symlinkSync(path.join(REPO_ROOT, 'node_modules', name), path.join(modules, name));
    }
    fs.symlinkSync(path.join('..', '..', 'app'), path.join(modules, '@pgvault', 'runtime'));
  }
  return dir;
}

/** The old tree's `npm run deploy -- compat` (build, then its CLI), into this tree's `.local/`. */
function oldDeploy(dir: string): void {
  const r = spawnSync(process.execPath, ['scripts/build.js', '--then', 'dist/scripts/cli.js', 'deploy', ENV], {
    cwd: dir,
    env: { ...process.env, PGVAULT_LOCAL_DIR: path.dirname(localDir(ENV)) },
    encoding: 'utf8',
    timeout: OLD_STEP_TIMEOUT_MS,
    killSignal: 'SIGKILL',
  });
  assert.equal(r.status, 0, `the deploy of ${BEFORE_MOVE} failed:\n${r.stdout}\n${r.stderr}\n${h.cdktfLogSince(0).slice(-4000)}`);
}

function hookScripts(stack: string): string[] {
  const state = JSON.parse(fs.readFileSync(path.join(localDir(ENV), 'state', `${stack}.tfstate`), 'utf8'));
  return state.resources.filter((r: any) => r.type === 'terraform_data').map((r: any) => r.instances[0].attributes.input.value.script);
}

function dockerObjects(): string[] {
  const list = (...args: string[]) => h.docker(...args, '--filter', `name=pgvault-${ENV}`).split('\n').filter(Boolean);
  return [...list('ps', '-a', '--format', '{{.Names}}'), ...list('volume', 'ls', '--format', '{{.Name}}'), ...list('network', 'ls', '--format', '{{.Name}}')];
}

describe('an environment deployed before the operations code moved', () => {
  let dir: string;

  before(
    async () => {
      h.requireToolchain();
      h.localCopy(ENV, { postgres: 15610, vault: 18410 });
      await h.destroy(ENV); // whatever an earlier run left
      const { value, seconds } = await h.timed(async () => oldTree());
      dir = value;
      console.log(`# figure: ${BEFORE_MOVE} extracted in ${dir}: ${seconds.toFixed(1)}s`);
    },
    { timeout: OLD_STEP_TIMEOUT_MS },
  );

  after(
    async () => {
      if (fs.existsSync(localDir(ENV))) await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
    },
    { timeout: 600_000 },
  );

  test('is destroyed by this tree: the hooks run from their new path, and nothing is left', { timeout: 2 * OLD_STEP_TIMEOUT_MS }, async () => {
    const { seconds } = await h.timed(async () => oldDeploy(dir));
    console.log(`# figure: build and deploy of ${ENV} by ${BEFORE_MOVE}: ${seconds.toFixed(1)}s`);
    const scripts = hookScripts(`${ENV}-secrets`);
    assert.ok(scripts.length >= 5, `the state holds the hooks (${scripts.length})`);
    assert.deepEqual([...new Set(scripts)], [OLD_HOOKS], 'every hook in the state names the script at its old path');
    assert.ok(dockerObjects().length > 0, 'the environment is deployed');

    const offset = h.cdktfLogSize();
    await h.destroy(ENV);
    const log = h.cdktfLogSince(offset);
    for (const action of ['revoke-leases', 'teardown', 'remove-outputs']) {
      assert.ok(log.includes(`Executing: ["node" "--" "${NEW_HOOKS}" "${action}" "${ENV}"]`), `the destroy ran the ${action} hook from its new path`);
    }
    assert.match(log, new RegExp(`leases: ${ENV}: revoked \\d+ live lease\\(s\\)`), 'the revoke-leases hook accepted the old path in its input and ran');
    assert.doesNotMatch(log, new RegExp(`hook \\S+ for "${ENV}" refused`), 'no hook refused its input');
    assert.deepEqual(dockerObjects(), [], 'no container, volume or network of the environment is left');
    assert.equal(fs.existsSync(localDir(ENV)), false, `${localDir(ENV)} is gone`);
  });
});
