import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as sql from '../../stacks/statements';
import { appPolicy } from '../../stacks/constructs/app-access';

const props: sql.RoleStatementsProps = { groupRole: 'pgvault_local_read', retiredRole: 'pgvault_local_retired', mark: 'pgvault:local', access: 'read' };
const writer: sql.RoleStatementsProps = { ...props, groupRole: 'pgvault_local_write', access: 'write' };

test('creation grants the group role, bounds the connections and expires with the lease', () => {
  const [stmt] = sql.creationStatements(props);
  assert.match(stmt, /CREATE ROLE "\{\{name\}\}" WITH LOGIN/);
  assert.match(stmt, /PASSWORD '\{\{password\}\}'/);
  assert.match(stmt, /VALID UNTIL '\{\{expiration\}\}'/);
  assert.match(stmt, / CONNECTION LIMIT 20 /, 'the default: the runtime pool of 10 and room for its checks');
  assert.doesNotMatch(stmt, /IN ROLE/, 'the membership is granted with its options');
  assert.doesNotMatch(stmt, /GRANT .* ON /, 'no per-table grants');
});

test('creation grants the group role inherited but never SET-able on PostgreSQL 16+, as IN ROLE before', () => {
  const [, membership] = sql.creationStatements(props);
  assert.equal(membership, sql.membershipStatement('pgvault_local_read'));
  assert.equal(
    membership,
    "DO $$BEGIN IF pg_catalog.current_setting('server_version_num')::int >= 160000 THEN " +
      "EXECUTE format('GRANT %I TO %I WITH INHERIT TRUE, SET FALSE', 'pgvault_local_read', '{{name}}'); " +
      "ELSE EXECUTE format('GRANT %I TO %I', 'pgvault_local_read', '{{name}}'); END IF; END$$;",
    'a user that could SET ROLE to its group would make objects the group owns, which revocation leaves; the 16+ syntax only in a string, so older servers never parse it',
  );
  assert.throws(() => sql.membershipStatement("x', 'y"), /not a safe Postgres identifier/);
});

test('creation sets the session bounds as defaults and records them where the user cannot change them', () => {
  const all = sql.creationStatements({ ...props, connectionLimit: 12, statementTimeoutSeconds: 5, idleInTransactionTimeoutSeconds: 3 });
  assert.deepEqual(all.slice(2), [
    `ALTER ROLE "{{name}}" SET statement_timeout = '5s';`,
    `ALTER ROLE "{{name}}" SET idle_in_transaction_session_timeout = '3s';`,
    `COMMENT ON ROLE "{{name}}" IS 'pgvault:local user statement-ms=5000 idle-ms=3000';`,
  ]);
  assert.match(all[0], / CONNECTION LIMIT 12 /);
  assert.deepEqual(sql.creationStatements(props).slice(2, 4), [
    `ALTER ROLE "{{name}}" SET statement_timeout = '300s';`,
    `ALTER ROLE "{{name}}" SET idle_in_transaction_session_timeout = '60s';`,
  ]);
});

