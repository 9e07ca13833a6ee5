import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { App, TerraformStack, Testing } from 'cdktf';
import { ScriptHook } from '../../stacks/constructs/script-hook';
import { InfraStack } from '../../stacks/infra-stack';
import { SecretsStack } from '../../stacks/secrets-stack';
import { loadEnvironment, REPO_ROOT } from '../../stacks/config';

type Json = Record<string, any>;

/** Synthesizes an environment's stacks in a scratch directory and returns their cdk.tf.json documents. */
function synthEnv(name: string): { infra?: Json; secrets: Json } {
  const env = loadEnvironment(name);
  const app: App = Testing.app();
  const infra = env.infrastructure === 'docker' ? new InfraStack(app, `${name}-infra`, env) : undefined;
  const secrets = new SecretsStack(app, `${name}-secrets`, { env, infra });
  return {
    infra: infra ? JSON.parse(Testing.synth(infra)) : undefined,
    secrets: JSON.parse(Testing.synth(secrets)),
  };
}

const one = (doc: Json, type: string): Json => {
  const all = Object.values(doc.resource?.[type] ?? {});
  assert.equal(all.length, 1, `expected one ${type}, found ${all.length}`);
  return all[0] as Json;
};

test('local infra: Postgres and Vault containers on a private network, ports on 127.0.0.1 only', () => {
  const { infra } = synthEnv('local');
  assert.ok(infra);
  const network = one(infra, 'docker_network');
  assert.equal(network.name, 'pgvault-local');
  const containers = Object.values(infra.resource.docker_container) as Json[];
  assert.deepEqual(containers.map((c) => c.name).sort(), ['pgvault-local-postgres', 'pgvault-local-vault']);
  for (const c of containers) {
    assert.ok(c.ports.every((p: Json) => p.ip === '127.0.0.1'), `${c.name} publishes beyond loopback`);
    assert.ok(c.healthcheck.test.length > 1, `${c.name} has no health check`);
    assert.equal(c.wait, true);
    assert.match(c.networks_advanced[0].name, /docker_network/);
  }
  for (const img of Object.values(infra.resource.docker_image) as Json[]) assert.equal(img.keep_locally, true);
  const pg = containers.find((c) => c.name.endsWith('postgres'))!;
  assert.ok(pg.env.includes('POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password'));
  assert.ok(!pg.env.some((e: string) => e.startsWith('POSTGRES_PASSWORD=')), 'the password itself must not be in the config');
  assert.ok(pg.volumes.some((v: Json) => v.container_path === '/var/lib/postgresql/data' && v.volume_name));
  assert.ok(pg.volumes.some((v: Json) => v.container_path === '/run/secrets/postgres-password' && v.read_only === true));
  const vault = containers.find((c) => c.name.endsWith('vault'))!;
  assert.ok(vault.env.includes('VAULT_DEV_ROOT_TOKEN_ID=${var.vault_dev_root_token}'));
  assert.equal(infra.variable.vault_dev_root_token.sensitive, true);
  assert.equal(infra.terraform.required_providers.docker.source, 'kreuzwerker/docker');
});

