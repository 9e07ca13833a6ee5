/**
 * The paths that moved with the operations code (scripts/ → ops/, api/, demo/) and that others
 * hold: the hook script of environments deployed before the move (their Terraform state and
 * their synthesized cdk.tf.json say dist/scripts/hooks.js), and the server's documented path
 * and bin. The old paths still run the moved code.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { REPO_ROOT } from '../../stacks/config';

const run = (script: string, args: string[], env: NodeJS.ProcessEnv = {}) =>
  spawnSync(process.execPath, [path.join(REPO_ROOT, 'dist', script), ...args], { encoding: 'utf8', timeout: 30_000, killSignal: 'SIGKILL', env: { ...process.env, ...env } });

test('dist/scripts/hooks.js runs the hooks (ops/hooks.ts), with their checks of the state\'s input', { timeout: 60_000 }, () => {
  const usage = run('scripts/hooks.js', []);
  assert.equal(usage.status, 1);
  assert.match(usage.stderr, /usage: hooks\.js bootstrap\|teardown\|revoke-leases\|write-outputs\|remove-outputs <environment>/);
  const env = { PGVAULT_HOOK_INPUT: JSON.stringify({ environment: 'other', script: '../../../dist/scripts/hooks.js' }) };
  const refused = run('scripts/hooks.js', ['remove-outputs', 'local'], env);
  assert.equal(refused.status, 1);
  assert.match(refused.stderr, /hook remove-outputs for "local" refused: the state's input names the environment "other".*Nothing ran/);
});

test('dist/scripts/serve.js (deprecated) and the pgvault-serve bin start the API server (api/serve.ts)', { timeout: 60_000 }, () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8'));
  assert.equal(pkg.bin['pgvault-serve'], 'dist/api/serve.js');
  assert.match(fs.readFileSync(path.join(REPO_ROOT, pkg.bin['pgvault-serve']), 'utf8'), /^#!\/usr\/bin\/env node\n/);
  for (const script of ['scripts/serve.js', 'api/serve.js']) {
    const r = run(script, ['no-such-env']);
    assert.equal(r.status, 1, `${script}: ${r.stdout}${r.stderr}`);
    assert.match(r.stdout + r.stderr, /"name":"pgvault-serve".*cannot start: ENV_UNKNOWN: Unknown environment \\"no-such-env\\"/, script);
  }
});
