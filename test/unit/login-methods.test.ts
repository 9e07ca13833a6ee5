import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { appConfigFromOutputs, CredentialRuntime, jwtLogin, loginMethod, VaultSession, wrappedSecretIdLogin, type DeployOutputs } from '@pgvault/runtime';
import { FakeVaultClient, httpError } from './fakes';

const T = { timeout: 10_000 };
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-login-'));
const file = (name: string, content: string) => {
  const f = path.join(dir, name);
  fs.writeFileSync(f, content, { mode: 0o600 });
  return f;
};
const jwt = (n: number) => `eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ${n}In0.c2ln${n}`;
const okAuth = (token: string) => ({ auth: { client_token: token, lease_duration: 60, policies: ['pgvault-app'] } });

function session(client: FakeVaultClient): VaultSession {
  const s = new VaultSession({ address: 'http://127.0.0.1:1' });
  (s as any).client = client;
  s.on('error', () => undefined);
  s.on('loginFailed', () => undefined);
  return s;
}

/**
 * A fake of Vault's response wrapping: each wrapping token unwraps once; `path` is its creation path.
 * Named as a fake: the real Vault is exercised by test/e2e/16-secret-zero.
 */
class FakeWrapping {
  readonly tokens = new Map<string, { path: string; used: boolean; secretId: string }>();
  readonly seen: string[] = [];
  wrap(token: string, secretId: string, creationPath = 'auth/approle/role/pgvault-app/secret-id') {
    this.tokens.set(token, { path: creationPath, used: false, secretId });
  }
  readonly client = new FakeVaultClient((p, body) => {
    this.seen.push(p);
    if (p === 'sys/wrapping/lookup') {
      const t = this.tokens.get(body.token);
      return t && !t.used ? { data: { creation_path: t.path, creation_ttl: 60 } } : httpError(400, 'wrapping token is not valid or does not exist');
    }
    if (p === 'sys/wrapping/unwrap') {
      const t = this.tokens.get(this.headerToken!);
      if (!t || t.used) return httpError(400, 'wrapping token is not valid or does not exist');
      t.used = true;
      return { data: { secret_id: t.secretId, secret_id_accessor: 'acc' } };
    }
    if (p.endsWith('/login')) return body.secret_id.startsWith('sid-') ? okAuth(`tok-${body.secret_id}`) : httpError(400, 'invalid role or secret ID');
    return {};
  });
  headerToken?: string;
  constructor() {
    const write = this.client.write.bind(this.client);
    this.client.write = async (p: string, body: any, o?: any) => {
      this.headerToken = o?.headers?.['X-Vault-Token'];
      return write(p, body);
    };
  }
}

const wrapped = (f: string) => wrappedSecretIdLogin({ mount: 'approle', roleId: 'role-id', roleName: 'pgvault-app', file: f });

test('JWT login: the file is read again at every login (a rotated token is sent), and a refused JWT is not sent twice', T, async () => {
  const sent: string[] = [];
  let accept = new Set([jwt(1), jwt(2)]);
  const client = new FakeVaultClient((p, body) => {
    if (!p.endsWith('/login')) return {};
    assert.equal(p, 'auth/jwt/login');
    assert.equal(body.role, 'pgvault-app');
    sent.push(body.jwt);
    return accept.has(body.jwt) ? okAuth('t') : httpError(400, 'error validating token: invalid audience (aud) claim');
  });
  const s = session(client);
  const f = file('jwt', jwt(1) + '\n');
  await s.loginWith(jwtLogin({ mount: 'jwt', role: 'pgvault-app', file: f }));
  fs.writeFileSync(f, jwt(2));
  await s.reloginNow();
  assert.deepEqual(sent, [jwt(1), jwt(2)]);
  fs.writeFileSync(f, jwt(3));
  await assert.rejects(s.reloginNow(), /invalid audience/);
  await new Promise((r) => setTimeout(r, 1200));
  await assert.rejects(s.reloginNow(), (e: any) => e.code === 'APP_JWT_REFUSED' && !e.message.includes(jwt(3)));
  assert.deepEqual(sent, [jwt(1), jwt(2), jwt(3)], 'the refused JWT went to Vault once');
  s.stopKeepAlive();
});

test('JWT login: a file that holds no JWT is a clear error naming the setting and file, not the content', T, async () => {
  const s = session(new FakeVaultClient(() => okAuth('t')));
  const f = file('not-a-jwt', 'hunter2 is not a token');
  await assert.rejects(s.loginWith(jwtLogin({ mount: 'jwt', role: 'r', file: f })), (e: any) => e.code === 'APP_JWT' && e.message.includes('PGVAULT_JWT_FILE') && e.message.includes(f) && !e.message.includes('hunter2'));
  await assert.rejects(s.loginWith(jwtLogin({ mount: 'jwt', role: 'r', file: path.join(dir, 'missing') })), (e: any) => e.code === 'APP_JWT' && /ENOENT/.test(e.message));
});

test('wrapped secret_id: looked up, then unwrapped with the wrapping token, then used; never in a message', T, async () => {
  const v = new FakeWrapping();
  v.wrap('hvs.wrap-1', 'sid-1');
  const s = session(v.client);
  await s.loginWith(wrapped(file('w1', 'hvs.wrap-1\n')));
  assert.deepEqual(v.seen, ['sys/wrapping/lookup', 'sys/wrapping/unwrap', 'auth/approle/login']);
  assert.equal(s.tokenGeneration, 1);
});

