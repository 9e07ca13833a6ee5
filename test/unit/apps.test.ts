import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Testing } from 'cdktf';
import { findApp, forDatabase, resolveEnvironment } from '../../stacks/config';
import { ConfigError } from '../../stacks/errors';
import { SecretsStack } from '../../stacks/secrets-stack';
import { readOutputs } from '@pgvault/runtime';

type Json = Record<string, any>;

const role = (access: string) => ({ access, defaultTtlSeconds: 60, maxTtlSeconds: 120 });
const base = () => ({
  infrastructure: 'existing',
  postgres: { host: 'db.example', adminPasswordFile: 'x' },
  vault: { address: 'https://vault.example:8200' },
  roles: { readonly: role('read'), readwrite: role('write'), shop_writer: role('write'), reporter: role('read') },
});
const withApps = () => ({
  ...base(),
  apps: { api: { roles: ['readonly', 'readwrite'] }, shop: { roles: ['shop_writer', 'readonly'] }, report: { roles: ['reporter'] } },
});

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

/** The secrets stack of a document, synthesized. */
function synth(doc: unknown): Json {
  const env = resolveEnvironment('t', '/envs/t.json', doc);
  return JSON.parse(Testing.synth(new SecretsStack(Testing.app(), 't-secrets', { env })));
}

test('without "apps": one app, api, with every role, under the AppRole name of appAccess.roleName', () => {
  const env = resolveEnvironment('t', '/envs/t.json', base());
  assert.deepEqual(env.apps, [{ name: 'api', roles: ['readonly', 'readwrite', 'reporter', 'shop_writer'], roleName: 'pgvault-app' }]);
  assert.equal(env.appsDeclared, false);
});

test('"apps": each app with its sorted roles and an AppRole named <roleName>-<app>', () => {
  const env = resolveEnvironment('t', '/envs/t.json', { ...withApps(), appAccess: { roleName: 'svc' } });
  assert.deepEqual(env.apps, [
    { name: 'api', roles: ['readonly', 'readwrite'], roleName: 'svc-api' },
    { name: 'report', roles: ['reporter'], roleName: 'svc-report' },
    { name: 'shop', roles: ['readonly', 'shop_writer'], roleName: 'svc-shop' },
  ]);
  assert.equal(findApp(env, 'shop').roleName, 'svc-shop');
});

test('fails when an app names a role the file does not declare, naming the app, the role and the roles there are', () => {
  const doc = withApps();
  doc.apps.shop.roles = ['shop_writer', 'orders'];
  rejects(doc, 'ENV_APP_ROLE', 'apps.shop.roles[1]', '"orders"', '"readonly", "readwrite", "reporter", "shop_writer"', 'Declare "orders" under "roles"');
});

test('fails when "apps" is malformed: an app without roles, an empty or repeated list, a bad name, an unknown setting', () => {
  rejects({ ...base(), apps: { shop: {} } }, 'ENV_SCHEMA', 'apps.shop.roles', 'required');
  rejects({ ...base(), apps: { shop: { roles: [] } } }, 'ENV_SCHEMA', 'apps.shop.roles');
  rejects({ ...base(), apps: { shop: { roles: ['readonly', 'readonly'] } } }, 'ENV_SCHEMA', 'apps.shop.roles');
  rejects({ ...base(), apps: { Shop: { roles: ['readonly'] } } }, 'ENV_SCHEMA', 'apps.Shop', 'an app name of lower-case letters');
  rejects({ ...base(), apps: { shop: { roles: ['readonly'], policy: 'x' } } }, 'ENV_SCHEMA', 'apps.shop.policy', 'no such setting');
  rejects({ ...base(), apps: {} }, 'ENV_SCHEMA', '"apps"');
});

test('fails when an unknown app is asked for, listing the apps there are', () => {
  const env = resolveEnvironment('t', '/envs/t.json', withApps());
  assert.throws(() => findApp(env, 'billing'), (e: any) => e.code === 'ENV_APP_UNKNOWN' && /no app "billing".*"api", "report", "shop"/.test(e.message));
});

const policies = (doc: Json): Record<string, string> =>
  Object.fromEntries(Object.values(doc.resource.vault_policy as Record<string, Json>).map((p) => [p.name, p.policy]));
const credsPaths = (hcl: string) => [...hcl.matchAll(/path "(\$\{vault_mount\.[^}]+\}\/creds\/[^"]+)"/g)].map((m) => m[1]);
const leaseIds = (hcl: string, op: string) => hcl.match(new RegExp(`path "sys/leases/${op}" \\{[\\s\\S]*?"lease_id" = \\[([^\\]]*)\\]`))![1];

