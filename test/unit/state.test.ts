import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Testing } from 'cdktf';
import { resolveEnvironment, REPO_ROOT } from '../../stacks/config';
import { ConfigError } from '../../stacks/errors';
import { SecretsStack } from '../../stacks/secrets-stack';
import { LOCK_CONFLICT, stateBackendEnv, stateLocked } from '../../scripts/state-backend';

const shipped = () => JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'environments', 'existing-example.json'), 'utf8'));
const withState = (state: unknown, base = shipped()) => ({ ...base, state });

function rejects(doc: unknown, code: string, ...fragments: string[]): void {
  assert.throws(
    () => resolveEnvironment('t', '/envs/t.json', doc),
    (e: unknown) => {
      assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${e}`);
      assert.equal(e.code, code);
      for (const f of fragments) assert.ok(e.message.includes(f), `message lacks "${f}": ${e.message}`);
      return true;
    },
  );
}

test('state is local by default, as before', () => {
  assert.deepEqual(resolveEnvironment('t', 't.json', shipped()).state, { backend: 'local' });
  assert.deepEqual(resolveEnvironment('t', 't.json', withState({ backend: 'local' })).state, { backend: 'local' });
});

test('pg state: the connection file is resolved from the repository, the schema prefix has a default', () => {
  const env = resolveEnvironment('t', 't.json', withState({ backend: 'pg', connectionFile: '.local/t/state-db' }));
  assert.deepEqual(env.state, { backend: 'pg', connectionFile: path.join(REPO_ROOT, '.local/t/state-db'), schemaPrefix: 'pgvault_state' });
});

test('fails when the pg state settings are wrong, saying which and how to fix them', () => {
  rejects(withState({ backend: 'pg' }), 'ENV_MISSING', '"state.connectionFile"', 'connection string');
  rejects(withState({ backend: 's3' }), 'ENV_SCHEMA', '"state.backend"', '"local", "pg"');
  rejects(withState({ backend: 'pg', connectionFile: 'x', schemaPrefix: 'Bad-Name' }), 'ENV_SCHEMA', '"state.schemaPrefix"');
  rejects(withState({ backend: 'pg', connectionFile: 'x', schemaPrefix: 'a'.repeat(23) }), 'ENV_SCHEMA', '"state.schemaPrefix"');
  rejects(withState({ backend: 'local', connectionFile: 'x' }), 'ENV_SCHEMA', '"state.connectionFile"', '"pg"');
  rejects(withState({ backend: 'pg', connectionFile: 'x', password: 'y' }), 'ENV_SCHEMA', '"state.password"');
  const docker = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'environments', 'local.json'), 'utf8'));
  rejects(withState({ backend: 'pg', connectionFile: 'x' }, docker), 'ENV_SCHEMA', '"state.backend"', 'root token');
});

test('pg state synthesizes a pg backend per stack with no connection string in cdk.tf.json', () => {
  const env = resolveEnvironment('team', 't.json', withState({ backend: 'pg', connectionFile: '/secret/state-db', schemaPrefix: 'tf' }));
  const doc = JSON.parse(Testing.synth(new SecretsStack(Testing.app(), 'team-secrets', { env })));
  assert.deepEqual(doc.terraform.backend, { pg: { schema_name: 'tf_team_secrets' } });
  assert.ok(!JSON.stringify(doc).includes('/secret/state-db'), 'not even the connection file\'s path');
  const local = JSON.parse(Testing.synth(new SecretsStack(Testing.app(), 'team-secrets', { env: resolveEnvironment('team', 't.json', shipped()) })));
  assert.match(local.terraform.backend.local.path, /\.local\/team\/state\/team-secrets\.tfstate$/);
});

test('the connection string reaches Terraform only from a private file holding a postgres:// URL', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-state-unit-'));
  try {
    const file = path.join(dir, 'state-db');
    const env = resolveEnvironment('t', 't.json', withState({ backend: 'pg', connectionFile: file }));
    assert.throws(() => stateBackendEnv(env, 'deploy'), /cannot be read \(ENOENT\).*create it \(mode 0600\)/);
    fs.writeFileSync(file, 'postgres://u:pw@db:5432/state\n', { mode: 0o644 });
    fs.chmodSync(file, 0o644);
    assert.throws(() => stateBackendEnv(env, 'deploy'), (e: any) => /mode is 644; expected 0600.*chmod 600/.test(e.message) && !e.message.includes('pw@'));
    fs.chmodSync(file, 0o600);
    const vars = stateBackendEnv(env, 'deploy');
    assert.equal(vars.PG_CONN_STR, 'postgres://u:pw@db:5432/state');
    assert.match(vars.PGAPPNAME, new RegExp(`^pgvault deploy t pid ${process.pid} `));
    fs.writeFileSync(file, 'host=db password=pw');
    assert.throws(() => stateBackendEnv(env, 'deploy'), (e: any) => /does not hold a postgres:\/\/ URL/.test(e.message) && !e.message.includes('pw'));
    assert.deepEqual(stateBackendEnv(resolveEnvironment('t', 't.json', shipped()), 'deploy'), {}, 'local state: nothing');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("Terraform's pg lock errors are recognised, and the message says who holds it and what to do", () => {
  for (const line of ['Error: Error acquiring the state lock', 'Error message: Workspace is already locked: default', 'Already locked for workspace creation: default']) {
    assert.match(line, LOCK_CONFLICT);
  }
  const env = resolveEnvironment('team', 't.json', withState({ backend: 'pg', connectionFile: '/s/db' }));
  const m = stateLocked(env, 'destroy').message;
  assert.match(m, /^another deploy of team holds the state lock/);
  assert.match(m, /pgvault_state_team_secrets/);
  assert.match(m, /npm run destroy -- team/);
  assert.match(m, /pg_terminate_backend/);
  assert.match(m, /force-unlock/);
});
