/**
 * The role model (issue 23): the pure function that turns a group role's declaration and what
 * Postgres holds into SQL, and a migrator's statements. (The environment file's side is in config.test.ts.)
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as sql from '../../stacks/statements';
import { containment } from '../../demo/verify';

// --- grantPlan: read like a table -----------------------------------------------------------

const OWNER = 'pgvault_t_owner';
const G = 'pgvault_t_g_orders_writer';
const orders: sql.GroupDeclaration = {
  group: G,
  grants: [
    { schema: 'app', table: 'orders', privilege: 'SELECT' },
    { schema: 'app', table: 'orders', privilege: 'INSERT' },
    { schema: 'app', table: 'customers', privilege: 'SELECT', columns: ['id', 'name'] },
  ],
};
const tables = [
  { schema: 'app', table: 'orders', owner: OWNER },
  { schema: 'app', table: 'customers', owner: OWNER },
  { schema: 'app', table: 'items', owner: OWNER },
  { schema: 'app', table: 'left_by_writer', owner: 'pgvault_t_retired' },
];
const empty: sql.CatalogView = { ownerRole: OWNER, ourSchemas: ['app'], tables, held: [], heldSchemas: [], heldDefaults: [] };
const held = (table: string, privilege: string, more: Partial<sql.HeldPrivilege> = {}): sql.HeldPrivilege => ({ schema: 'app', table, privilege, grantable: false, grantor: OWNER, owner: OWNER, ...more });

test('grantPlan: from nothing, the declared privileges, one statement per table and column set', () => {
  assert.deepEqual(sql.grantPlan(orders, empty), {
    revoke: [],
    grant: [
      'GRANT USAGE ON SCHEMA "app" TO "pgvault_t_g_orders_writer";',
      'GRANT SELECT ("id", "name") ON "app"."customers" TO "pgvault_t_g_orders_writer";',
      'GRANT SELECT, INSERT ON "app"."orders" TO "pgvault_t_g_orders_writer";',
    ],
    missing: [],
  });
});

test('grantPlan: what is held and declared is left alone; what is held and not declared is revoked, first', () => {
  const catalog: sql.CatalogView = {
    ...empty,
    held: [held('orders', 'SELECT'), held('orders', 'INSERT'), held('orders', 'DELETE'), held('customers', 'SELECT', { column: 'id' }), held('customers', 'SELECT', { column: 'name' }), held('customers', 'SELECT', { column: 'email' }), held('items', 'SELECT')],
    heldSchemas: [{ schema: 'app', privilege: 'USAGE' }, { schema: 'app', privilege: 'CREATE' }],
    heldDefaults: [{ schema: 'app', privilege: 'SELECT' }],
  };
  assert.deepEqual(sql.grantPlan(orders, catalog), {
    revoke: [
      'REVOKE DELETE ON "app"."orders" FROM "pgvault_t_g_orders_writer";',
      'REVOKE SELECT ON "app"."items" FROM "pgvault_t_g_orders_writer";',
      'REVOKE SELECT ("email") ON "app"."customers" FROM "pgvault_t_g_orders_writer";',
      'REVOKE CREATE ON SCHEMA "app" FROM "pgvault_t_g_orders_writer";',
      'ALTER DEFAULT PRIVILEGES FOR ROLE "pgvault_t_owner" IN SCHEMA "app" REVOKE SELECT ON TABLES FROM "pgvault_t_g_orders_writer";',
    ],
    grant: [],
    missing: [],
  });
});

test('grantPlan: a table-level privilege where columns are declared is revoked, and the columns granted again (the revoke takes them)', () => {
  const catalog = { ...empty, held: [held('customers', 'SELECT'), held('customers', 'SELECT', { column: 'id' })], heldSchemas: [{ schema: 'app', privilege: 'USAGE' as const }] };
  const plan = sql.grantPlan({ group: G, grants: [orders.grants[2]] }, catalog);
  assert.deepEqual(plan.revoke, ['REVOKE SELECT ON "app"."customers" FROM "pgvault_t_g_orders_writer";']);
  assert.deepEqual(plan.grant, ['GRANT SELECT ("id", "name") ON "app"."customers" TO "pgvault_t_g_orders_writer";']);
});

test('grantPlan: a grant option or another grantor\'s grant is taken back as that grantor', () => {
  const catalog = { ...empty, held: [held('orders', 'SELECT', { grantable: true }), held('orders', 'TRUNCATE', { grantor: 'alice' })] };
  assert.deepEqual(sql.grantPlan({ group: G, grants: [orders.grants[0]] }, catalog).revoke, [
    'REVOKE GRANT OPTION FOR SELECT ON "app"."orders" FROM "pgvault_t_g_orders_writer";',
    'SET ROLE "alice";',
    'REVOKE TRUNCATE ON "app"."orders" FROM "pgvault_t_g_orders_writer";',
    'RESET ROLE;',
  ]);
});

test('grantPlan: schema.* covers the owner role\'s tables now and its future ones by default privileges; in a schema not ours, every table', () => {
  const reporter: sql.GroupDeclaration = { group: 'pgvault_t_g_reporter', grants: [{ schema: 'app', table: '*', privilege: 'SELECT' }, { schema: 'legacy', table: '*', privilege: 'SELECT' }] };
  const catalog = { ...empty, tables: [...tables, { schema: 'legacy', table: 'accounts', owner: 'dba' }] };
  assert.deepEqual(sql.grantPlan(reporter, catalog).grant, [
    'GRANT USAGE ON SCHEMA "app" TO "pgvault_t_g_reporter";',
    'GRANT USAGE ON SCHEMA "legacy" TO "pgvault_t_g_reporter";',
    'GRANT SELECT ON "app"."customers" TO "pgvault_t_g_reporter";',
    'GRANT SELECT ON "app"."items" TO "pgvault_t_g_reporter";',
    'GRANT SELECT ON "app"."orders" TO "pgvault_t_g_reporter";',
    'GRANT SELECT ON "legacy"."accounts" TO "pgvault_t_g_reporter";',
    'ALTER DEFAULT PRIVILEGES FOR ROLE "pgvault_t_owner" IN SCHEMA "app" GRANT SELECT ON TABLES TO "pgvault_t_g_reporter";',
    'ALTER DEFAULT PRIVILEGES FOR ROLE "pgvault_t_owner" IN SCHEMA "legacy" GRANT SELECT ON TABLES TO "pgvault_t_g_reporter";',
  ]);
});

test('grantPlan: a named table that does not exist is reported, not granted and not failed', () => {
  const plan = sql.grantPlan(orders, { ...empty, tables: tables.filter((t) => t.table !== 'orders') });
  assert.deepEqual(plan.missing, ['app.orders']);
  assert.ok(plan.grant.every((s) => !s.includes('"orders"')));
});

test('grantPlan: the write shorthand as grants, with CREATE in the schema; names from the catalog are quoted whatever they hold', () => {
  const write: sql.GroupDeclaration = { group: 'pgvault_t_write', grants: sql.accessGrants('write', 'app'), createIn: ['app'] };
  const plan = sql.grantPlan(write, { ...empty, tables: [{ schema: 'app', table: 'items', owner: OWNER }], held: [held('we"ird', 'SELECT')] });
  assert.deepEqual(plan.revoke, ['REVOKE SELECT ON "app"."we""ird" FROM "pgvault_t_write";']);
  assert.deepEqual(plan.grant, [
    'GRANT USAGE, CREATE ON SCHEMA "app" TO "pgvault_t_write";',
    'GRANT SELECT, INSERT, UPDATE, DELETE ON "app"."items" TO "pgvault_t_write";',
    'ALTER DEFAULT PRIVILEGES FOR ROLE "pgvault_t_owner" IN SCHEMA "app" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "pgvault_t_write";',
  ]);
});

test('migrate: the user holds the owner role without inheriting it and starts as it; its revocation drops, never reassigns', () => {
  const props: sql.RoleStatementsProps = { groupRole: 'pgvault_t_g_migrator', retiredRole: 'pgvault_t_retired', mark: 'pgvault:t', access: 'read', setRole: OWNER };
  const { creation, revocation } = sql.roleSql(props, { group: props.groupRole, grants: [] }, empty);
  assert.match(creation[0], / INHERIT CONNECTION LIMIT 20 /);
  assert.equal(creation[1], sql.membershipStatement('pgvault_t_g_migrator'));
  assert.deepEqual(creation.slice(2, 4), [`GRANT ${OWNER} TO "{{name}}" WITH INHERIT FALSE, SET TRUE;`, `ALTER ROLE "{{name}}" SET role = '${OWNER}';`]);
  assert.doesNotMatch(revocation.join('\n'), /REASSIGN OWNED/);
  assert.match(revocation.join('\n'), /DROP OWNED BY/);
  assert.throws(() => sql.creationStatements({ ...props, setRole: 'x; DROP' }), /not a safe Postgres identifier/);
});

test('the demo\'s containment: per shape, a permitted statement and an injection riding on a harmless one', () => {
  const table = (access: Parameters<typeof containment>[0], grants?: sql.TableGrant[]) => {
    const c = containment(access, grants);
    return [c.permitted?.sql ?? '(none)', c.injected.sql];
  };
  assert.deepEqual(table('read'), ['SELECT count(*) FROM app.items', "SELECT 1 WHERE 'x' = 'x'; DELETE FROM app.items"]);
  assert.deepEqual(table('write'), ['SELECT count(*) FROM app.items', "SELECT 1 WHERE 'x' = 'x'; DROP TABLE app.items"]);
  assert.deepEqual(table('migrate'), ['CREATE TABLE app.pgvault_verify_probe (id int)', "SELECT 1 WHERE 'x' = 'x'; CREATE ROLE pgvault_verify_probe SUPERUSER"]);
  assert.deepEqual(table('grants', orders.grants.slice(2)), ['SELECT id, name FROM app.customers LIMIT 1', "SELECT 1 WHERE 'x' = 'x'; DELETE FROM app.items"]);
  assert.deepEqual(table('grants', [{ schema: 'app', table: '*', privilege: 'SELECT' }]), ['SELECT count(*) FROM app.items', "SELECT 1 WHERE 'x' = 'x'; DELETE FROM app.items"]);
});
