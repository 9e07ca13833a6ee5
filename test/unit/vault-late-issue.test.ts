/**
 * A slow Vault (issue 21, item 6): the caller stops waiting for credentials at its deadline,
 * but the request stays open: the next attempt takes it over, and a lease that arrives while
 * nobody waits is revoked at once; a timed-out read of credentials is not sent to another
 * node. Vault is FakeVaultServer.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { LeaseManager, VaultSession } from '@pgvault/runtime';
import { FakeVaultServer } from './fakes';

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('a Vault slower than the caller\'s wait: the retry takes the open request over; every lease is revoked or in use', { timeout: 20_000 }, async () => {
  const vault = await new FakeVaultServer().listen();
  // Vault creates the user at once, and answers 600 ms later (a lock in Postgres), every time.
  vault.override = (path) => (path.startsWith('database/creds/') ? { status: 200, body: vault.newLease('database', 'ro'), delayMillis: 600 } : undefined);
  const session = new VaultSession({ address: vault.address, timeoutMillis: 200 });
  session.on('error', () => undefined);
  await session.login('approle', 'role-id', 'secret-id');
  const lease = new LeaseManager({ session, mount: 'database', role: 'ro', backoff: { initialMillis: 20, maxMillis: 50 }, startTimeoutMillis: 3000 });
  lease.on('error', () => undefined);
  await lease.start();
  await lease.rotateNow('test', { force: true }); // the first lease is revoked once replaced
  await wait(1000); // any late answer arrives
  const inUse = lease.current().leaseId;
  const leftOver = [...vault.leases].filter(([id, l]) => !l.revoked && id !== inUse).map(([id]) => id);
  assert.deepEqual(leftOver, [], 'every lease is revoked or in use');
  assert.ok(vault.leases.size <= 3, `${vault.leases.size} leases for 2 issues`);
  await lease.stop();
  await session.revokeSelf();
  await vault.close();
});

test('a read of credentials that timed out is not sent to the next node (it may have created a user)', { timeout: 20_000 }, async () => {
  const a = await new FakeVaultServer().listen();
  const b = await new FakeVaultServer(a).listen();
  const session = new VaultSession({ address: a.address, addresses: [a.address, b.address], timeoutMillis: 200 });
  session.on('error', () => undefined);
  await session.login('approle', 'role-id', 'secret-id');
  a.override = (path) => (path.startsWith('database/creds/') ? { status: 200, body: a.newLease('database', 'ro'), delayMillis: 600 } : undefined);
  const e = await session.issue('database', 'ro').catch((x) => x);
  assert.ok(e instanceof Error, 'the caller stopped waiting');
  assert.equal(b.count(/^database\/creds\//), 0, 'the other node was not asked for credentials');
  await wait(800);
  assert.deepEqual([...a.leases.values()].map((l) => l.revoked), [true], 'the late lease was revoked');
  // The next read goes to the other node (the first one may be paused), as a new request.
  const creds = await session.issue('database', 'ro');
  assert.equal(b.count(/^database\/creds\//), 1);
  assert.equal(a.leases.get(creds.leaseId)?.revoked, false);
  await session.revokeSelf();
  await a.close();
  await b.close();
});

test('an AppRole login that timed out is not sent to the next node (it may have spent a secret_id use and left a token); a refused connection is', { timeout: 20_000 }, async () => {
  const a = await new FakeVaultServer().listen();
  const b = await new FakeVaultServer(a).listen();
  const session = new VaultSession({ address: a.address, addresses: [a.address, b.address], timeoutMillis: 200 });
  session.on('error', () => undefined);
  // Node a logs in (a token is created) and answers too late.
  a.override = (path) => (path.endsWith('/login') ? { status: 200, body: { auth: { client_token: 'late-token', lease_duration: 3600, policies: [] } }, delayMillis: 600 } : undefined);
  const e = await session.login('approle', 'role-id', 'secret-id').catch((x) => x);
  assert.ok(e instanceof Error, 'the login failed on the timeout');
  assert.equal(b.count(/\/login$/), 0, 'the other node was not asked to log in');
  // A node that refuses the connection did not serve it: the login moves on.
  const c = await new FakeVaultServer().listen();
  const d = await new FakeVaultServer(c).listen();
  await c.close();
  const other = new VaultSession({ address: c.address, addresses: [c.address, d.address], timeoutMillis: 200 });
  other.on('error', () => undefined);
  await other.login('approle', 'role-id', 'secret-id');
  assert.equal(d.count(/\/login$/), 1);
  await other.revokeSelf();
  await a.close();
  await b.close();
  await d.close();
});
