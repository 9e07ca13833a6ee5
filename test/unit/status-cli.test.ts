/**
 * `status`'s command line, without servers: a usage error exits 2 and says what is expected;
 * an environment that is not deployed is one problem and exit 1, in text and in JSON.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { REPO_ROOT } from '../../stacks/config';

const STATUS = path.join(__dirname, '..', '..', 'ops', 'status', 'status.js');

function status(args: string[], env: NodeJS.ProcessEnv = {}): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [STATUS, ...args], { encoding: 'utf8', timeout: 30_000, killSignal: 'SIGKILL', env: { ...process.env, ...env } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('fails with exit 2 for an unknown environment, naming the known ones, and for an unknown option', () => {
  const r = status(['no-such-env']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /Unknown environment "no-such-env".*Known environments: .*local/);
  assert.match(r.stderr, /usage: npm run --silent status -- <environment> \[--json\]/);
  const o = status(['local', '--jsn']);
  assert.equal(o.code, 2);
  assert.match(o.stderr, /unknown argument --jsn; usage/);
});

test('an environment that is not deployed: one problem saying to deploy it, exit 1', () => {
  // A copy of local with its own name and ports nothing listens on: never deployed.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-status-cli-'));
  const doc = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'environments', 'local.json'), 'utf8'));
  delete doc.$schema;
  doc.docker = { postgresHostPort: 15598, vaultHostPort: 18398 };
  fs.writeFileSync(path.join(dir, 'status-cli.json'), JSON.stringify(doc));
  try {
    const j = status(['status-cli', '--json'], { PGVAULT_ENVIRONMENTS_DIR: dir });
    assert.equal(j.code, 1, j.stderr);
    const report = JSON.parse(j.stdout);
    assert.equal(report.ok, false);
    assert.deepEqual(report.problems, ['status-cli is not deployed (no .local/status-cli/outputs.json): run npm run deploy -- status-cli']);
    assert.deepEqual(report.state, { backend: 'local', locked: false });
    const t = status(['status-cli'], { PGVAULT_ENVIRONMENTS_DIR: dir });
    assert.equal(t.code, 1);
    assert.match(t.stdout, /^Environment status-cli: 1 problem$/m);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
