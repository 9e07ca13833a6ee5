import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

test('the structured logger redacts secrets wherever the app puts them', () => {
  const mod = require.resolve('@pgvault/runtime');
  const script = `const { createLogger } = require(${JSON.stringify(mod)});
    createLogger('t').info({ password: 'S1', creds: { password: 'S2', secret_id: 'S3' }, token: 'S4', headers: { 'x-vault-token': 'S5' } }, 'hello');`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const line = JSON.parse(r.stderr.trim());
  assert.equal(line.msg, 'hello');
  assert.doesNotMatch(r.stderr, /S[1-5]/);
  assert.equal(line.creds.password, '[redacted]');
});