test('each app gets its own policy, reaching only its own roles\' creds and leases (URL and body forms)', () => {
  const doc = synth(withApps());
  const p = policies(doc);
  assert.deepEqual(Object.keys(p).sort(), ['pgvault-app-api', 'pgvault-app-report', 'pgvault-app-shop']);
  const role = (name: string) => `\${vault_database_secret_backend_role.role-${name}_role_`;
  const shop = p['pgvault-app-shop'];
  assert.equal(credsPaths(shop).length, 2);
  for (const r of ['readonly', 'shop_writer']) assert.ok(credsPaths(shop).some((c) => c.includes(role(r))), `shop's policy lacks ${r}`);
  for (const r of ['reporter', 'readwrite']) assert.ok(!shop.includes(role(r)), `shop's policy reaches ${r}`);
  for (const op of ['renew', 'revoke']) {
    const ids = leaseIds(shop, op);
    assert.ok(!ids.includes(role('reporter')), `shop may ${op} reporter's leases in the body form`);
    assert.equal(ids.split(',').length, 2, `${op}: exactly shop's two roles`);
  }
  const report = p['pgvault-app-report'];
  assert.equal(credsPaths(report).length, 1);
  assert.ok(report.includes(role('reporter')));
  assert.ok(!report.includes(role('readonly')) && !report.includes(role('shop_writer')));
  const roles = Object.values(doc.resource.vault_approle_auth_backend_role as Record<string, Json>);
  assert.deepEqual(roles.map((r) => r.role_name).sort(), ['pgvault-app-api', 'pgvault-app-report', 'pgvault-app-shop']);
  for (const r of roles) {
    assert.deepEqual(r.token_policies, [`\${vault_policy.app-access_policy-${r.role_name.slice('pgvault-app-'.length)}_${r.token_policies[0].split('_').pop()}`]);
    assert.equal(r.token_no_default_policy, true);
  }
  assert.equal(Object.keys(doc.resource.vault_auth_backend).length, 1, 'one AppRole mount for every app');
});

test('outputs: apps by name; the top-level AppRole keys are the api app\'s, and absent without one', () => {
  const doc = synth(withApps());
  const apps = doc.output.apps.value;
  assert.deepEqual(Object.keys(apps).sort(), ['api', 'report', 'shop']);
  assert.match(apps.shop.approle_role_id, /app-access_role-shop_.*\.role_id/);
  assert.equal(apps.shop.roles.length, 2);
  assert.equal(doc.output.approle_role_id.value, apps.api.approle_role_id);
  assert.equal(doc.output.approle_role_name.value, apps.api.approle_role_name);
  const noApi = withApps() as Json;
  delete noApi.apps.api;
  const without = synth(noApi);
  for (const k of ['approle_role_id', 'approle_role_name', 'policy_name']) assert.equal(without.output[k], undefined, `${k} without an api app`);
  assert.ok(without.output.approle_mount, 'the mount is every app\'s');
});

test('without "apps" the AppRole keeps its construct IDs and outputs (an upgrade replaces nothing)', () => {
  const doc = synth(base());
  assert.deepEqual(Object.keys(doc.resource.vault_approle_auth_backend_role), ['app-access_role_DD254D5B']);
  assert.deepEqual(Object.keys(doc.resource.vault_policy), ['app-access_policy_ED893D4F']);
  assert.match(doc.output.approle_role_id.value, /app-access_role_DD254D5B\.role_id/);
  assert.deepEqual(Object.keys(doc.output.apps.value), ['api']);
});

