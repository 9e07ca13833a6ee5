/**
 * The token keep-alive survives the wall clock stepping back while a re-login is in backoff
 * (issue 21, item 8): its timer is always armed again, and its intervals are measured with a
 * monotonic clock. Vault is FakeVaultServer on 127.0.0.1; Date.now is stubbed to step back.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { CredentialRuntime, VaultSession } from '@pgvault/runtime';
import { FakeVaultServer, fakeConfig } from './fakes';

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('a clock stepped back during a re-login backoff does not stop the keep-alive', { timeout: 20_000 }, async () => {
  const vault = await new FakeVaultServer().listen();
  vault.tokenTtlSeconds = 1;
  const s = new VaultSession({ address: vault.address });
  s.on('error', () => undefined);
  let failedLogins = 0;
  s.on('loginFailed', () => failedLogins++);
  await s.login('approle', 'role-id', 'secret-id');
  // Renewals are capped (max TTL), and logins fail: a re-login in backoff.
  let loginsUp = false;
  vault.override = (path) => {
    if (path === 'auth/token/renew-self') return { status: 200, body: { auth: { lease_duration: 0 } } };
    if (path.endsWith('/login') && !loginsUp) return { status: 503, body: { errors: ['Vault is sealed'] } };
    return undefined;
  };
  const realNow = Date.now;
  try {
    s.keepAlive({ initialMillis: 400, maxMillis: 400 });
    const deadline = realNow() + 5000;
    while (failedLogins < 1 && realNow() < deadline) await wait(20);
    assert.ok(failedLogins >= 1, 'a re-login failed');
    // The wall clock steps back an hour (NTP) during the backoff; Vault comes back.
    Date.now = () => realNow() - 3_600_000;
    loginsUp = true;
    await wait(2000);
  } finally {
    Date.now = realNow;
  }
  assert.ok(s.tokenGeneration >= 2, `logged in again after the clock stepped back (generation ${s.tokenGeneration}, ${vault.count(/\/login$/)} logins)`);
  s.stopKeepAlive();
  await vault.close();
});

test('a clock stepped forward while logins are refused does not make them fatal early', { timeout: 20_000 }, async () => {
  const vault = await new FakeVaultServer().listen();
  const rt = await CredentialRuntime.start(fakeConfig([vault.address], ['readonly']), { backoff: { initialMillis: 20, maxMillis: 50 }, loginRefusedFatalMillis: 10_000 });
  let fatal = false;
  rt.on('fatal', () => (fatal = true));
  rt.session.on('loginFailed', () => undefined);
  vault.override = (path) => (path.endsWith('/login') ? { status: 400, body: { errors: ['invalid role or secret ID'] } } : undefined);
  await rt.session.reloginNow(rt.session.tokenGeneration).catch(() => undefined);
  const realNow = Date.now;
  try {
    Date.now = () => realNow() + 3_600_000; // the wall clock steps an hour forward
    await wait(500); // the keep-alive retries the login meanwhile
  } finally {
    Date.now = realNow;
  }
  assert.equal(fatal, false, 'refused for 0.5 s, not an hour');
  assert.equal(rt.vaultLogin, 'login refused');
  await rt.close({ timeoutMillis: 1000 });
  await vault.close();
});
