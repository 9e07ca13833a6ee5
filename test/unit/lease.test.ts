/**
 * Unit tests of the lease manager's and backoff's pure logic, against a small fake
 * Vault session (FakeVaultSession). The real Vault is exercised by test/faults.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { backoffDelay, renewalDelayMillis, LeaseManager, leaseGone, VaultRequestError, type DatabaseCredentials } from '@pgvault/runtime';
import { FakeVaultSession } from './fakes';

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

function manager(fake: FakeVaultSession, maxTtlSeconds?: number): LeaseManager {
  return new LeaseManager({ session: fake, mount: 'database', role: 'ro', maxTtlSeconds, jitter: 0, backoff: { initialMillis: 10, maxMillis: 50 } });
}

test('backoff grows, stays bounded and never reaches zero', () => {
  const delays = [0, 1, 2, 3, 10, 50].map((a) => backoffDelay(a, { initialMillis: 100, maxMillis: 1000 }, () => 1));
  assert.deepEqual(delays, [100, 200, 400, 800, 1000, 1000]);
  assert.equal(backoffDelay(3, { initialMillis: 100, maxMillis: 1000 }, () => 0), 400);
});

test('renewal happens at about two thirds of the TTL, with jitter', () => {
  assert.equal(renewalDelayMillis(30, 2 / 3, 0), 20_000);
  assert.equal(renewalDelayMillis(30, 2 / 3, 0.1, () => 1), 23_000);
  assert.equal(renewalDelayMillis(30, 2 / 3, 0.1, () => 0), 17_000);
});

test('renews the lease before it expires', async () => {
  const fake = new FakeVaultSession(1);
  fake.renewAnswer = () => 1;
  const m = manager(fake);
  const renewed: number[] = [];
  m.on('renewed', (_c, d) => renewed.push(d));
  await m.start();
  await wait(800);
  await m.stop();
  assert.equal(fake.issued, 1);
  assert.ok(renewed.length >= 1, 'renewed at ~0.67 s');
  assert.deepEqual(fake.revoked, ['database/creds/ro/1'], 'stop() revokes the lease');
});

test('rotates when renewal is capped by the max TTL, and revokes the old lease only when retired', async () => {
  const fake = new FakeVaultSession(1);
  fake.renewAnswer = () => 0.4; // capped
  const m = manager(fake);
  const rotated: string[] = [];
  m.on('rotated', (prev, cur) => rotated.push(`${prev.username}->${cur.username}`));
  await m.start();
  await wait(1300);
  assert.ok(rotated.length >= 1, `rotated: ${rotated}`);
  assert.equal(rotated[0], 'v-ro-1->v-ro-2');
  assert.ok(!fake.revoked.includes('database/creds/ro/1'), 'the old lease is held until retired');
  const first = { leaseId: 'database/creds/ro/1' } as DatabaseCredentials;
  await m.retire(first); // not the same object: ignored
  await m.stop();
  assert.ok(fake.revoked.includes('database/creds/ro/1'), 'stop() revokes every held lease');
});

test('issues new credentials when the lease was revoked behind its back', async () => {
  const fake = new FakeVaultSession(1);
  fake.renewAnswer = () => {
    throw new VaultRequestError('VAULT_HTTP', 'Vault sys/leases/renew failed (HTTP 400: lease not found)', 'sys/leases/renew', 400);
  };
  const m = manager(fake);
  await m.start();
  await wait(900);
  assert.ok(fake.issued >= 2);
  assert.notEqual(m.current().username, 'v-ro-1');
  await m.stop();
});

test('rotates before the max TTL when the next renewal would pass it', async () => {
  const fake = new FakeVaultSession(2);
  const m = manager(fake, 2);
  await m.start();
  await wait(1500);
  assert.ok(fake.issued >= 2, 'rotated instead of renewing past the max TTL');
  assert.equal(fake.renewals.length, 0);
  await m.stop();
});

test('rotateNow is deduplicated', async () => {
  const fake = new FakeVaultSession(60);
  const m = manager(fake);
  await m.start();
  await wait(1100);
  const [a, b] = await Promise.all([m.rotateNow('x'), m.rotateNow('y')]);
  assert.equal(a, b);
  assert.equal(fake.issued, 2);
  await m.stop();
});

test('leaseGone recognises Vault saying the lease is gone, and nothing else', () => {
  assert.equal(leaseGone(new VaultRequestError('VAULT_HTTP', 'x (HTTP 400: lease not found)', 'p', 400)), true);
  assert.equal(leaseGone(new VaultRequestError('VAULT_HTTP', 'x (HTTP 500: internal)', 'p', 500)), false);
  assert.equal(leaseGone(new VaultRequestError('VAULT_UNREACHABLE', 'x', 'p')), false);
});
