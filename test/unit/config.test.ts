import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { listEnvironments, loadEnvironment, resolveEnvironment, REPO_ROOT } from '../../stacks/config';
import { ConfigError } from '../../stacks/errors';

const shipped = (name: string) => JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'environments', `${name}.json`), 'utf8'));

function rejects(doc: unknown, code: string, ...fragments: string[]): void {
  assert.throws(
    () => resolveEnvironment('t', '/envs/t.json', doc),
    (e: unknown) => {
      assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${e}`);
      assert.equal(e.code, code);
      assert.match(e.message, /\/envs\/t\.json/);
      for (const f of fragments) assert.ok(e.message.includes(f), `message lacks "${f}": ${e.message}`);
      return true;
    },
  );
}

test('the shipped environments validate', () => {
  assert.deepEqual(listEnvironments(), ['existing-example', 'ha', 'local']);
  const local = loadEnvironment('local');
  assert.equal(local.infrastructure, 'docker');
  assert.deepEqual(local.roles.map((r) => r.name), ['readonly', 'readwrite']);
  assert.equal(local.postgres.clientHost, '127.0.0.1');
  const existing = loadEnvironment('existing-example');
  assert.equal(existing.infrastructure, 'existing');
  assert.equal(existing.docker, undefined);
  assert.match(existing.vault.caCertFile ?? '', /vault-ca\.pem$/);
  const ha = loadEnvironment('ha');
  assert.equal(ha.docker?.vaultNodes, 3);
  assert.deepEqual(ha.vault.addresses, ['https://127.0.0.1:18230', 'https://127.0.0.1:18231', 'https://127.0.0.1:18232']);
  assert.equal(ha.vault.address, ha.vault.addresses[0]);
  assert.match(ha.vault.caCertFile ?? '', /\.local\/ha\/tls\/ca\.pem$/);
  assert.deepEqual(local.vault.addresses, ['http://127.0.0.1:18200']);
});

test('a cluster: the project\'s OpenBao image whatever VAULT_IMAGE says, its data directory, and no port shared with Postgres', () => {
  const doc = { infrastructure: 'docker', docker: { vaultNodes: 3, vaultHostPort: 18230, postgresHostPort: 18232 }, roles: { ro: { access: 'read', defaultTtlSeconds: 60, maxTtlSeconds: 120 } } };
  assert.throws(() => resolveEnvironment('x', 'x.json', doc), /18232/);
  const saved = process.env.VAULT_IMAGE;
  process.env.VAULT_IMAGE = 'hashicorp/vault:1.20';
  try {
    const cluster = resolveEnvironment('x', 'x.json', { ...doc, docker: { ...doc.docker, postgresHostPort: 15470 } });
    assert.equal(cluster.docker!.vaultImage, 'pgvault/vault:openbao-2.7.2-trixie-local');
    assert.equal(cluster.docker!.vaultDataDir, '/vault');
    const official = resolveEnvironment('x', 'x.json', { ...doc, docker: { ...doc.docker, postgresHostPort: 15470, vaultImage: 'openbao/openbao:2.7.2' } });
    assert.equal(official.docker!.vaultDataDir, '/openbao/file');
  } finally {
    if (saved !== undefined) process.env.VAULT_IMAGE = saved;
    else delete process.env.VAULT_IMAGE;
  }
});

test('defaults are resolved once, with units in their names', () => {
  const env = resolveEnvironment('x', 'x.json', { infrastructure: 'docker', roles: { ro: { access: 'read', defaultTtlSeconds: 60, maxTtlSeconds: 120 } } });
  assert.equal(env.secretsEngine.mountPath, 'database');
  assert.equal(env.secretsEngine.vaultUser, 'pgvault_x_vault');
  assert.deepEqual(env.database.groupRoles, { read: 'pgvault_x_read', write: 'pgvault_x_write' });
  assert.equal(env.database.mark, 'pgvault:x');
  assert.equal(env.appAccess.approleMount, 'approle');
  assert.equal(env.docker?.postgresHostPort, 15432);
  assert.equal(env.roles[0].defaultTtlSeconds, 60);
});

test('adding a file adds an environment, with no code change', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-envs-'));
  fs.writeFileSync(path.join(dir, 'staging.json'), JSON.stringify({ ...shipped('local'), docker: { postgresHostPort: 25432, vaultHostPort: 28200 } }));
  assert.deepEqual(listEnvironments(dir), ['staging']);
  assert.equal(loadEnvironment('staging', dir).docker?.vaultHostPort, 28200);
});

test('fails when the environment is unknown', () => {
  assert.throws(() => loadEnvironment('nope'), (e: any) => e.code === 'ENV_UNKNOWN' && /nope\.json/.test(e.message) && /local/.test(e.message));
});

test('fails when the default TTL is greater than the max TTL', () => {
  const doc = shipped('local');
  doc.roles.readonly.defaultTtlSeconds = 90000;
  rejects(doc, 'ENV_TTL', 'roles.readonly.defaultTtlSeconds', '90000', 'maxTtlSeconds');
});

test('fails when a role name is not a safe identifier', () => {
  const doc = shipped('local');
  doc.roles['ro"; DROP'] = { access: 'read', defaultTtlSeconds: 1, maxTtlSeconds: 2 };
  rejects(doc, 'ENV_SCHEMA', 'roles.ro"; DROP', 'safe Postgres and Vault identifier');
});

test('fails when a required setting is missing', () => {
  const doc = shipped('local');
  delete doc.roles.readonly.maxTtlSeconds;
  rejects(doc, 'ENV_SCHEMA', 'roles.readonly.maxTtlSeconds', 'missing', 'required');
  rejects({ roles: shipped('local').roles }, 'ENV_SCHEMA', '"infrastructure"');
});

test('fails when an existing environment lacks an address', () => {
  const doc = shipped('existing-example');
  delete doc.vault.address;
  rejects(doc, 'ENV_MISSING', 'vault.address', 'existing');
});

test('fails on an unknown setting or a wrong type', () => {
  const doc = shipped('local');
  doc.roles.readonly.ttl = 5;
  rejects(doc, 'ENV_SCHEMA', 'roles.readonly.ttl', 'unknown');
  const doc2 = shipped('local');
  doc2.docker.vaultHostPort = 'x';
  rejects(doc2, 'ENV_SCHEMA', 'docker.vaultHostPort', '"x"', 'integer');
  const doc3 = shipped('local');
  doc3.roles.readonly.access = 'admin';
  rejects(doc3, 'ENV_SCHEMA', 'roles.readonly.access', '"read", "write"');
});

test('fails when Vault would connect as the superuser', () => {
  const doc = shipped('existing-example');
  doc.secretsEngine = { vaultUser: 'postgres' };
  rejects(doc, 'ENV_SCHEMA', 'secretsEngine.vaultUser', '"postgres"', 'postgres.adminUser');
});

test('existing servers verify Postgres and keep the data at destroy unless told otherwise', () => {
  const doc = shipped('existing-example');
  delete doc.postgres.sslmode;
  const env = resolveEnvironment('e', 'e.json', doc);
  assert.equal(env.postgres.sslmode, 'verify-full');
  assert.equal(env.postgres.dropDataOnDestroy, false);
  assert.equal(resolveEnvironment('e', 'e.json', { ...doc, postgres: { ...doc.postgres, dropDataOnDestroy: true } }).postgres.dropDataOnDestroy, true);
  assert.equal(loadEnvironment('local').postgres.dropDataOnDestroy, true, 'docker environments are torn down whole');
});

test('two environments on one server get different role names', () => {
  const a = resolveEnvironment('team-a', 'a.json', shipped('existing-example'));
  const b = resolveEnvironment('team-b', 'b.json', shipped('existing-example'));
  const names = (e: typeof a) => [e.secretsEngine.vaultUser, e.database.ownerRole, e.database.retiredRole, e.database.groupRoles.read, e.database.groupRoles.write];
  assert.equal(names(a).filter((n) => names(b).includes(n)).length, 0);
  assert.equal(a.database.ownerRole, 'pgvault_team_a_owner');
});

test('fails when VAULT_SKIP_VERIFY would switch off the provider\'s TLS check', async () => {
  const { refuseTlsSkip } = await import('../../stacks/main');
  assert.throws(() => refuseTlsSkip({ VAULT_SKIP_VERIFY: '1' }), (e: any) => e.code === 'ENV_TLS_SKIP' && /unset VAULT_SKIP_VERIFY/.test(e.message));
  assert.throws(() => refuseTlsSkip({ BAO_SKIP_VERIFY: 'true' }), /BAO_SKIP_VERIFY/);
  for (const ok of [{}, { VAULT_SKIP_VERIFY: '' }, { VAULT_SKIP_VERIFY: '0' }, { VAULT_SKIP_VERIFY: 'false' }]) refuseTlsSkip(ok);
});

test('ha: TLS-only Postgres with a replica; readonly targets the replica; the CA is the environment\'s', () => {
  const ha = loadEnvironment('ha');
  assert.equal(ha.postgres.sslmode, 'verify-full');
  assert.match(ha.postgres.caCertFile ?? '', /\.local\/ha\/tls\/ca\.pem$/);
  assert.equal(ha.postgres.caCertFileOnVault, '/pgvault/config/postgres-ca.pem');
  assert.deepEqual(ha.postgres.replica, { host: 'pgvault-ha-postgres-replica', port: 5432, clientHost: '127.0.0.1', clientPort: 15471 });
  assert.deepEqual(ha.roles.map((r) => [r.name, r.target]), [['readonly', 'replica'], ['readwrite', 'primary'], ['reporter', 'replica']]);
  assert.equal(loadEnvironment('local').roles[0].target, 'primary', 'the default target');
});

test('fails when a role targets a replica that does not exist, or writes to one', () => {
  const ro = { access: 'read', defaultTtlSeconds: 60, maxTtlSeconds: 120 };
  rejects({ infrastructure: 'docker', roles: { ro: { ...ro, target: 'replica' } } }, 'ENV_SCHEMA', 'roles.ro.target', '"docker.postgresReplica"');
  rejects(
    { infrastructure: 'existing', postgres: { host: 'db', adminPasswordFile: 'p' }, vault: { address: 'https://v' }, roles: { ro: { ...ro, target: 'replica' } } },
    'ENV_SCHEMA', 'roles.ro.target', '"postgres.replica"',
  );
  const cluster = { vaultNodes: 3, vaultHostPort: 18230, postgresHostPort: 15470, postgresTls: true, postgresReplica: {} };
  rejects({ infrastructure: 'docker', docker: cluster, roles: { rw: { ...ro, access: 'write', target: 'replica' } } }, 'ENV_SCHEMA', 'roles.rw.target', 'read-only');
  const ok = resolveEnvironment('t', 't.json', { infrastructure: 'docker', docker: cluster, roles: { ro: { ...ro, target: 'replica' } } });
  assert.equal(ok.docker!.postgresReplica!.hostPort, 15471, 'the replica defaults to postgresHostPort + 1');
});

// --- Roles shaped by grants, and access: migrate (issue 23) ---

const ttl = { defaultTtlSeconds: 60, maxTtlSeconds: 120 };
const docker = (roles: unknown, extra: object = {}) => ({ infrastructure: 'docker', roles, ...extra });

test('the issue\'s example resolves: each shaped role gets a group role of its own; the shorthands keep theirs', () => {
  const env = resolveEnvironment('shop-env', 't.json', docker({
    orders_writer: { grants: { 'app.orders': ['SELECT', 'INSERT', 'UPDATE'], 'app.customers': { SELECT: ['id', 'name'] } }, ...ttl },
    migrator: { access: 'migrate', ...ttl },
    readonly: { access: 'read', ...ttl },
    'bulk-load': { grants: { 'sales.*': ['INSERT'] }, ...ttl },
  }));
  const byName = Object.fromEntries(env.roles.map((r) => [r.name, r]));
  assert.deepEqual(
    env.roles.map((r) => [r.name, r.access, r.groupRole]),
    [
      ['bulk-load', 'grants', 'pgvault_shop_env_g_bulk_load'],
      ['migrator', 'migrate', 'pgvault_shop_env_g_migrator'],
      ['orders_writer', 'grants', 'pgvault_shop_env_g_orders_writer'],
      ['readonly', 'read', 'pgvault_shop_env_read'],
    ],
  );
  assert.deepEqual(byName.orders_writer.grants, [
    { schema: 'app', table: 'orders', privilege: 'SELECT' },
    { schema: 'app', table: 'orders', privilege: 'INSERT' },
    { schema: 'app', table: 'orders', privilege: 'UPDATE' },
    { schema: 'app', table: 'customers', privilege: 'SELECT', columns: ['id', 'name'] },
  ]);
  assert.deepEqual(byName.readonly.grants, [{ schema: 'app', table: '*', privilege: 'SELECT' }], 'access: read is shorthand for app.* SELECT');
  assert.deepEqual(byName.migrator.grants, []);
});

test('fails when a role has both access and grants, or neither', () => {
  rejects(docker({ r: { access: 'read', grants: { 'app.t': ['SELECT'] }, ...ttl } }), 'ENV_SCHEMA', 'roles.r.grants', 'not both');
  rejects(docker({ r: { ...ttl } }), 'ENV_MISSING', 'roles.r.access', '"grants"');
});

test('fails when grants name an unknown privilege, an unsafe table or column, or an empty list', () => {
  rejects(docker({ r: { grants: { 'app.orders': ['SELECT', 'DROP'] }, ...ttl } }), 'ENV_SCHEMA', 'roles.r.grants.app.orders.1', '"DROP"', '"SELECT", "INSERT"');
  rejects(docker({ r: { grants: { 'app.orders; DROP TABLE x': ['SELECT'] }, ...ttl } }), 'ENV_SCHEMA', 'roles.r.grants.app.orders; DROP TABLE x', '"<schema>.<table>"');
  rejects(docker({ r: { grants: { orders: ['SELECT'] }, ...ttl } }), 'ENV_SCHEMA', 'roles.r.grants.orders', '"<schema>.*"');
  rejects(docker({ r: { grants: { 'app.customers': { SELECT: ['id', 'Email"'] } }, ...ttl } }), 'ENV_SCHEMA', 'roles.r.grants.app.customers.SELECT.1', 'Email');
  rejects(docker({ r: { grants: { 'app.customers': { DROP: ['id'] } }, ...ttl } }), 'ENV_SCHEMA', 'roles.r.grants.app.customers.DROP', '"SELECT", "INSERT", "UPDATE" or "REFERENCES"');
  rejects(docker({ r: { grants: { 'app.orders': [] }, ...ttl } }), 'ENV_SCHEMA', 'roles.r.grants.app.orders');
  rejects(docker({ r: { access: 'admin', ...ttl } }), 'ENV_SCHEMA', 'roles.r.access', '"migrate"');
});

test('fails when a column list has no column form, or names every table of a schema', () => {
  rejects(docker({ r: { grants: { 'app.*': { SELECT: ['id'] } }, ...ttl } }), 'ENV_SCHEMA', 'roles.r.grants.app.*', 'named table');
});

test('fails when a replica role is given a write privilege, or the migrator targets a replica', () => {
  const ha = { docker: { vaultNodes: 3, vaultHostPort: 18230, postgresHostPort: 15470, postgresTls: true, postgresReplica: {} } };
  rejects(docker({ r: { grants: { 'app.*': ['SELECT', 'INSERT'] }, target: 'replica', ...ttl } }, ha), 'ENV_SCHEMA', 'roles.r.grants.app.*', 'SELECT only', '"INSERT" is a write');
  rejects(docker({ r: { grants: { 'app.t': { UPDATE: ['a'] } }, target: 'replica', ...ttl } }, ha), 'ENV_SCHEMA', 'roles.r.grants.app.t', '"UPDATE" is a write');
  rejects(docker({ m: { access: 'migrate', target: 'replica', ...ttl } }, ha), 'ENV_SCHEMA', 'roles.m.target', 'read-only');
  const ok = resolveEnvironment('t', 't.json', docker({ reporter: { grants: { 'app.*': ['SELECT'] }, target: 'replica', ...ttl } }, ha));
  assert.equal(ok.roles[0].target, 'replica');
});

test('fails when two roles would share a group role', () => {
  rejects(docker({ 'a-b': { grants: { 'app.t': ['SELECT'] }, ...ttl }, a_b: { access: 'migrate', ...ttl } }), 'ENV_SCHEMA', 'roles.a_b', 'pgvault_t_g_a_b', 'Rename one');
});

test('fails when a role\'s group role name would be longer than Postgres allows', () => {
  const env = 'e'.repeat(32);
  assert.throws(
    () => resolveEnvironment(env, 't.json', docker({ ['r'.repeat(32)]: { grants: { 'app.t': ['SELECT'] }, ...ttl } })),
    (e: any) => e.code === 'ENV_SCHEMA' && /at most 63/.test(e.message) && /Shorten/.test(e.message),
  );
});

test('fails when a replica lacks TLS, TLS lacks the cluster CA, TLS meets sslmode disable, or the replica port clashes', () => {
  const roles = { ro: { access: 'read', defaultTtlSeconds: 60, maxTtlSeconds: 120 } };
  rejects({ infrastructure: 'docker', docker: { vaultNodes: 3, postgresReplica: {} }, roles }, 'ENV_SCHEMA', 'docker.postgresTls');
  rejects({ infrastructure: 'docker', docker: { postgresTls: true }, roles }, 'ENV_SCHEMA', 'docker.postgresTls', 'docker.vaultNodes');
  rejects({ infrastructure: 'docker', docker: { vaultNodes: 3, postgresTls: true }, postgres: { sslmode: 'disable' }, roles }, 'ENV_SCHEMA', 'postgres.sslmode');
  rejects({ infrastructure: 'docker', docker: { vaultNodes: 3, vaultHostPort: 18230, postgresTls: true, postgresReplica: { hostPort: 18231 } }, roles }, 'ENV_SCHEMA', 'docker.postgresReplica.hostPort', '18231');
  rejects({ infrastructure: 'docker', postgres: { caCertFile: 'ca.pem' }, roles }, 'ENV_SCHEMA', 'postgres.caCertFile');
});

test('existing: a Postgres CA file for the app and the bootstrap, and its path where Vault runs', () => {
  const env = resolveEnvironment('t', 't.json', {
    infrastructure: 'existing',
    postgres: { host: 'db', adminPasswordFile: 'p', caCertFile: 'certs/pg-ca.pem', caCertFileOnVault: '/etc/vault/pg-ca.pem', replica: { clientHost: 'db-ro' } },
    vault: { address: 'https://v' },
    roles: { ro: { access: 'read', defaultTtlSeconds: 60, maxTtlSeconds: 120, target: 'replica' } },
  });
  assert.equal(env.postgres.caCertFile, path.join(REPO_ROOT, 'certs/pg-ca.pem'));
  assert.equal(env.postgres.caCertFileOnVault, '/etc/vault/pg-ca.pem');
  assert.deepEqual(env.postgres.replica, { host: 'db-ro', port: 5432, clientHost: 'db-ro', clientPort: 5432 });
});

test('dynamic users are kept to the app\'s database on docker; existing servers opt in', () => {
  assert.equal(loadEnvironment('local').postgres.restrictPublicConnect, true);
  const doc = shipped('existing-example');
  assert.equal(resolveEnvironment('e', 'e.json', doc).postgres.restrictPublicConnect, false, 'reported, not changed, unless the operator opts in');
  assert.equal(resolveEnvironment('e', 'e.json', { ...doc, postgres: { ...doc.postgres, restrictPublicConnect: true } }).postgres.restrictPublicConnect, true);
  rejects({ ...doc, postgres: { ...doc.postgres, restrictPublicConnect: 'yes' } }, 'ENV_SCHEMA', 'postgres.restrictPublicConnect', '"yes"');
});

test('each role bounds its users: connections, statements and idle transactions, with documented defaults', () => {
  const local = loadEnvironment('local');
  for (const r of local.roles) {
    assert.deepEqual([r.connectionLimit, r.statementTimeoutSeconds, r.idleInTransactionTimeoutSeconds], [20, 300, 60], r.name);
  }
  const doc = shipped('local');
  doc.roles.readonly = { ...doc.roles.readonly, connectionLimit: 12, statementTimeoutSeconds: 5, idleInTransactionTimeoutSeconds: 2 };
  const ro = resolveEnvironment('t', 't.json', doc).roles.find((r) => r.name === 'readonly')!;
  assert.deepEqual([ro.connectionLimit, ro.statementTimeoutSeconds, ro.idleInTransactionTimeoutSeconds], [12, 5, 2]);
  doc.roles.readonly.connectionLimit = 0;
  rejects(doc, 'ENV_SCHEMA', 'roles.readonly.connectionLimit', '0');
});

test('secretsEngine.scramIterations: unset by default (Postgres\'s own 4096); an opt-in count from 1 to 4096; anything else refused', () => {
  assert.equal(resolveEnvironment('local', '/envs/local.json', shipped('local')).secretsEngine.scramIterations, undefined);
  const doc = shipped('local');
  doc.secretsEngine = { scramIterations: 16 };
  assert.equal(resolveEnvironment('local', '/envs/local.json', doc).secretsEngine.scramIterations, 16);
  for (const bad of [0, 5000, 1.5, '16']) {
    const d = shipped('local');
    d.secretsEngine = { scramIterations: bad };
    rejects(d, 'ENV_SCHEMA', 'secretsEngine.scramIterations');
  }
});
