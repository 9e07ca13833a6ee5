import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { resolveEnvironment } from '../../stacks/config';
import { imagePostgresMajor, postgresDataVersionMismatch, postgresDataVolume } from '../../ops/local/preflight';

test('the PostgreSQL major of an image comes from its PG_MAJOR, else from its tag', () => {
  assert.equal(imagePostgresMajor('pgvault/postgres:17-trixie-local', ['PATH=/usr/bin', 'PG_MAJOR=17']), '17');
  assert.equal(imagePostgresMajor('mirror.example/postgres:latest', ['PG_MAJOR=16']), '16');
  assert.equal(imagePostgresMajor('postgres:17', undefined), '17');
  assert.equal(imagePostgresMajor('postgres:15-bookworm', undefined), '15');
  assert.equal(imagePostgresMajor('postgres:17.6-trixie', []), '17');
  assert.equal(imagePostgresMajor('registry.example:5000/postgres', undefined), undefined);
  assert.equal(imagePostgresMajor('postgres:latest', undefined), undefined);
});

test('the version mismatch error names the volume, both versions and the fix', () => {
  const env = resolveEnvironment('demo', 'environments/demo.json', {
    infrastructure: 'docker',
    roles: { readonly: { access: 'read', defaultTtlSeconds: 60, maxTtlSeconds: 120 } },
  });
  const volume = postgresDataVolume(env);
  assert.equal(volume, 'pgvault-demo-postgres-data');
  const e = postgresDataVersionMismatch(env, volume, '15', 'postgres:17', '17');
  assert.equal(e.code, 'PG_DATA_VERSION');
  assert.match(e.message, /pgvault-demo-postgres-data holds a PostgreSQL 15 cluster, but the image postgres:17 runs PostgreSQL 17/);
  assert.match(e.message, /'npm run destroy -- demo' then 'npm run deploy -- demo'/);
  assert.match(e.message, /deletes the volume and its data/);
  assert.match(e.message, /set "docker\.postgresImage" in the environment file \(it wins over POSTGRES_IMAGE\), or POSTGRES_IMAGE when the file sets none/);
});