test('every statement quotes the name and password', () => {
  const all = [...sql.creationStatements(props), ...sql.renewStatements(), ...sql.rollbackStatements(), ...sql.revocationStatements(props), ...sql.revocationStatements(writer)];
  for (const s of all) {
    assert.doesNotMatch(s, /[^"']\{\{name\}\}[^"']/, s);
    assert.doesNotMatch(s, /[^']\{\{password\}\}/, s);
  }
});

test('revocation is one block that disarms before anything else, then cleans up, then drops the role in a block of its own', () => {
  const stmts = sql.revocationStatements(writer);
  assert.equal(stmts.length, 1, 'one DO block: nothing after it can fail the transaction');
  const [block] = stmts;
  const at = (text: string, needle: string) => {
    const i = text.indexOf(needle);
    assert.ok(i >= 0, `${needle} in\n${text}`);
    return i;
  };
  assert.match(block, /^DO \$\$/);
  const full = block.indexOf('\n  IF u IS NOT NULL THEN\n');
  assert.ok(full > 0, 'the full path is the block after the fast drop');
  const order = [
    "EXECUTE format('REVOKE %I FROM %I', g, '{{name}}')",
    'NOLOGIN PASSWORD NULL VALID UNTIL',
    "COMMENT ON ROLE %I IS %L', '{{name}}', 'pgvault:local disarmed write'",
    "PERFORM pg_catalog.set_config('lock_timeout', '2s', true);",
    'IF EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m WHERE m.member = u) THEN',
    "EXECUTE format('GRANT %I TO %I', '{{name}}', current_user)",
    'pg_terminate_backend',
    'granted := true;',
    'IF granted THEN',
    'REVOKE ALL ON ROUTINE %s FROM PUBLIC',
    'REASSIGN OWNED BY %I TO pgvault_local_retired',
    "DROP OWNED BY %I', '{{name}}'",
    "EXECUTE format('DROP ROLE %I', '{{name}}')",
  ].map((needle) => full + at(block.slice(full), needle));
  assert.deepEqual(order, [...order].sort((a, b) => a - b), 'memberships go before the user is granted to Vault\'s role; the drop is last');
  assert.match(block.slice(order[12] - 30, order[12] + 200), /BEGIN\n\s+EXECUTE format\('DROP ROLE %I', '\{\{name\}\}'\);\n\s+EXCEPTION WHEN OTHERS THEN/);
  assert.match(block, /IF u IS NOT NULL THEN/, 'a role already gone is not an error');
});

test('nothing after the disarm can roll it back: each later step is in a block of its own, under a lock timeout', () => {
  const [block] = sql.revocationStatements(writer);
  const lines = block.split('\n');
  /** The line numbers of the innermost BEGIN and its EXCEPTION around the line holding `needle`. */
  const enclosing = (needle: string) => {
    const i = lines.findIndex((l) => l.includes(needle));
    assert.ok(i >= 0, needle);
    const indent = lines[i].search(/\S/);
    let b = i;
    while (b > 0 && !(lines[b].trim() === 'BEGIN' && lines[b].search(/\S/) < indent)) b--;
    const depth = lines[b].search(/\S/);
    let e = i;
    while (e < lines.length && !(lines[e].trim().startsWith('EXCEPTION WHEN OTHERS THEN') && lines[e].search(/\S/) === depth)) e++;
    assert.ok(b > 0 && e < lines.length, `${needle} is inside BEGIN ... EXCEPTION WHEN OTHERS`);
    return [b, e];
  };
  const grant = enclosing("EXECUTE format('GRANT %I TO %I'");
  assert.deepEqual(enclosing('pg_terminate_backend'), grant, 'the grant, the terminations and the wait share one block');
  assert.deepEqual(enclosing('pg_stat_clear_snapshot'), grant);
  const revoke = enclosing('REVOKE ALL ON ROUTINE');
  const reassign = enclosing('REASSIGN OWNED');
  assert.ok(revoke[0] > reassign[0] && revoke[1] < reassign[1], 'each routine\'s REVOKE in a block of its own, inside the hand-over block');
  const lockTimeout = lines.findIndex((l) => l.includes("set_config('lock_timeout', '2s'"));
  assert.ok(lockTimeout < grant[0], 'the lock timeout is set before the grant');
  assert.ok(lines.findIndex((l) => l.includes('disarmed write')) < lockTimeout, 'the disarm itself is not under it');
});

test('revocation first drops a user that has no session, in a block of its own: the full path only when that fails', () => {
  for (const p of [props, writer]) {
    const [block] = sql.revocationStatements(p);
    const fast = block.slice(0, block.indexOf('\n  IF u IS NOT NULL THEN\n'));
    assert.match(
      fast,
      /\n {2}IF u IS NOT NULL AND NOT EXISTS \(SELECT 1 FROM pg_catalog\.pg_stat_get_activity\(NULL\) a WHERE a\.usesysid = u\) THEN\n {4}BEGIN\n {6}PERFORM pg_catalog\.set_config\('lock_timeout', '200ms', true\);\n {6}EXECUTE format\('DROP ROLE %I', '\{\{name\}\}'\);\n {6}u := NULL;\n {4}EXCEPTION WHEN OTHERS THEN NULL;\n {4}END;\n {2}END IF;$/,
      'a user with a session is not dropped here (nobody could terminate it after); u is cleared only once the drop succeeded',
    );
    assert.match(fast, /^DO \$\$\nDECLARE u oid := pg_catalog\.to_regrole\(pg_catalog\.quote_ident\('\{\{name\}\}'\)\);/, 'the user looked up by its exact (quoted) name');
    for (const step of ['REVOKE %I FROM', 'NOLOGIN', 'COMMENT ON ROLE', 'GRANT %I TO', 'OWNED BY', 'pg_shdescription']) {
      assert.ok(!fast.includes(step), `${step} is not on the fast path`);
    }
    const full = block.slice(block.indexOf('\n  IF u IS NOT NULL THEN\n'));
    assert.match(full, /^\n {2}IF u IS NOT NULL THEN\n {4}DO \$full\$\n {4}DECLARE u oid := pg_catalog\.to_regrole\(pg_catalog\.quote_ident\('\{\{name\}\}'\)\);[^\n]*\n {4}BEGIN\n/, 'the full path is a nested block, compiled only when it runs');
    assert.match(full, /pg_shdescription[\s\S]*LIMIT 3 LOOP[\s\S]*END LOOP;\n {4}END\n {4}\$full\$;\n {2}END IF;\nEND\n\$\$;$/, 'other disarmed roles are tried again on the full path only');
    assert.equal(full.split('$full$').length, 3, 'the nested block\'s quote appears only around it');
  }
});

test('revocation skips the grant to Vault\'s role when a membership survived the revoke', () => {
  const [block] = sql.revocationStatements(writer);
  assert.match(
    block,
    /IF EXISTS \(SELECT 1 FROM pg_catalog\.pg_auth_members m WHERE m\.member = u\) THEN\n\s+RAISE WARNING 'pgvault: role % still holds a membership[^\n]*\n\s+ELSE\n\s+BEGIN\n\s+EXECUTE format\('GRANT %I TO %I'/,
  );
});

test('Vault\'s role holds the retired role only for the hand-over: lent to itself before the REASSIGN, taken back right after, in the same block', () => {
  const [block] = sql.revocationStatements(writer);
  const lines = block.split('\n');
  const at = (needle: string) => {
    const i = lines.findIndex((l) => l.includes(needle));
    assert.ok(i >= 0, needle);
    return i;
  };
  const check = at("IF NOT pg_catalog.pg_has_role(current_user, 'pgvault_local_retired', 'USAGE') THEN");
  const lend = at("EXECUTE format('GRANT %I TO %I WITH INHERIT TRUE, SET TRUE', 'pgvault_local_retired', current_user);");
  const reassign = at('REASSIGN OWNED BY %I TO pgvault_local_retired');
  const giveBack = at("IF lent THEN EXECUTE format('REVOKE %I FROM %I', 'pgvault_local_retired', current_user); END IF;");
  assert.ok(check < lend && lend < reassign && reassign < giveBack, 'lent only when not already inherited (before 16), and given back after');
  // Only a user that owns something here is handed over: the loan writes the one catalog row concurrent revocations would queue on.
  const owns = at("IF EXISTS (SELECT 1 FROM pg_catalog.pg_shdepend s WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass AND s.refobjid = u AND s.deptype = 'o'");
  assert.ok(owns < check && lines.slice(giveBack + 1, giveBack + 2).some((l) => l.trim() === 'END IF;'), 'the loan and the REASSIGN only when the user owns something');
  const indent = (i: number) => lines[i].search(/\S/);
  let begin = check;
  while (!(lines[begin].trim() === 'BEGIN' && indent(begin) < indent(check))) begin--;
  const end = lines.findIndex((l, i) => i > begin && l.trim() === 'EXCEPTION WHEN OTHERS THEN' && indent(i) === indent(begin));
  assert.ok(lines[begin - 1].includes('IF granted THEN') && giveBack < end, 'all in the hand-over block: a failure rolls the loan back with it');
  assert.ok(lines.slice(giveBack, end).some((l) => l.includes("DROP OWNED BY %I', '{{name}}'")));
  assert.doesNotMatch(sql.revocationStatements(props)[0], /pgvault_local_retired', current_user/, 'a read user hands nothing over');
});

test('when the role cannot be dropped, Vault\'s role gives up its membership of it', () => {
  const [block] = sql.revocationStatements(writer);
  assert.match(
    block,
    /EXECUTE format\('DROP ROLE %I', '\{\{name\}\}'\);\n\s+EXCEPTION WHEN OTHERS THEN\n\s+RAISE WARNING 'pgvault: role % left disarmed: %'[^\n]*\n\s+IF granted THEN\n\s+BEGIN\n\s+EXECUTE format\('REVOKE %I FROM %I', '\{\{name\}\}', current_user\);\n\s+EXCEPTION WHEN OTHERS THEN\n/,
    'a member of a disarmed writer would keep its owner rights on what the writer still owns',
  );
});

test('revocation drops what a read user owns instead of handing it over, and records its access', () => {
  const [block] = sql.revocationStatements(props);
  assert.doesNotMatch(block, /REASSIGN OWNED/);
  assert.match(block, /DROP OWNED BY %I/);
  assert.match(block, /COMMENT ON ROLE %I IS %L', '\{\{name\}\}', 'pgvault:local disarmed read'/);
});

test('the disarmed comment records the access; every form of it is recognised', () => {
  assert.equal(sql.disarmedComment('pgvault:local'), 'pgvault:local disarmed');
  assert.equal(sql.disarmedComment('pgvault:local', 'write'), 'pgvault:local disarmed write');
  assert.equal(sql.isDisarmedSql('c', 'pgvault:local'), "(c = 'pgvault:local disarmed' OR pg_catalog.starts_with(c, 'pgvault:local disarmed '))");
});

test('revocation tries again to drop a few roles the environment left disarmed', () => {
  const [block] = sql.revocationStatements(props);
  assert.match(block, /WHERE \(s\.description = 'pgvault:local disarmed' OR pg_catalog\.starts_with\(s\.description, 'pgvault:local disarmed '\)\) AND r\.rolname <> '\{\{name\}\}' AND NOT r\.rolcanlogin LIMIT 3 LOOP/);
});

test('the reaper ends sessions of dropped and disarmed roles, and of the environment\'s users past their bounds', () => {
  const s = sql.reaperStatement('pgvault:local');
  assert.match(s, /pg_terminate_backend/);
  assert.match(s, /r\.oid IS NULL/);
  assert.match(s, /s\.description = 'pgvault:local disarmed' OR pg_catalog\.starts_with\(s\.description, 'pgvault:local disarmed '\)/);
  assert.match(s, /starts_with\(s\.description, 'pgvault:local user '\)/);
  assert.match(s, /a\.state = 'active' AND a\.query_start < .*statement-ms=/);
  assert.match(s, /idle in transaction \(aborted\)'\) AND a\.state_change < .*idle-ms=/);
  assert.doesNotMatch(s, /\$\{|%\{/, 'nothing Terraform would interpolate');
  assert.throws(() => sql.reaperStatement("pgvault:x' OR true --"), /not an environment's mark/);
});

test('fails when a group role is not a safe identifier', () => {
  assert.throws(() => sql.creationStatements({ ...props, groupRole: 'x; DROP' }), /not a safe Postgres identifier/);
});

test('fails when a bound is not a positive integer', () => {
  assert.throws(() => sql.creationStatements({ ...props, connectionLimit: 0 }), /connectionLimit is 0; expected an integer from 1 to 10000/);
  assert.throws(() => sql.creationStatements({ ...props, statementTimeoutSeconds: 1.5 }), /statementTimeoutSeconds is 1.5/);
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
  const { scramVerifier } = await import('../../ops/postgres/db-bootstrap');
  const v = scramVerifier('setup-secret', Buffer.alloc(16, 1), 4096);
  assert.match(v, /^SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}:[A-Za-z0-9+/=]{44}$/);
  assert.ok(!v.includes('setup-secret'));
  assert.equal(v, scramVerifier('setup-secret', Buffer.alloc(16, 1), 4096), 'deterministic for a given salt');
  assert.notEqual(scramVerifier('setup-secret'), scramVerifier('setup-secret'), 'a fresh salt each time');
});