test('wrapped secret_id: a token used or expired stops the start with the theft message; the same file again is "waiting", not theft', T, async () => {
  const v = new FakeWrapping();
  v.wrap('hvs.wrap-2', 'sid-2');
  const f = file('w2', 'hvs.wrap-2');
  const first = session(v.client);
  await first.loginWith(wrapped(f));
  // A second process given the same file: Vault says "not valid" (it cannot tell used from expired).
  const second = session(v.client);
  await assert.rejects(second.loginWith(wrapped(f)), (e: any) => e.code === 'APP_WRAPPED_INVALID' && e.message.includes('used or expired; if not by you, it may have been stolen; check the audit log for its accessor') && !e.message.includes('hvs.wrap-2'));
  // The first process at its re-login: the file still holds the token it used itself.
  await assert.rejects(first.reloginNow(), (e: any) => e.code === 'APP_WRAPPED_WAITING' && /waiting for a new file/.test(e.message));
  // The orchestrator writes a new one: the next login uses it.
  v.wrap('hvs.wrap-3', 'sid-3');
  fs.writeFileSync(f, 'hvs.wrap-3');
  await new Promise((r) => setTimeout(r, 1200));
  await first.reloginNow();
  assert.equal(first.tokenGeneration, 2);
  first.stopKeepAlive();
});

test('wrapped secret_id: a token made at another path is refused before it is unwrapped', T, async () => {
  const v = new FakeWrapping();
  v.wrap('hvs.other', 'sid-x', 'sys/wrapping/wrap');
  const s = session(v.client);
  await assert.rejects(s.loginWith(wrapped(file('w3', 'hvs.other'))), (e: any) => e.code === 'APP_WRAPPED_PATH' && e.message.includes('"sys/wrapping/wrap"') && e.message.includes('auth/approle/role/pgvault-app/secret-id'));
  assert.equal(v.tokens.get('hvs.other')!.used, false, 'not unwrapped');
  assert.deepEqual(v.seen, ['sys/wrapping/lookup']);
});

const outputs: DeployOutputs = {
  vault_address: 'http://127.0.0.1:1', postgres_host: '127.0.0.1', postgres_port: 5432, postgres_database: 'app', postgres_sslmode: 'disable',
  mount_path: 'database', roles: ['readonly'], approle_mount: 'approle', approle_role_name: 'pgvault-app', approle_role_id: 'rid', jwt_mount: 'jwt', jwt_role_name: 'pgvault-app',
};

test('the runtime picks its login method from the environment: PGVAULT_AUTH=jwt, a wrapped file, else AppRole', T, () => {
  const f = file('jwt-env', jwt(1));
  assert.match(loginMethod(appConfigFromOutputs(outputs, { env: { PGVAULT_AUTH: 'jwt', PGVAULT_JWT_FILE: f } })).name, /^JWT login/);
  assert.match(loginMethod(appConfigFromOutputs(outputs, { env: { PGVAULT_SECRET_ID_WRAPPED_FILE: f } })).name, /wrapped/);
  assert.equal(loginMethod(appConfigFromOutputs(outputs, { env: { PGVAULT_SECRET_ID: 's' } })).name, 'AppRole login');
  assert.throws(() => appConfigFromOutputs(outputs, { env: { PGVAULT_AUTH: 'kerberos' } }), (e: any) => e.code === 'APP_AUTH' && e.message.includes('"kerberos"'));
  assert.throws(() => appConfigFromOutputs(outputs, { env: { PGVAULT_AUTH: 'jwt' } }), (e: any) => e.code === 'APP_JWT' && e.message.includes('PGVAULT_JWT_FILE'));
  const { jwt_mount, jwt_role_name, ...noJwt } = outputs;
  assert.throws(() => appConfigFromOutputs(noJwt, { env: { PGVAULT_AUTH: 'jwt', PGVAULT_JWT_FILE: f } }), (e: any) => e.code === 'APP_JWT' && e.message.includes('appAccess.jwt'));
  assert.throws(() => appConfigFromOutputs(outputs, { env: { PGVAULT_SECRET_ID_WRAPPED_FILE: f, PGVAULT_SECRET_ID: 's' } }), (e: any) => e.message.includes('unset PGVAULT_SECRET_ID'));
});

test('a refused JWT fails the start at once, with one line naming the file and what to check', T, async () => {
  const f = file('jwt-bad', jwt(9));
  const cfg = appConfigFromOutputs(outputs, { env: { PGVAULT_AUTH: 'jwt', PGVAULT_JWT_FILE: f } });
  const started = Date.now();
  // Nothing listens on port 1: use a real refusal from a fake client instead, through the session the runtime makes.
  const proto = VaultSession.prototype as any;
  const orig = proto.loginWith;
  proto.loginWith = async function (this: any, m: any) {
    this.client = new FakeVaultClient(() => httpError(400, 'error validating token: invalid subject (sub) claim'));
    return orig.call(this, m);
  };
  try {
    await assert.rejects(CredentialRuntime.start(cfg, { startTimeoutMillis: 5000 }), (e: any) => {
      assert.equal(e.code, 'VAULT_LOGIN_REFUSED');
      assert.ok(!e.message.includes('\n'), 'one line');
      assert.match(e.message, /JWT login \(role pgvault-app\).*invalid subject.*PGVAULT_JWT_FILE/);
      assert.ok(!e.message.includes(jwt(9)));
      return true;
    });
  } finally {
    proto.loginWith = orig;
  }
  assert.ok(Date.now() - started < 1000, 'no retries');
});
