import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Testing } from 'cdktf';
import { resolveEnvironment, REPO_ROOT } from '../../stacks/config';
import { ConfigError } from '../../stacks/errors';
import { SecretsStack } from '../../stacks/secrets-stack';
import { LOCK_CONFLICT, stateBackendEnv, stateLocked, stateResources } from '../../ops/terraform/state-backend';
import { StateTrustError, checkHookInput, checkHookState, dockerObjectsRemain, environmentNames } from '../../ops/terraform/state-trust';

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

/** Runs `fn` with PGVAULT_LOCAL_DIR pointing at a scratch directory (local state lives under it). */
async function withLocalDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-state-unit-'));
  const saved = process.env.PGVAULT_LOCAL_DIR;
  process.env.PGVAULT_LOCAL_DIR = dir;
  try {
    await fn(dir);
  } finally {
    if (saved === undefined) delete process.env.PGVAULT_LOCAL_DIR;
    else process.env.PGVAULT_LOCAL_DIR = saved;
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const refused = (code: string, ...fragments: (string | RegExp)[]) => (e: unknown) => {
  assert.ok(e instanceof StateTrustError, `expected a StateTrustError, got ${e}`);
  assert.equal(e.code, code);
  for (const f of fragments) assert.ok(typeof f === 'string' ? e.message.includes(f) : f.test(e.message), `message lacks ${f}: ${e.message}`);
  return true;
};

test('stateResources: no file is "nothing deployed"; a truncated, empty or foreign file is an error naming the file and the way back', { timeout: 10_000 }, async () => {
  await withLocalDir(async (dir) => {
    const env = resolveEnvironment('t', 't.json', shipped());
    const file = path.join(dir, 't', 'state', 't-secrets.tfstate');
    assert.deepEqual(await stateResources(env, 't-secrets'), [], 'no state file: nothing deployed');
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const state = { version: 4, serial: 3, resources: [{ mode: 'managed', type: 'vault_mount', name: 'db', instances: [{}] }, { mode: 'data', type: 'x', name: 'y' }] };
    fs.writeFileSync(file, JSON.stringify(state, null, 2));
    assert.deepEqual(await stateResources(env, 't-secrets'), ['vault_mount.db']);

    fs.writeFileSync(file, JSON.stringify(state, null, 2).slice(0, 40));
    await assert.rejects(stateResources(env, 't-secrets'), refused('STATE_UNREADABLE', file, 'not valid JSON', 'Nothing was run or deleted', 'restore the state from your backup', "'npm run destroy -- t'"));
    fs.writeFileSync(`${file}.backup`, JSON.stringify(state));
    await assert.rejects(stateResources(env, 't-secrets'), refused('STATE_UNREADABLE', `Terraform's previous copy is ${file}.backup`));
    fs.writeFileSync(file, '');
    await assert.rejects(stateResources(env, 't-secrets'), refused('STATE_UNREADABLE', 'the file is empty'));
    fs.writeFileSync(file, '{"resources": {}}');
    await assert.rejects(stateResources(env, 't-secrets'), refused('STATE_UNREADABLE', 'not a Terraform state'));
    fs.rmSync(file);
    fs.mkdirSync(file);
    await assert.rejects(stateResources(env, 't-secrets'), refused('STATE_UNREADABLE', 'EISDIR'));
  });
});

/** A synthesized hook (as cdk.tf.json has it) and its instance in a state. */
const HOOK = 'teardown_run_0123';
const config = () => ({
  resource: {
    terraform_data: {
      [HOOK]: { input: { environment: 'trust', script: '../../../dist/ops/hooks.js', values: {} }, provisioner: [{ 'local-exec': { when: 'destroy', command: 'trust' } }] },
      writer_run_4567: { input: { environment: 'trust', script: '../../../dist/ops/hooks.js', values: {} }, triggers_replace: { a: 1 }, provisioner: [{ 'local-exec': { command: 'trust' } }] },
    },
  },
});
const stateOf = (input: unknown, triggers: unknown = null, name = HOOK) => ({
  resources: [{ mode: 'managed', type: 'terraform_data', name, instances: [{ attributes: { input: { value: input }, triggers_replace: triggers } }] }],
});

test('a hook input in state that differs from the configuration is refused before Terraform runs', { timeout: 10_000 }, () => {
  const good = { environment: 'trust', script: '../../../dist/ops/hooks.js', values: {} };
  checkHookState('trust', 'destroy', 'trust-secrets', config(), stateOf(good), 'f.tfstate');
  checkHookState('trust', 'deploy', 'trust-secrets', config(), stateOf(good, { value: { a: 2 } }, 'writer_run_4567'), 'f.tfstate');
  checkHookState('trust', 'deploy', 'trust-secrets', config(), stateOf({ environment: 'gone' }, null, 'not_in_config'), 'f.tfstate');
  const payload = 'x"; touch /tmp/pwned; echo "';
  assert.throws(
    () => checkHookState('trust', 'destroy', 'trust-secrets', config(), stateOf({ ...good, environment: payload }), 'f.tfstate'),
    refused('STATE_HOOK_TAMPERED', 'the state of trust-secrets (f.tfstate) was changed outside Terraform', `terraform_data.${HOOK}`, `input.environment ${JSON.stringify(payload)}`, 'configuration says "trust"', 'nothing ran', `state rm terraform_data.${HOOK}`, "'npm run destroy -- trust'"),
  );
  assert.throws(() => checkHookState('trust', 'deploy', 'trust-secrets', config(), stateOf({ ...good, script: '-e' }), 'f'), refused('STATE_HOOK_TAMPERED', 'input.script "-e"'));
  assert.throws(() => checkHookState('trust', 'deploy', 'trust-secrets', config(), stateOf({ ...good, script: '/tmp/x.js' }), 'f'), refused('STATE_HOOK_TAMPERED', 'input.script "/tmp/x.js"'));
  // A script moved in the repository (scripts/hooks.js became ops/hooks.js): the deploy writes
  // the new path in place, running nothing, and the destroy of an older deployment goes on.
  checkHookState('trust', 'deploy', 'trust-secrets', config(), stateOf({ ...good, script: '../../../dist/scripts/hooks.js' }), 'f');
  checkHookState('trust', 'destroy', 'trust-secrets', config(), stateOf({ ...good, script: '../../../dist/scripts/hooks.js' }), 'f');
  assert.throws(() => checkHookState('trust', 'deploy', 'trust-secrets', config(), stateOf(null), 'f'), refused('STATE_HOOK_TAMPERED', 'input.environment undefined'));
  assert.throws(
    () => checkHookState('trust', 'deploy', 'trust-secrets', config(), stateOf(good, { value: 'replace me', type: 'string' }), 'f'),
    refused('STATE_HOOK_TAMPERED', 'triggers_replace "replace me"', 'configuration says null', 'deploy of trust refused'),
  );
});

test('the hook script refuses an input (from state) that is not its own', { timeout: 10_000 }, () => {
  const script = '../../../dist/ops/hooks.js';
  const input = (o: unknown) => JSON.stringify(o);
  checkHookInput('teardown', 'trust', input({ environment: 'trust', script }));
  // The path an environment deployed before the move holds in its state.
  checkHookInput('teardown', 'trust', input({ environment: 'trust', script: '../../../dist/scripts/hooks.js' }));
  assert.throws(() => checkHookInput('teardown', 'trust', undefined), refused('HOOK_INPUT_REFUSED', 'PGVAULT_HOOK_INPUT is not set', 'Nothing ran'));
  assert.throws(() => checkHookInput('teardown', 'trust', '{'), refused('HOOK_INPUT_REFUSED', 'not JSON'));
  assert.throws(
    () => checkHookInput('teardown', 'trust', input({ environment: 'x"; touch /tmp/pwned; echo "', script })),
    refused('HOOK_INPUT_REFUSED', 'hook teardown for "trust" refused', 'names the environment "x\\"; touch /tmp/pwned; echo \\""', 'Nothing ran'),
  );
  assert.throws(() => checkHookInput('teardown', 'trust', input({ environment: 'trust', script: '-e' })), refused('HOOK_INPUT_REFUSED', 'names the script "-e", which is not a relative path'));
});

test("Docker objects of an environment: its own names only, not those of an environment whose name extends it", { timeout: 10_000 }, () => {
  const names = ['pgvault-trust', 'pgvault-trust-postgres', 'pgvault-trust-postgres-data', 'pgvault-trusty-postgres', 'pgvault-trust-b-postgres', 'pgvault-trust-b', 'x-pgvault-trust-y'];
  assert.deepEqual(environmentNames('trust', names, ['trust', 'trust-b']), ['pgvault-trust', 'pgvault-trust-postgres', 'pgvault-trust-postgres-data']);
  assert.deepEqual(environmentNames('trust', names, ['trust']), ['pgvault-trust', 'pgvault-trust-b', 'pgvault-trust-b-postgres', 'pgvault-trust-postgres', 'pgvault-trust-postgres-data'], 'unknown longer names count: fail closed');
  const m = dockerObjectsRemain('ha', '/r/.local/ha', { containers: ['pgvault-ha-vault-0'], volumes: ['pgvault-ha-vault-0-data'], networks: [] }, 'the state of ha lists nothing deployed').message;
  assert.match(m, /^the state of ha lists nothing deployed, but Docker still has containers pgvault-ha-vault-0; volumes pgvault-ha-vault-0-data of ha\. \/r\/\.local\/ha was kept/);
  assert.match(m, /seal key and recovery keys/);
  assert.match(m, /docker rm -f pgvault-ha-vault-0; docker volume rm pgvault-ha-vault-0-data\)/);
});

