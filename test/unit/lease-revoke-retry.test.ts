/**
 * A failed revocation of a retired lease is retried with backoff, a bounded number of
 * times, and a lease waiting for its revocation is never renewed (issue 21, item 7).
 * Vault is FakeVaultSession; the real one is exercised by test/faults.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { LeaseManager, type DatabaseCredentials } from '@pgvault/runtime';
import { FakeVaultSession, vaultError } from './fakes';

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function rotated(fake: FakeVaultSession, opts: { revokeRetries?: number } = {}) {
  const m = new LeaseManager({ session: fake, mount: 'database', role: 'ro', jitter: 0, backoff: { initialMillis: 20, maxMillis: 80 }, ...opts });
  m.on('error', () => undefined);
  let previous: DatabaseCredentials | undefined;
  m.on('rotated', (prev) => (previous = prev));
  await m.start();
  await m.rotateNow('test', { force: true });
  assert.ok(previous, 'rotated');
  return { m, previous: previous! };
}

test('a revocation that fails during a blip is retried until it succeeds', { timeout: 10_000 }, async () => {
  const fake = new FakeVaultSession(60);
  const { m, previous } = await rotated(fake);
  let failures = 3;
  fake.revokeError = () => (failures-- > 0 ? vaultError(undefined, 'connect ECONNREFUSED', 'sys/leases/revoke') : undefined);
  await m.retire(previous);
  await wait(1500);
  assert.ok(fake.revoked.includes(previous.leaseId), `revoked after ${fake.revokeAttempts.length} attempts`);
  assert.equal(fake.revokeAttempts.filter((id) => id === previous.leaseId).length, 4);
  assert.equal(m.heldCount, 1, 'only the current lease is held');
  await m.stop();
});

test('revocation retries are bounded, and a lease waiting for its revocation is never renewed', { timeout: 10_000 }, async () => {
  const fake = new FakeVaultSession(1);
  const { m, previous } = await rotated(fake, { revokeRetries: 3 });
  fake.revokeError = () => vaultError(undefined, 'connect ECONNREFUSED', 'sys/leases/revoke');
  const renewalsBefore = fake.renewals.filter((id) => id === previous.leaseId).length;
  await m.retire(previous);
  await wait(1500);
  assert.equal(fake.revokeAttempts.filter((id) => id === previous.leaseId).length, 4, 'one attempt and 3 retries');
  assert.equal(fake.renewals.filter((id) => id === previous.leaseId).length, renewalsBefore, 'not renewed while waiting for revocation');
  fake.revokeError = undefined;
  await m.stop();
  assert.ok(fake.revoked.includes(previous.leaseId), 'stop() still tries it');
});
