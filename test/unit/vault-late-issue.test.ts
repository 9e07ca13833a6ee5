/**
 * A slow Vault (issue 21, item 6): the caller stops waiting for credentials at its deadline,
 * but the request stays open, and a lease that arrives after the caller gave up is revoked at
 * once; a timed-out read of credentials is not sent to another node. Vault is FakeVaultServer.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { LeaseManager, VaultSession } from '@pgvault/runtime';
import { FakeVaultServer } from './fakes';

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('leases that a slow Vault hands out after the caller gave up are revoked; every lease is revoked or in use', { timeout: 20_000 }, async () => {
  const vault = await new FakeVaultServer().listen();
  let slow = 3;
  vault.override = (path) => {
    if (!path.startsWith('database/creds/') || slow-- <= 0) return undefined;
    // Vault creates the user at once, and answers 600 ms later (a lock in Postgres).
    return { status: 200, body: vault.newLease('database', 'ro'), delayMillis: 600 };
  };
  const session = new VaultSession({ address: vault.address, timeoutMillis: 200 });
  session.on('error', () => undefined);
  await session.login('approle', 'role-id', 'secret-id');
  const lease = new LeaseManager({ session, mount: 'database', role: 'ro', backoff: { initialMillis: 20, maxMillis: 50 } });
  lease.on('error', () => undefined);
  const current = await lease.start();
  await wait(1000); // the late answers arrive
  const leftOver = [...vault.leases].filter(([id, l]) => !l.revoked && id !== current.leaseId).map(([id]) => id);
  assert.ok(vault.leases.size >= 4, `${vault.leases.size} leases handed out`);
  assert.deepEqual(leftOver, [], 'every lease is revoked or in use');
  await lease.stop();
  await session.revokeSelf();
  await vault.close();
});

test('a read of credentials that timed out is not sent to the next node (it may have created a user)', { timeout: 20_000 }, async () => {
  const a = await new FakeVaultServer().listen();
  const b = await new FakeVaultServer().listen();
  const session = new VaultSession({ address: a.address, addresses: [a.address, b.address], timeoutMillis: 200 });
  session.on('error', () => undefined);
  await session.login('approle', 'role-id', 'secret-id');
  a.override = (path) => (path.startsWith('database/creds/') ? { status: 200, body: a.newLease('database', 'ro'), delayMillis: 600 } : undefined);
  const e = await session.issue('database', 'ro').catch((x) => x);
  assert.ok(e instanceof Error, 'the caller stopped waiting');
  assert.equal(b.count(/creds/), 0, 'the other node was not asked for credentials');
  await wait(800);
  assert.deepEqual([...a.leases.values()].map((l) => l.revoked), [true], 'the late lease was revoked');
  await session.revokeSelf();
  await a.close();
  await b.close();
});
