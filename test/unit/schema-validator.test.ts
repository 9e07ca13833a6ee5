import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { schemaValidator } from '../../stacks/schema-validator';

test('a kept validator answers as the freshly compiled one, errors included', () => {
  const schema = {
    $id: `https://pgvault-creds.local/test-${process.pid}-${Date.now()}.json`,
    type: 'object',
    additionalProperties: false,
    required: ['port'],
    properties: { port: { type: 'integer', minimum: 1, maximum: 65535 }, name: { type: 'string', pattern: '^[a-z]+$' } },
  };
  const dir = path.join(__dirname, '..', '..', 'stacks');
  const before = new Set(fs.readdirSync(dir));
  const fresh = schemaValidator(schema, { allErrors: true, strict: false });
  const kept = fs.readdirSync(dir).filter((f) => !before.has(f));
  try {
    assert.equal(kept.length, 1, 'the compiled validator is kept beside the module');
    const again = schemaValidator(schema, { allErrors: true, strict: false });
    for (const doc of [{ port: 5432 }, { port: 0, name: 'A', extra: 1 }, {}]) {
      assert.equal(again(doc), fresh(doc));
      assert.deepEqual(again.errors ?? null, fresh.errors ?? null);
    }
    assert.equal(again({ port: 0, name: 'A', extra: 1 }), false);
    assert.equal(again.errors?.length, 3, 'allErrors: every error is reported');
  } finally {
    for (const f of kept) fs.rmSync(path.join(dir, f), { force: true });
  }
});
