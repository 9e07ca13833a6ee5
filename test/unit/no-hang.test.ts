/**
 * Nothing hangs a run: a spawned terraform past its bound is killed and named, a test or
 * hook without a timeout of its own gets the runner's (test/timeouts.ts), and the runner
 * reads its counts from the TAP trailer.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { runStacks, StackRunError } from '../../ops/terraform/runner';
import { REPO_ROOT } from '../../stacks/config';
import { nodeTestArgs, tapCounts } from '../run';

test('a terraform that hangs is killed at PGVAULT_TERRAFORM_TIMEOUT_S, and the error names the step and the bound', { timeout: 30_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-hang-'));
  try {
    // A fake terraform (a shell script) that never answers.
    const fake = path.join(dir, 'fake-terraform');
    fs.writeFileSync(fake, '#!/bin/sh\nexec sleep 60\n', { mode: 0o755 });
    const stackDir = path.join(dir, 'stack');
    fs.mkdirSync(path.join(stackDir, '.terraform'), { recursive: true });
    fs.writeFileSync(path.join(stackDir, 'cdk.tf.json'), JSON.stringify({ terraform: {} }));
    const lines: string[] = [];
    const started = Date.now();
    await assert.rejects(
      runStacks([{ name: 'x-secrets', dir: stackDir, dependencies: [] }], ['x-secrets'], 'deploy', { PATH: process.env.PATH, TERRAFORM_BINARY_NAME: fake, PGVAULT_TERRAFORM_TIMEOUT_S: '1' }, (t) => void lines.push(t)),
      (e: any) => {
        assert.ok(e instanceof StackRunError);
        assert.equal(e.timedOutAfterSeconds, 1);
        assert.match(e.message, /^terraform init of x-secrets did not finish within 1 s and was killed \(PGVAULT_TERRAFORM_TIMEOUT_S/);
        return true;
      },
    );
    assert.ok(Date.now() - started < 15_000, 'stopped near its bound, not after the fake exits');
    assert.match(lines.join(''), /x-secrets {2}\[pgvault\] fake-terraform init did not finish within 1 s: stopping it/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('under the runner\'s arguments a hook or test that hangs fails at PGVAULT_TEST_TIMEOUT_MS, and an explicit timeout is kept', { timeout: 60_000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-timeouts-'));
  const perTest = Number(process.versions.node.split('.')[0]) >= 22;
  try {
    const file = path.join(dir, 'hangs.test.js');
    const hang = '() => new Promise(() => setInterval(() => {}, 1000))';
    fs.writeFileSync(
      file,
      [
        "const { before, describe, test } = require('node:test');",
        `describe('a suite whose before hook hangs', () => { before(${hang}); test('never runs', () => {}); });`,
        // On Node 20 a hanging test is bounded by the runner's per-file deadline instead.
        perTest ? `test('a test that hangs', ${hang});` : '',
        "test('a test with its own longer timeout', { timeout: 5000 }, () => new Promise((r) => setTimeout(r, 1500)));",
      ].join('\n'),
    );
    const r = spawnSync(process.execPath, [...nodeTestArgs(1000), '--test-reporter=tap', file], {
      encoding: 'utf8',
      // Not as a child of this test process (NODE_TEST_CONTEXT): a run of its own.
      env: { ...process.env, NODE_TEST_CONTEXT: undefined, PGVAULT_TEST_TIMEOUT_MS: '1000' },
      timeout: 50_000,
    });
    assert.equal(r.error, undefined, 'the run ended by itself');
    assert.notEqual(r.status, 0);
    assert.equal(tapCounts(r.stdout).pass, 1, r.stdout);
    assert.match(r.stdout, /not ok \d+ - a suite whose before hook hangs/);
    // Node 20 reports the hook as failed, later versions as timed out: either way within ~1 s.
    assert.match(r.stdout, /failed running before hook|timed out after 1000ms/);
    if (perTest) assert.match(r.stdout, /not ok \d+ - a test that hangs/);
    assert.match(r.stdout, /\nok \d+ - a test with its own longer timeout/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a toolchain step longer than PGVAULT_PROGRESS_S prints what it does and the elapsed time at that interval, and its total', { timeout: 30_000 }, () => {
  const cache = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-progress-'));
  try {
    const script = `. ${path.join(REPO_ROOT, 'toolchain', 'toolchain.sh')}; CACHE='${cache}'; STEP='building something slow'; run slow 'nothing' sh -c 'echo compiling part 1; sleep 3.5; echo linking'`;
    const r = spawnSync('bash', ['-c', script], { encoding: 'utf8', timeout: 20_000, env: { ...process.env, PGVAULT_TOOLCHAIN_SOURCE_ONLY: '1', PGVAULT_PROGRESS_S: '1' } });
    assert.equal(r.status, 0, r.stderr);
    const progress = r.stderr.split('\n').filter((l) => l.includes('still running'));
    assert.ok(progress.length >= 2, r.stderr);
    assert.match(progress[0], /^\[toolchain\] building something slow: still running, \d+s elapsed \(compiling part 1\)$/);
    assert.match(r.stderr, /\[toolchain\] building something slow: done in [3-6]s/); // [3-6]: a loaded machine adds seconds
  } finally {
    fs.rmSync(cache, { recursive: true, force: true });
  }
});

/** Runs `body` in bash with the toolchain's functions, a fake `docker` that never answers first on PATH, and the docker bound at 1 s. */
function withHungDocker(body: string) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-docker-hang-'));
  try {
    fs.writeFileSync(path.join(dir, 'docker'), '#!/bin/sh\nexec sleep 60\n', { mode: 0o755 });
    const script = `. ${path.join(REPO_ROOT, 'toolchain', 'toolchain.sh')}; CACHE='${dir}'; ${body}; echo carried-on`;
    const started = Date.now();
    const r = spawnSync('bash', ['-c', script], {
      encoding: 'utf8',
      timeout: 40_000,
      env: { ...process.env, PATH: `${dir}:${process.env.PATH}`, PGVAULT_TOOLCHAIN_SOURCE_ONLY: '1', PGVAULT_DOCKER_TIMEOUT_S: '1', PGVAULT_PROGRESS_S: '1' },
    });
    return { ...r, seconds: (Date.now() - started) / 1000 };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('a docker call of the toolchain that hangs is killed at PGVAULT_DOCKER_TIMEOUT_S and stops it, naming the call (from inside $(...) too); a long docker step is killed at its bound', { timeout: 90_000 }, () => {
  for (const body of [`STEP='docker engine'; dk -q info >/dev/null`, `STEP='postgres image'; image_current pgvault/postgres:x abc || echo not-current`]) {
    const r = withHungDocker(body);
    assert.ok(r.status !== 0, `${body}: exit ${r.status} ${r.signal}`);
    assert.doesNotMatch(r.stdout, /carried-on|not-current/, `${body}: the toolchain stopped at the hang`);
    assert.match(r.stderr, /\[toolchain\] FAILED at step "(docker engine|postgres image)"\n {2}command: docker (-q )?(info|image inspect -f .* pgvault\/postgres:x)\n {2}next: {4}it did not answer within 1s and was killed; check the Docker engine/, body);
    assert.ok(r.seconds < 20, `${body}: stopped after ${r.seconds} s`);
  }
  const r = withHungDocker(`STEP='vault image'; RUN_LIMIT_S=1 run image-vault 'fix the recipe' docker build -t x .`);
  assert.ok(r.status !== 0);
  assert.doesNotMatch(r.stdout, /carried-on/);
  assert.match(r.stderr, /FAILED at step "vault image"\n {2}command: docker build -t x \.\n {2}next: {4}it did not finish within 1s and was killed; fix the recipe/);
  assert.ok(r.seconds < 20, `stopped after ${r.seconds} s`);
});

test('tapCounts reads the TAP trailer', () => {
  assert.deepEqual(tapCounts('ok 1 - a\n# tests 3\n# suites 1\n# pass 2\n# fail 1\n# cancelled 0\n# skipped 0\n'), { tests: 3, pass: 2, fail: 1, cancelled: 0, skipped: 0 });
  assert.deepEqual(tapCounts(''), { tests: 0, pass: 0, fail: 0, cancelled: 0, skipped: 0 });
});