test('fails when the terraform run for the pg state backend hangs (a state database that never answers): it is stopped at PGVAULT_TERRAFORM_TIMEOUT_S, and the error names what hung', { timeout: 15_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-state-unit-'));
  const saved = { bin: process.env.TERRAFORM_BINARY_NAME, timeout: process.env.PGVAULT_TERRAFORM_TIMEOUT_S };
  try {
    const file = path.join(dir, 'state-db');
    fs.writeFileSync(file, 'postgres://u:pw@db:5432/state\n', { mode: 0o600 });
    // A fake terraform that hangs as one waiting on a frozen state database does.
    const fakeTerraform = path.join(dir, 'fake-terraform');
    fs.writeFileSync(fakeTerraform, '#!/bin/sh\nexec sleep 30\n', { mode: 0o755 });
    process.env.TERRAFORM_BINARY_NAME = fakeTerraform;
    process.env.PGVAULT_TERRAFORM_TIMEOUT_S = '1';
    const env = resolveEnvironment('t', 't.json', withState({ backend: 'pg', connectionFile: file }));
    const t0 = Date.now();
    await assert.rejects(stateResources(env, 't-secrets'), (e: any) => {
      assert.match(e.message, /^terraform init of t-secrets's state backend \(pg, schema pgvault_state_t_secrets\) did not finish within 1 s and was killed \(PGVAULT_TERRAFORM_TIMEOUT_S sets the bound\)$/);
      assert.ok(!e.message.includes('pw@'), 'no connection string in the error');
      return true;
    });
    assert.ok(Date.now() - t0 < 5000, `failed after ${Date.now() - t0} ms (bound 1 s)`);
  } finally {
    for (const [key, value] of [['TERRAFORM_BINARY_NAME', saved.bin], ['PGVAULT_TERRAFORM_TIMEOUT_S', saved.timeout]] as const) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