test('readOutputs: the app given, else PGVAULT_APP, else the top-level AppRole; unknown apps are refused with the list', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-apps-'));
  const file = path.join(dir, 'outputs.json');
  const common = { vault_address: 'http://v', postgres_host: 'h', postgres_port: 1, postgres_database: 'app', mount_path: 'database', approle_mount: 'approle' };
  const apps = {
    api: { approle_role_name: 'pgvault-app-api', approle_role_id: 'id-api', roles: ['readonly', 'readwrite'] },
    shop: { approle_role_name: 'pgvault-app-shop', approle_role_id: 'id-shop', roles: ['shop_writer'] },
  };
  fs.writeFileSync(file, JSON.stringify({ ...common, roles: ['readonly', 'readwrite', 'shop_writer'], approle_role_name: 'pgvault-app-api', approle_role_id: 'id-api', apps }));
  try {
    const shop = readOutputs(file, 'shop', {});
    assert.equal(shop.approle_role_id, 'id-shop');
    assert.equal(shop.approle_role_name, 'pgvault-app-shop');
    assert.deepEqual(shop.roles, ['shop_writer']);
    assert.equal(shop.app, 'shop');
    assert.equal(readOutputs(file, undefined, { PGVAULT_APP: 'shop' }).approle_role_id, 'id-shop');
    assert.equal(readOutputs(file, undefined, {}).approle_role_id, 'id-api');
    assert.equal(readOutputs(file, undefined, {}).app, 'api');
    assert.deepEqual(readOutputs(file, undefined, {}).roles, ['readonly', 'readwrite'], 'the api app\'s roles, not every role');
    assert.throws(() => readOutputs(file, 'billing', {}), (e: any) => e.code === 'APP_NAME' && /app "billing" \(as given\) is not one of the environment's apps: "api", "shop"/.test(e.message));
    assert.throws(() => readOutputs(file, undefined, { PGVAULT_APP: 'billing' }), /\(PGVAULT_APP\)/);
    // Outputs of a deploy from before apps: the top-level AppRole is the app "api".
    fs.writeFileSync(file, JSON.stringify({ ...common, roles: ['readonly', 'readwrite'], approle_role_name: 'pgvault-app', approle_role_id: 'id-old' }));
    assert.equal(readOutputs(file, undefined, {}).approle_role_id, 'id-old');
    assert.equal(readOutputs(file, 'api', {}).approle_role_id, 'id-old');
    assert.throws(() => readOutputs(file, 'shop', {}), /these outputs list no apps; redeploy the environment/);
    fs.writeFileSync(file, JSON.stringify({ ...common, roles: ['shop_writer'], apps: { shop: apps.shop } }));
    assert.throws(() => readOutputs(file, undefined, {}), (e: any) => e.code === 'APP_NAME' && /no app named "api" \(its apps: "shop"\); set PGVAULT_APP/.test(e.message));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// --- Several databases -------------------------------------------------------------------

const twoDatabases = () => {
  const doc = withApps() as Json;
  doc.postgres.databases = ['reports'];
  doc.roles.reporter.database = 'reports';
  return doc;
};

test('a role names its database from postgres.databases; the default is postgres.database', () => {
  const env = resolveEnvironment('t', '/envs/t.json', twoDatabases());
  assert.deepEqual(env.postgres.databases, ['app', 'reports']);
  assert.equal(env.roles.find((r) => r.name === 'reporter')!.database, 'reports');
  assert.equal(env.roles.find((r) => r.name === 'readonly')!.database, 'app');
  const reports = forDatabase(env, 'reports');
  assert.equal(reports.postgres.database, 'reports');
  assert.equal(reports.secretsEngine.vaultUser, 'pgvault_t_vault_reports');
  assert.equal(reports.secretsEngine.connectionName, 'postgres-reports');
  assert.deepEqual(reports.database.groupRoles, { read: 'pgvault_t_reports_read', write: 'pgvault_t_reports_write' });
  assert.equal(reports.database.ownerRole, env.database.ownerRole, 'one owner for the environment');
  assert.equal(forDatabase(env, 'app'), env, 'the first database keeps the environment\'s names');
});

test('a shorthand role of another database takes that database\'s group role; a grants or migrate role there is refused with the fix', () => {
  const env = resolveEnvironment('t', '/envs/t.json', twoDatabases());
  assert.equal(env.roles.find((r) => r.name === 'reporter')!.groupRole, forDatabase(env, 'reports').database.groupRoles.read);
  assert.equal(env.roles.find((r) => r.name === 'readonly')!.groupRole, env.database.groupRoles.read);
  const shaped = twoDatabases();
  shaped.roles.reporter = { grants: { 'app.*': ['SELECT'] }, database: 'reports', defaultTtlSeconds: 60, maxTtlSeconds: 120 };
  rejects(shaped, 'ENV_SCHEMA', 'roles.reporter.database', '"reports"', 'Use "access": "read" or "write"');
  const migrator = twoDatabases();
  migrator.roles.reporter = { access: 'migrate', database: 'reports', defaultTtlSeconds: 60, maxTtlSeconds: 120 };
  rejects(migrator, 'ENV_SCHEMA', 'roles.reporter.database', '"access": "migrate"');
});

test('fails when a role names a database the file does not declare, or a database name makes a role name too long', () => {
  const doc = twoDatabases();
  doc.roles.readonly.database = 'billing';
  rejects(doc, 'ENV_SCHEMA', 'roles.readonly.database', '"billing"', '"app", "reports"', 'add "billing" to "postgres.databases"');
  const long = twoDatabases();
  long.postgres.databases = ['a_database_name_of_thirty_chars'];
  long.roles.reporter.database = 'a_database_name_of_thirty_chars';
  assert.throws(() => resolveEnvironment('an-environment-name-of-30-chars', '/envs/x.json', long), /"postgres.databases" is "a_database_name_of_thirty_chars"; expected a shorter database name.*63 characters/);
  rejects({ ...base(), postgres: { ...base().postgres, databases: ['Reports'] } }, 'ENV_SCHEMA', 'postgres.databases.0');
});

test('each database gets its own Vault connection (own Vault role, own root rotation), and each role uses its database\'s', () => {
  const doc = synth(twoDatabases());
  const conns = doc.resource.vault_database_secret_backend_connection as Record<string, Json>;
  const byName = Object.fromEntries(Object.values(conns).map((c) => [c.name, c]));
  assert.deepEqual(Object.keys(byName).sort(), ['postgres', 'postgres-reports']);
  assert.match(byName['postgres-reports'].postgresql.connection_url, /:5432\/reports\?/);
  assert.equal(byName['postgres-reports'].postgresql.username, 'pgvault_t_vault_reports');
  assert.equal(byName['postgres-reports'].postgresql.password_wo, '${var.vault_db_setup_password}');
  assert.deepEqual(byName['postgres-reports'].allowed_roles, ['reporter']);
  assert.deepEqual(byName.postgres.allowed_roles, ['readonly', 'readwrite', 'shop_writer']);
  assert.equal(Object.keys(doc.resource.vault_generic_endpoint).length, 2, 'a root rotation per connection');
  const roles = Object.values(doc.resource.vault_database_secret_backend_role as Record<string, Json>);
  const reporter = roles.find((r) => r.name === 'reporter')!;
  assert.match(reporter.db_name, /connection-reports/);
  assert.match(reporter.creation_statements[1], /'GRANT %I TO %I WITH INHERIT TRUE, SET FALSE', 'pgvault_t_reports_read'/);
  assert.ok(reporter.depends_on.some((d: string) => /rotate-root-reports/.test(d)));
  const readonly = roles.find((r) => r.name === 'readonly')!;
  assert.match(readonly.creation_statements[1], /'GRANT %I TO %I WITH INHERIT TRUE, SET FALSE', 'pgvault_t_read'/);
  assert.deepEqual(doc.output.role_endpoints.value.reporter, { host: 'db.example', port: 5432, target: 'primary', database: 'reports' });
  assert.equal(doc.output.role_endpoints.value.readonly.database, undefined, 'the default database is postgres_database');
  const bootstrap = Object.values(doc.resource.terraform_data as Record<string, Json>).find((h) => h.triggers_replace?.vault_mount)!;
  assert.equal(bootstrap.triggers_replace.databases, 'app,reports');
});

test('at destroy the AppRole mount goes after the hook that revokes every lease (disabling it would revoke the apps\' leases first)', () => {
  const doc = synth(twoDatabases());
  const revoke = Object.entries(doc.resource.terraform_data as Record<string, Json>).find(([k]) => k.startsWith('revoke-leases'))![1];
  const backend = Object.keys(doc.resource.vault_auth_backend)[0];
  assert.ok(revoke.depends_on.includes(`vault_auth_backend.${backend}`), JSON.stringify(revoke.depends_on));
  assert.ok(revoke.depends_on.some((d: string) => /rotate-root-reports/.test(d)), 'and after every connection\'s rotation');
});

test('review fixes: names that would share one Postgres role, system schemas in grants and one JWT subject for two apps are refused, naming both', () => {
  const clash = twoDatabases();
  clash.postgres.databases = ['g'];
  clash.roles.reporter = { access: 'write', database: 'g', defaultTtlSeconds: 60, maxTtlSeconds: 120 };
  clash.roles.write = { grants: { 'app.items': ['SELECT'] }, defaultTtlSeconds: 60, maxTtlSeconds: 120 };
  rejects(clash, 'ENV_SCHEMA', 'roles.write', 'pgvault_t_g_write', 'postgres.databases (g)');
  const system = base() as Json;
  system.roles.readonly = { grants: { 'pg_catalog.pg_authid': ['SELECT'] }, defaultTtlSeconds: 60, maxTtlSeconds: 120 };
  rejects(system, 'ENV_SCHEMA', 'roles.readonly.grants', 'pg_catalog');
  const twins = withApps() as Json;
  twins.appAccess = { jwt: { jwksUrl: 'https://issuer/jwks', boundAudiences: ['pgvault'], boundSubject: 'sa:api' } };
  twins.apps.shop.jwt = { boundSubject: 'sa:api' };
  rejects(twins, 'ENV_SCHEMA', 'apps.shop.jwt.boundSubject', 'app "api" has it too');
  const migrate = twoDatabases();
  migrate.roles.migrator = { access: 'migrate', defaultTtlSeconds: 60, maxTtlSeconds: 120 };
  rejects(migrate, 'ENV_SCHEMA', 'postgres.restrictPublicConnect', 'migrate');
});
