import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as sql from '../../stacks/statements';
import { appPolicy } from '../../stacks/constructs/app-access';

const props = { groupRole: 'pgvault_local_read', retiredRole: 'pgvault_local_retired' };

test('creation grants the group role and expires with the lease', () => {
  const [stmt] = sql.creationStatements(props);
  assert.match(stmt, /CREATE ROLE "\{\{name\}\}" WITH LOGIN/);
  assert.match(stmt, /PASSWORD '\{\{password\}\}'/);
  assert.match(stmt, /VALID UNTIL '\{\{expiration\}\}'/);
  assert.match(stmt, /IN ROLE pgvault_local_read;$/);
  assert.doesNotMatch(stmt, /GRANT .* ON /, 'no per-table grants');
});

test('every statement quotes the name and password', () => {
  const all = [...sql.creationStatements(props), ...sql.renewStatements(), ...sql.rollbackStatements(), ...sql.revocationStatements(props)];
  for (const s of all) {
    assert.doesNotMatch(s, /[^"']\{\{name\}\}[^"']/, s);
    assert.doesNotMatch(s, /[^']\{\{password\}\}/, s);
  }
});

test('revocation terminates sessions, disarms functions, reassigns to the retired role and drops owned objects, then drops the role if it exists', () => {
  const [block, drop] = sql.revocationStatements(props);
  assert.match(block, /^DO \$\$/);
  assert.match(block, /pg_terminate_backend/);
  assert.match(block, /REVOKE ALL ON ROUTINE %s FROM PUBLIC/, 'ROUTINE: procedures and aggregates too');
  assert.ok(block.indexOf('REVOKE ALL ON ROUTINE') < block.indexOf('REASSIGN OWNED'), 'functions are disarmed before they change owner');
  assert.match(block, /REASSIGN OWNED BY %I TO pgvault_local_retired/);
  assert.match(block, /DROP OWNED BY %I/);
  assert.match(block, /IF EXISTS/);
  assert.equal(drop, 'DROP ROLE IF EXISTS "{{name}}";');
});

test('fails when a group role is not a safe identifier', () => {
  assert.throws(() => sql.creationStatements({ groupRole: 'x; DROP', retiredRole: 'o' }), /not a safe Postgres identifier/);
});

test('the connection URL leaves credentials to Vault', () => {
  assert.equal(sql.connectionUrl('db', 5432, 'app', 'disable'), 'postgresql://{{username}}:{{password}}@db:5432/app?sslmode=disable');
});

test('the app policy allows its creds, its leases in both request forms and its own token, nothing else', () => {
  const hcl = appPolicy(['database/creds/readonly', 'database/creds/readwrite']);
  const paths = [...hcl.matchAll(/path "([^"]+)"/g)].map((m) => m[1]);
  assert.deepEqual(paths, [
    'database/creds/readonly',
    'sys/leases/renew/database/creds/readonly/*',
    'sys/leases/revoke/database/creds/readonly/*',
    'database/creds/readwrite',
    'sys/leases/renew/database/creds/readwrite/*',
    'sys/leases/revoke/database/creds/readwrite/*',
    'sys/leases/renew',
    'sys/leases/revoke',
    'auth/token/lookup-self',
    'auth/token/renew-self',
    'auth/token/revoke-self',
  ]);
  assert.doesNotMatch(hcl, /sudo|"create"|"delete"|"list"|"read", "update"/);
});

test('the body form of renew and revoke admits only lease_ids under the app\'s creds paths', () => {
  const hcl = appPolicy(['database/creds/readonly', 'database/creds/readwrite']);
  const block = (p: string) => hcl.match(new RegExp(`path "${p}" \\{[\\s\\S]*?\\n\\}`))![0];
  const ids = '"lease_id" = ["database/creds/readonly/*", "database/creds/readwrite/*"]';
  const renew = block('sys/leases/renew');
  assert.match(renew, /capabilities = \["update"\]/);
  assert.ok(renew.includes(ids), renew);
  assert.match(renew, /"increment" = \[\]/);
  assert.doesNotMatch(renew, /"sync"/);
  const revoke = block('sys/leases/revoke');
  assert.ok(revoke.includes(ids), revoke);
  assert.match(revoke, /"sync" = \[\]/);
  assert.doesNotMatch(revoke, /"increment"/);
  for (const b of [renew, revoke]) {
    assert.equal([...b.matchAll(/^    "/gm)].length, 2, 'exactly two allowed parameters');
  }
});

test('fails when the app has no role (an empty lease_id list would admit every lease)', () => {
  assert.throws(() => appPolicy([]), /"roles" is empty; expected at least one role/);
});

test('the setup password reaches Postgres as a SCRAM verifier, never as text', async () => {
  const { scramVerifier } = await import('../../scripts/db-bootstrap');
  const v = scramVerifier('setup-secret', Buffer.alloc(16, 1), 4096);
  assert.match(v, /^SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}:[A-Za-z0-9+/=]{44}$/);
  assert.ok(!v.includes('setup-secret'));
  assert.equal(v, scramVerifier('setup-secret', Buffer.alloc(16, 1), 4096), 'deterministic for a given salt');
  assert.notEqual(scramVerifier('setup-secret'), scramVerifier('setup-secret'), 'a fresh salt each time');
});
