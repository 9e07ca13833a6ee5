/**
 * close() during a drain: every waiter of the drain is woken, and no timer of the drain
 * holds the process open (issue 21, item 9). A child process does it and is timed.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { spawn } from 'node:child_process';

test('a process whose pool was closed during a drain exits promptly', { timeout: 60_000 }, async () => {
  const started = Date.now();
  const child = spawn(process.execPath, [path.join(__dirname, 'drain-exit-child.js')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const code = await new Promise<number | null>((r) => child.on('exit', r));
  const took = Date.now() - started;
  assert.equal(code, 0, out);
  assert.match(out, /closed in \d+ ms/);
  assert.ok(took < 5000, `the process exited ${took} ms after start (${out.trim()}); the drain timeout is 30 s`);
});