test('secrets engine: a database mount, a verified postgresql connection with a write-only password', () => {
  const { secrets } = synthEnv('local');
  const mount = one(secrets, 'vault_mount');
  assert.equal(mount.type, 'database');
  assert.equal(mount.path, 'database');
  const conn = one(secrets, 'vault_database_secret_backend_connection');
  assert.equal(conn.plugin_name, 'postgresql-database-plugin');
  assert.equal(conn.verify_connection, true);
  assert.deepEqual(conn.allowed_roles, ['readonly', 'readwrite']);
  assert.equal(conn.postgresql.username, 'pgvault_local_vault');
  assert.equal(conn.postgresql.password_wo, '${var.vault_db_setup_password}');
  assert.equal(conn.postgresql.password_wo_version, 1);
  assert.equal(conn.postgresql.password, undefined);
  assert.match(conn.postgresql.connection_url, /^postgresql:\/\/\{\{username\}\}:\{\{password\}\}@pgvault-local-postgres:5432\/app/);
  assert.equal(secrets.variable.vault_db_setup_password.sensitive, true);
  const rotate = one(secrets, 'vault_generic_endpoint');
  assert.match(rotate.path, /\/rotate-root\//);
  assert.equal(rotate.disable_delete, true);
  assert.deepEqual(conn.depends_on, [hookAddress(secrets, 'bootstrap')]);
  assert.equal(secrets.provider.vault[0].skip_tls_verify, false, 'VAULT_SKIP_VERIFY in the shell cannot turn TLS checks off');
});

/** The terraform_data hooks by action, and their addresses. */
const hooks = (doc: Json) => Object.entries(doc.resource.terraform_data as Record<string, Json>);
const hookAddress = (doc: Json, id: string) => `terraform_data.${hooks(doc).find(([k]) => k.startsWith(`${id}_`))![0]}`;
const hook = (doc: Json, id: string) => hooks(doc).find(([k]) => k.startsWith(`${id}_`))![1];
/** The argument vector Terraform runs for a provisioner: its interpreter, then its command. */
const argv = (p: Json): string[] => [...(p['local-exec'].interpreter ?? ['/bin/sh', '-c']), p['local-exec'].command];

test('re-running the bootstrap never runs the teardown: they are separate hooks, and only the bootstrap is replaced', () => {
  const { secrets } = synthEnv('local');
  const bootstrap = hook(secrets, 'bootstrap');
  assert.ok(bootstrap.triggers_replace.setup_password_version !== undefined);
  assert.match(bootstrap.triggers_replace.vault_mount, /\$\{vault_mount\.[^}]+\.accessor\}/, 'a new mount (a restarted dev server) re-runs the bootstrap');
  assert.deepEqual(bootstrap.provisioner.map((p: Json) => p['local-exec'].when ?? 'create'), ['create']);
  const teardown = hook(secrets, 'teardown');
  assert.equal(teardown.triggers_replace, undefined, 'nothing replaces the teardown');
  assert.deepEqual(teardown.provisioner.map((p: Json) => p['local-exec'].when), ['destroy']);
  assert.deepEqual(argv(teardown.provisioner[0]), ['node', '--', '../../../dist/ops/hooks.js', 'teardown', 'local']);
});

