/**
 * The status report's logic (ops/status/status-report.ts): which facts are problems and what each
 * says to do, the --json document's stable top level, and the one-screen text. The facts are
 * written here by hand; test/e2e/17-status gathers real ones.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { problemsOf, statusJson, statusText, StatusFacts } from '../../ops/status/status-report';

const NOW = Date.parse('2026-12-02T12:00:00Z');

function healthy(over: Partial<StatusFacts> = {}): StatusFacts {
  return {
    environment: 'ha',
    deployed: true,
    mountPath: 'database',
    replicaLagWindowSeconds: 3,
    vaultCluster: true,
    vault: [0, 1, 2].map((i) => ({
      address: `https://127.0.0.1:1823${i}`,
      reachable: true,
      initialized: true,
      sealed: false,
      haRole: i === 0 ? ('leader' as const) : ('standby' as const),
      version: '2.7.2',
      raft: { nodeId: `pgvault-ha-vault-${i}`, status: i === 0 ? 'leader' : 'voter', healthy: true, lastContact: '0s' },
    })),
    postgres: [
      { endpoint: '127.0.0.1:15470', expectedRole: 'primary', reachable: true, role: 'primary', version: '17.7', streamingReplicas: 1 },
      { endpoint: '127.0.0.1:15471', expectedRole: 'replica', reachable: true, role: 'replica', version: '17.7', replayLagSeconds: 0, replayLagBytes: 0 },
    ],
    roles: { readonly: { liveLeases: 2, earliestExpiry: '2026-12-02T12:40:00.000Z' }, readwrite: { liveLeases: 0 } },
    certificates: [{ file: '.local/ha/tls/ca.pem', subject: 'CN=pgvault-ha CA', expiresAt: '2029-03-06T12:00:00.000Z', daysLeft: 824, isCa: true }],
    state: { backend: 'local', locks: [] },
    now: NOW,
    ...over,
  };
}

test('a healthy environment has no problem, and its JSON has exactly the stable top level with ok true', () => {
  const f = healthy();
  assert.deepEqual(problemsOf(f), []);
  const j = statusJson(f, []);
  assert.deepEqual(Object.keys(j).sort(), ['certificates', 'environment', 'ok', 'postgres', 'problems', 'roles', 'state', 'vault']);
  assert.equal(j.ok, true);
  assert.deepEqual(j.vault[0], { address: 'https://127.0.0.1:18230', sealed: false, haRole: 'leader', version: '2.7.2', reachable: true, raft: f.vault[0].raft });
  assert.deepEqual(j.postgres[1], { endpoint: '127.0.0.1:15471', role: 'replica', version: '17.7', replayLagSeconds: 0, replayLagBytes: 0, reachable: true });
  assert.ok(!('replayLagSeconds' in j.postgres[0]), 'a primary has no replay lag');
  assert.deepEqual(j.roles, { readonly: { liveLeases: 2, earliestExpiry: '2026-12-02T12:40:00.000Z' }, readwrite: { liveLeases: 0 } });
  assert.deepEqual(j.certificates, [{ file: '.local/ha/tls/ca.pem', expiresAt: '2029-03-06T12:00:00.000Z', daysLeft: 824 }]);
  assert.deepEqual(j.state, { backend: 'local', locked: false });
});

test('fails when a node is sealed, one does not answer, a Raft peer is unhealthy: one line each, saying what to do', () => {
  const f = healthy();
  const vault = [
    f.vault[0],
    { ...f.vault[1], sealed: true, haRole: undefined, raft: { ...f.vault[1].raft!, healthy: false, lastContact: '41s' } },
    { address: f.vault[2].address, reachable: false, error: 'no answer within 5 s' },
  ];
  const p = problemsOf(healthy({ vault }));
  assert.equal(p.length, 3, p.join('\n'));
  assert.match(p[0], /^Vault https:\/\/127\.0\.0\.1:18231 is sealed: .*restart/);
  assert.match(p[1], /^Raft peer pgvault-ha-vault-1 .* unhealthy \(last contact 41s\): check/);
  assert.match(p[2], /^Vault https:\/\/127\.0\.0\.1:18232 does not answer \(no answer within 5 s\): check its container/);
  assert.equal(statusJson(healthy({ vault }), p).ok, false);
});

test('fails when the cluster has no leader', () => {
  const f = healthy();
  const p = problemsOf(healthy({ vault: f.vault.map((v) => ({ ...v, haRole: 'standby' as const })) }));
  assert.deepEqual(p, ['the Vault cluster has no leader: a majority of its nodes must run and reach each other; start the stopped nodes']);
});

test('a dev server (no HA) is not a cluster without a leader', () => {
  const p = problemsOf(healthy({ vaultCluster: false, vault: [{ address: 'http://127.0.0.1:18200', reachable: true, initialized: true, sealed: false, haRole: 'single', version: '2.7.2' }] }));
  assert.deepEqual(p, []);
});

test('fails when the replica lags past the runtime\'s lag window, is promoted, or does not stream', () => {
  const f = healthy();
  const lagging = problemsOf(healthy({ postgres: [f.postgres[0], { ...f.postgres[1], replayLagSeconds: 12.34 }] }));
  assert.equal(lagging.length, 1);
  assert.match(lagging[0], /replica 127\.0\.0\.1:15471 replays 12\.3 s behind, past the runtime's lag window \(3 s\)/);
  assert.deepEqual(problemsOf(healthy({ postgres: [f.postgres[0], { ...f.postgres[1], replayLagSeconds: 2.9 }] })), [], 'within the window');
  const promoted = problemsOf(healthy({ postgres: [{ ...f.postgres[0], streamingReplicas: 0 }, { ...f.postgres[1], role: 'primary', replayLagSeconds: undefined }] }));
  assert.equal(promoted.length, 2, promoted.join('\n'));
  assert.match(promoted[0], /^no replica streams from the primary 127\.0\.0\.1:15470/);
  assert.match(promoted[1], /^Postgres 127\.0\.0\.1:15471 is a primary, expected the replica: the replica was promoted/);
});

test('fails when a certificate expires within 30 days or has expired, with the fix for a server certificate and for the CA', () => {
  const certs = [
    { file: '.local/ha/vault/node-0/tls.pem', subject: 'CN=pgvault-ha-vault-0', expiresAt: '2026-12-20T00:00:00.000Z', daysLeft: 17, isCa: false },
    { file: '.local/ha/tls/ca.pem', subject: 'CN=pgvault-ha CA', expiresAt: '2026-11-30T00:00:00.000Z', daysLeft: -3, isCa: true },
    { file: '.local/ha/postgres/primary/tls.pem', subject: 'CN=pgvault-ha-postgres', expiresAt: '2027-02-01T00:00:00.000Z', daysLeft: 60, isCa: false },
  ];
  const p = problemsOf(healthy({ certificates: certs }));
  assert.equal(p.length, 2, p.join('\n'));
  assert.match(p[0], /node-0\/tls\.pem .* expires in 17 days .*remove it and its key .*npm run deploy -- ha/);
  assert.match(p[1], /ca\.pem .* expired on 2026-11-30.*plan a new CA/);
  assert.deepEqual(problemsOf(healthy({ certificates: certs }), { certificateDays: 10 }).length, 1, 'the threshold is a setting');
});

test('a state lock is shown; held past 15 minutes it is a problem naming the session to end', () => {
  const recent = { stack: 'ha-secrets', holder: 'pgvault deploy ha pid 42 root@box as postgres', pid: 4242, since: new Date(NOW - 60_000).toISOString() };
  const f = healthy({ state: { backend: 'pg', locks: [recent] } });
  assert.deepEqual(problemsOf(f), [], 'a deploy under way');
  assert.deepEqual(statusJson(f, []).state, { backend: 'pg', locked: true, holder: 'pgvault deploy ha pid 42 root@box as postgres (ha-secrets)' });
  const stale = problemsOf(healthy({ state: { backend: 'pg', locks: [{ ...recent, since: new Date(NOW - 40 * 60_000).toISOString() }] } }));
  assert.equal(stale.length, 1);
  assert.match(stale[0], /held for 40 min by "pgvault deploy ha pid 42.*pg_terminate_backend\(4242\)/);
});

test('not deployed is one problem, not one per part that cannot answer', () => {
  const p = problemsOf(healthy({ deployed: false, vault: [{ address: 'http://127.0.0.1:18200', reachable: false, error: 'ECONNREFUSED' }] }));
  assert.deepEqual(p, ['ha is not deployed (no .local/ha/outputs.json): run npm run deploy -- ha']);
});

test('the same lease error for every role is one line', () => {
  const p = problemsOf(healthy({ roles: { readonly: { liveLeases: 0, error: 'Vault GET answered 403' }, readwrite: { liveLeases: 0, error: 'Vault GET answered 403' } } }));
  assert.equal(p.length, 1);
  assert.match(p[0], /^the leases of roles readonly, readwrite could not be listed \(Vault GET answered 403\)/);
});

test('the text shows every section on one screen, and the problems last', () => {
  const f = healthy();
  const text = statusText(f, ['something wrong: do this']);
  const lines = text.trimEnd().split('\n');
  assert.ok(lines.length <= 40, `one screen (${lines.length} lines)`);
  assert.equal(lines[0], 'Environment ha: 1 problem');
  for (const s of ['Vault', 'Postgres', 'Leases (database/creds/<role>)', 'Certificates', 'State', 'Problems']) assert.ok(lines.includes(s), `section ${s}`);
  assert.match(text, /https:\/\/127\.0\.0\.1:18230 +unsealed +leader +2\.7\.2 +raft leader healthy/);
  assert.match(text, /127\.0\.0\.1:15471 +replica +17\.7 +replay lag 0\.0 s, 0 B/);
  assert.match(text, /readonly +2 live +earliest expiry 2026-12-02T12:40:00\.000Z \(in 40 min\)/);
  assert.match(text, /\.local\/ha\/tls\/ca\.pem +824 days left/);
  assert.match(text, /local +not locked/);
  assert.equal(lines[lines.length - 1], '  - something wrong: do this');
  assert.match(statusText(f, []), /^Environment ha: OK$/m);
});
