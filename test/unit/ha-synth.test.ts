/** Synth of the `ha` environment: a 3-node cluster whose keys stay out of cdk.tf.json. */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { App, Testing } from 'cdktf';
import { InfraStack } from '../../stacks/infra-stack';
import { SecretsStack } from '../../stacks/secrets-stack';
import { loadEnvironment } from '../../stacks/config';
import { adminPolicy } from '../../ops/vault/vault-cluster';

type Json = Record<string, any>;

function synthHa(): { infra: Json; secrets: Json } {
  const env = loadEnvironment('ha');
  const app: App = Testing.app();
  const infra = new InfraStack(app, 'ha-infra', env);
  const secrets = new SecretsStack(app, 'ha-secrets', { env, infra });
  return { infra: JSON.parse(Testing.synth(infra)), secrets: JSON.parse(Testing.synth(secrets)) };
}

test('ha infra: three OpenBao nodes with their own volumes, config read-only, ports on 127.0.0.1, no root token', () => {
  const { infra } = synthHa();
  const nodes = (Object.values(infra.resource.docker_container) as Json[]).filter((c) => /-vault-\d$/.test(c.name));
  assert.deepEqual(nodes.map((c) => c.name).sort(), ['pgvault-ha-vault-0', 'pgvault-ha-vault-1', 'pgvault-ha-vault-2']);
  assert.deepEqual(nodes.map((c) => c.ports[0].external).sort(), [18230, 18231, 18232]);
  for (const c of nodes) {
    assert.equal(c.ports[0].ip, '127.0.0.1');
    assert.ok(c.mounts.some((m: Json) => m.type === 'bind' && m.target === '/pgvault/config' && m.read_only === true));
    assert.ok(c.mounts.some((m: Json) => m.type === 'volume' && m.target === loadEnvironment('ha').docker!.vaultDataDir));
    assert.ok(!c.command.join(' ').includes('-dev'), 'not dev mode');
    assert.match(c.labels[0].value, /^[0-9a-f]{64}$/, 'a digest of the node configuration: a change replaces the node');
  }
  assert.equal(Object.keys(infra.resource.docker_volume).length, 5, 'one volume per node, one for the primary, one for the replica');
  assert.equal(infra.variable?.vault_dev_root_token, undefined);
  const text = JSON.stringify(infra);
  assert.ok(!/PRIVATE KEY|seal\.key"|VAULT_DEV_ROOT_TOKEN_ID/.test(text.replace(/\/pgvault\/config\/seal\.key/g, '')));
});

test('ha secrets: the provider verifies node 0 with the environment CA; the outputs list every address', () => {
  const { secrets } = synthHa();
  const provider = secrets.provider.vault[0];
  assert.equal(provider.address, 'https://127.0.0.1:18230');
  assert.match(provider.ca_cert_file, /\.local\/ha\/tls\/ca\.pem$/);
  assert.equal(provider.skip_tls_verify, false);
  assert.deepEqual(secrets.output.vault_addresses.value, ['https://127.0.0.1:18230', 'https://127.0.0.1:18231', 'https://127.0.0.1:18232']);
});

test('the admin policy grants sudo on lease revocation and no way to rewrite itself', () => {
  const policy = adminPolicy(loadEnvironment('ha'));
  for (const p of ['sys/leases/revoke-prefix/*', 'sys/leases/revoke-force/*', 'sys/leases/lookup/*']) {
    assert.match(policy, new RegExp(`path "${p.replace(/[*/]/g, (c) => `\\${c}`)}" \\{ capabilities = \\[[^\\]]*"sudo"`));
  }
  assert.ok(!policy.includes('sys/policies/acl/*'), 'a wildcard on policies would let the token widen its own');
  assert.ok(policy.includes('path "sys/policies/acl/pgvault-app"'));
  assert.ok(!/path "\*"|"sys\/\*"|"auth\/token\/create/.test(policy));
});

test('ha infra: a TLS-only primary with a replication role and slot, and a streaming replica on 15471 with no password in the synth', () => {
  const { infra } = synthHa();
  const containers = Object.values(infra.resource.docker_container) as Json[];
  const primary = containers.find((c) => c.name === 'pgvault-ha-postgres')!;
  const replica = containers.find((c) => c.name === 'pgvault-ha-postgres-replica')!;
  assert.ok(primary.command.includes('ssl=on') && primary.command.includes('log_connections=on'));
  assert.ok(primary.volumes.some((v: Json) => v.container_path === '/pgvault/postgres' && v.read_only === true && /\.local\/ha\/postgres\/primary$/.test(v.host_path)));
  const upload = (c: Json, file: string) => Buffer.from(c.upload.find((u: Json) => u.file === file).content_base64, 'base64').toString();
  const init = upload(primary, '/docker-entrypoint-initdb.d/20-pgvault-tls.sh');
  const start = upload(primary, '/usr/local/bin/pgvault-postgres.sh');
  assert.deepEqual(primary.entrypoint, ['bash', '/usr/local/bin/pgvault-postgres.sh']);
  assert.match(start, /\/usr\/local\/bin\/docker-entrypoint\.sh "\$@" &/, 'the image\'s own entrypoint, unchanged');
  assert.match(start, /pg_terminate_backend/, 'the primary\'s reaper');
  assert.match(start, /-c reserved_connections=4/);
  assert.match(init, /hostssl/);
  assert.match(init, /CREATE ROLE :"role" WITH LOGIN REPLICATION PASSWORD :'verifier'/);
  assert.match(init, /pg_create_physical_replication_slot/);
  assert.match(init, /replication\.scram/, 'only the SCRAM verifier reaches the primary');
  assert.equal(replica.ports[0].external, 15471);
  assert.equal(replica.ports[0].ip, '127.0.0.1');
  assert.ok(replica.volumes.some((v: Json) => v.container_path === '/var/lib/postgresql/data'), 'its own data volume');
  const script = Buffer.from(replica.upload[0].content_base64, 'base64').toString();
  assert.match(script, /pg_basebackup .*--slot='pgvault_ha_replica'/);
  assert.match(script, /sslmode=verify-full sslrootcert=\/pgvault\/postgres\/ca\.pem/);
  assert.match(script, /passfile=\/pgvault\/postgres\/pgpass/);
  assert.match(script, /pg_terminate_backend/, 'the reaper');
  assert.match(script, /s\.description = 'pgvault:ha disarmed'/, 'disarmed roles too');
  assert.match(script, /idle in transaction/, 'and idle transactions, which hold back vacuum on the primary through hot_standby_feedback');
  assert.ok(!/password=/i.test(script), 'no password in the script');
  assert.ok(replica.depends_on.some((d: string) => d.includes('postgres_container')));
});

test('ha secrets: Vault connects to the primary with verify-full and the CA where Vault runs; role_endpoints put readonly on the replica', () => {
  const { secrets } = synthHa();
  const conn = Object.values(secrets.resource.vault_database_secret_backend_connection)[0] as Json;
  assert.match(conn.postgresql.connection_url, /@pgvault-ha-postgres:5432\/app\?sslmode=verify-full&sslrootcert=\/pgvault\/config\/postgres-ca\.pem$/);
  assert.deepEqual(secrets.output.role_endpoints.value, {
    readonly: { host: '127.0.0.1', port: 15471, target: 'replica' },
    readwrite: { host: '127.0.0.1', port: 15470, target: 'primary' },
    reporter: { host: '127.0.0.1', port: 15471, target: 'replica' },
  });
});
