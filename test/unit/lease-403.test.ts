/**
 * A 403 on one role's creds path (an edited policy) is that path's error: it is retried with
 * backoff, without logging in again and without rotating the other roles; a login happens only
 * when the token itself is refused, and a superseded token is revoked once its leases moved
 * (issue 21, item 5). Vault is FakeVaultServer on 127.0.0.1; Postgres is not reached.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { CredentialRuntime } from '@pgvault/runtime';
import { FakeVaultServer, fakeConfig } from './fakes';

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));
const backoff = { initialMillis: 20, maxMillis: 100 };

test('a 403 on one role\'s path does not log in again nor rotate the healthy role', { timeout: 20_000 }, async () => {
  const vault = await new FakeVaultServer().listen();
  const rt = await CredentialRuntime.start(fakeConfig([vault.address], ['readonly', 'readwrite']), { backoff });
  let healthyRotations = 0;
  rt.lease('readonly').on('rotated', () => healthyRotations++);
  vault.override = (path) => (path === 'database/creds/readwrite' ? { status: 403, body: { errors: ['1 error occurred:\n\t* permission denied\n\n'] } } : undefined);
  const rotation = rt.lease('readwrite').rotateNow('test', { force: true });
  await wait(1500);
  const creds403 = vault.count(/^database\/creds\/readwrite$/);
  assert.ok(creds403 >= 4, `the path was retried with backoff (${creds403} attempts)`);
  assert.equal(vault.count(/\/login$/), 1, 'no login besides the first');
  assert.equal(healthyRotations, 0, 'the healthy role did not rotate');
  assert.equal(rt.pool('readonly').rotations, 0);
  vault.override = undefined; // the policy is fixed
  await rotation;
  await rt.close({ timeoutMillis: 2000 });
  await vault.close();
});

test('a refused token leads to one login; a superseded token is revoked once its leases moved', { timeout: 20_000 }, async () => {
  const vault = await new FakeVaultServer().listen();
  const rt = await CredentialRuntime.start(fakeConfig([vault.address], ['readonly', 'readwrite']), { backoff });
  // The first token reaches its max TTL: renewals are capped, so the runtime logs in again.
  vault.override = (path, token) => (path === 'auth/token/renew-self' && token === 'fake-token-1' ? { status: 200, body: { auth: { lease_duration: 1 } } } : undefined);
  await rt.session.renewSelf().catch(() => undefined);
  await rt.session.reloginNow(1);
  await wait(1000);
  assert.equal(vault.count(/\/login$/), 2);
  for (const role of ['readonly', 'readwrite']) assert.equal(rt.lease(role).current().tokenGeneration, 2, `${role} moved to the new token`);
  assert.equal(vault.tokens.get('fake-token-1')?.revoked, true, 'the superseded token was revoked once its leases moved');
  const liveOld = [...vault.leases].filter(([, l]) => !l.revoked).length;
  assert.equal(liveOld, 2, 'only the two current leases are live');
  await rt.close({ timeoutMillis: 2000 });
  await vault.close();
});