test('no value from state reaches a shell or node: every hook runs literals, without a shell, after --', { timeout: 30_000 }, () => {
  for (const name of ['local', 'existing-example', 'ha']) {
    const { secrets } = synthEnv(name);
    const all = hooks(secrets);
    assert.equal(all.length, 5, `${name}: five hooks`);
    for (const [id, r] of all) {
      for (const p of r.provisioner as Json[]) {
        const exec = p['local-exec'];
        assert.deepEqual(argv(p).slice(0, 3), ['node', '--', '../../../dist/ops/hooks.js'], `${name} ${id}: node runs the script after --, with no shell`);
        assert.equal(exec.command, name, `${name} ${id}: the environment is a literal`);
        assert.ok(!/\$\{|%\{/.test(JSON.stringify(argv(p))), `${name} ${id}: no interpolation in ${JSON.stringify(argv(p))}`);
        // The state's input reaches the script as data only, which it compares with its arguments.
        assert.equal(exec.environment.PGVAULT_HOOK_INPUT, '${jsonencode(self.input)}');
        for (const [k, v] of Object.entries(exec.environment as Record<string, string>)) assert.match(k, /^PGVAULT_HOOK_[A-Z_]+$/, `${k}=${v}`);
      }
      const destroys = (r.provisioner as Json[]).some((p) => p['local-exec'].when === 'destroy');
      assert.deepEqual(r.lifecycle?.ignore_changes, destroys ? ['triggers_replace'] : undefined, `${name} ${id}: a hook with a destroy action ignores triggers_replace in state`);
      if (destroys) assert.equal(r.triggers_replace, undefined);
    }
  }
});

test('fails when a hook argument could be read as an option or as shell syntax', { timeout: 10_000 }, () => {
  for (const [prop, value] of [['script', '-e'], ['script', '--require=/tmp/x.js'], ['environment', 'x"; touch /tmp/p; echo "'], ['environment', '${self.input.x}'], ['onDestroy', 'tear down']] as const) {
    const stack = new TerraformStack(Testing.app(), 's');
    assert.throws(
      () => new ScriptHook(stack, 'h', { script: '../hooks.js', environment: 'local', onDestroy: 'teardown', [prop]: value }),
      (e: any) => e.message.includes(`${prop} is ${JSON.stringify(value)}`) && /not starting with "-"/.test(e.message),
      `${prop}=${value}`,
    );
  }
});

test('destroy order: the roles go first, then every lease is revoked, then the connection, the mount and the teardown', () => {
  const { secrets } = synthEnv('local');
  // Terraform destroys in the reverse order of these dependencies.
  const mount = one(secrets, 'vault_mount');
  assert.deepEqual(mount.depends_on, [hookAddress(secrets, 'teardown')]);
  const revoke = hook(secrets, 'revoke-leases');
  // After the AppRole mount too: disabling it would revoke the app's tokens, and their leases, first.
  assert.deepEqual(revoke.depends_on, [`vault_generic_endpoint.${Object.keys(secrets.resource.vault_generic_endpoint)[0]}`, `vault_auth_backend.${Object.keys(secrets.resource.vault_auth_backend)[0]}`]);
  assert.deepEqual(revoke.provisioner.map((p: Json) => p['local-exec'].when), ['destroy']);
  for (const role of Object.values(secrets.resource.vault_database_secret_backend_role) as Json[]) {
    assert.ok(role.depends_on.includes(hookAddress(secrets, 'revoke-leases')), `${role.name} is destroyed before the leases are revoked`);
  }
  const rotate = one(secrets, 'vault_generic_endpoint');
  assert.ok(rotate.lifecycle.replace_triggered_by.includes(hookAddress(secrets, 'bootstrap').replace(/^/, '')), 'a new bootstrap rotates root again');
});

test('the hooks record no path of this machine in state: a second clone plans no change', () => {
  const { secrets } = synthEnv('local');
  const inputs = JSON.stringify(Object.values(secrets.resource.terraform_data).map((r: any) => [r.input, r.triggers_replace]));
  assert.ok(!inputs.includes(REPO_ROOT), inputs);
  assert.equal(hook(secrets, 'teardown').input.script, '../../../dist/ops/hooks.js');
});

test('the deploy writes the outputs file, and the destroy removes it', () => {
  const { secrets } = synthEnv('local');
  const writer = hook(secrets, 'outputs-writer');
  assert.ok(writer.triggers_replace.approle_role_id, 'a new role_id rewrites the file');
  assert.deepEqual(argv(writer.provisioner[0]).slice(3), ['write-outputs', 'local']);
  assert.deepEqual(argv(hook(secrets, 'outputs-file').provisioner[0]).slice(3), ['remove-outputs', 'local']);
});

test('roles: each grants a group role, with its TTLs, and revocation statements', () => {
  const { secrets } = synthEnv('local');
  const roles = Object.values(secrets.resource.vault_database_secret_backend_role) as Json[];
  assert.deepEqual(roles.map((r) => r.name).sort(), ['readonly', 'readwrite']);
  const ro = roles.find((r) => r.name === 'readonly')!;
  assert.equal(ro.default_ttl, 3600);
  assert.equal(ro.max_ttl, 86400);
  assert.match(ro.creation_statements[1], /'GRANT %I TO %I WITH INHERIT TRUE, SET FALSE', 'pgvault_local_read'/);
  assert.match(roles.find((r) => r.name === 'readwrite')!.creation_statements[1], /'GRANT %I TO %I WITH INHERIT TRUE, SET FALSE', 'pgvault_local_write'/);
  assert.match(ro.creation_statements[0], / CONNECTION LIMIT 20 /);
  assert.match(ro.creation_statements[4], /COMMENT ON ROLE "\{\{name\}\}" IS 'pgvault:local user statement-ms=300000 idle-ms=60000';/);
  assert.doesNotMatch(ro.revocation_statements[0], /REASSIGN OWNED/, 'a read user\'s objects are dropped');
  assert.match(roles.find((r) => r.name === 'readwrite')!.revocation_statements[0], /REASSIGN OWNED BY %I TO pgvault_local_retired/);
  assert.equal(ro.revocation_statements.length, 1);
  assert.match(ro.db_name, /vault_database_secret_backend_connection/);
});

test('app access: an AppRole with no default policy and a least-privilege policy', () => {
  const { secrets } = synthEnv('local');
  const role = one(secrets, 'vault_approle_auth_backend_role');
  assert.equal(role.token_no_default_policy, true);
  assert.equal(role.bind_secret_id, true);
  const policy = one(secrets, 'vault_policy');
  assert.match(policy.policy, /path "\$\{vault_mount\.[^}]+\}\/creds\/\$\{vault_database_secret_backend_role\.role-readonly[^}]+\}"/);
  assert.doesNotMatch(policy.policy, /config|sudo/);
  // The body form of renew/revoke admits only lease_ids under the roles' creds paths, resolved by Terraform.
  const leaseIds = policy.policy.match(/"lease_id" = \[([^\]]*)\]/g);
  assert.equal(leaseIds?.length, 2, 'sys/leases/renew and sys/leases/revoke each restrict lease_id');
  for (const l of leaseIds!) {
    assert.match(l, /"\$\{vault_mount\.[^}]+\}\/creds\/\$\{vault_database_secret_backend_role\.role-readonly[^}]+\}\/\*"/);
    assert.match(l, /role-readwrite/);
  }
  for (const o of ['vault_address', 'postgres_host', 'postgres_port', 'postgres_database', 'mount_path', 'roles', 'approle_mount', 'approle_role_name', 'approle_role_id']) {
    assert.ok(secrets.output[o], `output ${o} is missing`);
  }
});

test('existing infrastructure: no containers, Vault reached by address with a CA', () => {
  const { infra, secrets } = synthEnv('existing-example');
  assert.equal(infra, undefined);
  assert.equal(secrets.resource.docker_container, undefined);
  assert.equal(secrets.provider.vault[0].address, 'https://vault.internal.example:8200');
  assert.match(secrets.provider.vault[0].ca_cert_file, /vault-ca\.pem$/);
  assert.match(one(secrets, 'vault_database_secret_backend_connection').postgresql.connection_url, /@db\.internal\.example:5432\/app\?sslmode=verify-full$/);
});

test('no secret literal reaches cdk.tf.json, even when secrets are in the environment and in .local', () => {
  const marker = 'SECRET-MARKER-7f3a9c';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-local-'));
  const saved = { ...process.env };
  try {
    process.env.PGVAULT_LOCAL_DIR = dir;
    fs.mkdirSync(path.join(dir, 'local'));
    for (const f of ['vault-token', 'postgres-password', 'vault-setup-password']) fs.writeFileSync(path.join(dir, 'local', f), marker);
    Object.assign(process.env, { VAULT_TOKEN: marker, TF_VAR_vault_db_setup_password: marker, TF_VAR_vault_dev_root_token: marker });
    const { infra, secrets } = synthEnv('local');
    const text = JSON.stringify(infra) + JSON.stringify(secrets);
    assert.ok(!text.includes(marker), 'a secret value was synthesized');
    assert.ok(text.includes(path.join(dir, 'local', 'vault-token')), 'the token is referenced by file path');
  } finally {
    process.env = saved;
  }
});
