import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Testing } from 'cdktf';
import { resolveEnvironment } from '../../stacks/config';
import { SecretsStack } from '../../stacks/secrets-stack';

const T = { timeout: 20_000 };
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-jwtcfg-'));
const pub = path.join(dir, 'issuer.pem');
fs.writeFileSync(pub, crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }));

const base = (appAccess: unknown) => ({
  infrastructure: 'existing',
  postgres: { host: 'db', adminPasswordFile: 'x' },
  vault: { address: 'https://vault:8200' },
  roles: { readonly: { access: 'read', defaultTtlSeconds: 60, maxTtlSeconds: 120 } },
  appAccess,
});
const jwt = { boundAudiences: ['pgvault'], boundSubject: 'system:serviceaccount:shop:api' };

test('appAccess.jwt takes exactly one of publicKeyFiles, jwksUrl and oidcDiscoveryUrl', T, () => {
  assert.throws(() => resolveEnvironment('e', 'e.json', base({ jwt })), (e: any) => e.code === 'ENV_SCHEMA' && /exactly one of .*none is given/.test(e.message));
  assert.throws(
    () => resolveEnvironment('e', 'e.json', base({ jwt: { ...jwt, publicKeyFiles: [pub], jwksUrl: 'https://issuer/jwks' } })),
    (e: any) => /exactly one of .*2 are given: publicKeyFiles, jwksUrl/.test(e.message),
  );
  const ok = resolveEnvironment('e', 'e.json', base({ jwt: { ...jwt, oidcDiscoveryUrl: 'https://issuer' } }));
  assert.equal(ok.appAccess.jwt?.mount, 'jwt');
  assert.equal(ok.appAccess.jwt?.userClaim, 'sub');
  assert.equal(ok.appAccess.secretIdNumUses, 0);
  assert.throws(() => resolveEnvironment('e', 'e.json', base({ secretIdBoundCidrs: ['not a cidr'] })), (e: any) => e.message.includes('appAccess.secretIdBoundCidrs.0'));
});

test('the secrets stack enables a jwt mount with the keys and a role bound to audience and subject, with the app policy and token TTLs', T, () => {
  const env = resolveEnvironment('e', 'e.json', base({ tokenTtlSeconds: 30, tokenMaxTtlSeconds: 90, secretIdNumUses: 1, secretIdBoundCidrs: ['127.0.0.1/32'], tokenBoundCidrs: ['127.0.0.1/32'], jwt: { ...jwt, publicKeyFiles: [pub] } }));
  const doc = JSON.parse(Testing.synth(new SecretsStack(Testing.app(), 'e-secrets', { env })));
  const backend = Object.values(doc.resource.vault_jwt_auth_backend)[0] as any;
  assert.equal(backend.type, 'jwt');
  assert.deepEqual(backend.jwt_validation_pubkeys, [fs.readFileSync(pub, 'utf8').trim() + '\n']);
  const role = Object.values(doc.resource.vault_jwt_auth_backend_role)[0] as any;
  assert.deepEqual(role.bound_audiences, ['pgvault']);
  assert.equal(role.bound_subject, 'system:serviceaccount:shop:api');
  assert.equal(role.role_type, 'jwt');
  assert.equal(role.token_ttl, 30);
  assert.equal(role.token_max_ttl, 90);
  assert.equal(role.token_no_default_policy, true);
  assert.deepEqual(role.token_bound_cidrs, ['127.0.0.1/32']);
  const approle = Object.values(doc.resource.vault_approle_auth_backend_role)[0] as any;
  assert.equal(approle.secret_id_num_uses, 1);
  assert.deepEqual(approle.secret_id_bound_cidrs, ['127.0.0.1/32']);
  assert.ok(doc.output.jwt_mount && doc.output.jwt_role_name);
  assert.ok(!/PRIVATE KEY/.test(JSON.stringify(doc)));
});

test('a private key named as a public key file is refused at synth', T, () => {
  const priv = path.join(dir, 'private.pem');
  fs.writeFileSync(priv, crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const env = resolveEnvironment('e', 'e.json', base({ jwt: { ...jwt, publicKeyFiles: [priv] } }));
  assert.throws(() => new SecretsStack(Testing.app(), 'e-secrets', { env }), (e: any) => e.code === 'ENV_SCHEMA' && e.message.includes('never a private key'));
});

test('secret-id arguments: an environment, --app and --wrap-ttl; anything else is a usage error naming the value', T, () => {
  // Imported, not run: the command runs only as the process's own script.
  const { parseSecretIdArgs } = require('../../ops/vault/secret-id') as typeof import('../../ops/vault/secret-id');
  assert.deepEqual(parseSecretIdArgs(['local']), { env: 'local', app: undefined, wrapTtlSeconds: undefined });
  assert.deepEqual(parseSecretIdArgs(['local', '--app', 'pgvault-app', '--wrap-ttl', '120']), { env: 'local', app: 'pgvault-app', wrapTtlSeconds: 120 });
  assert.throws(() => parseSecretIdArgs([]), /no environment given; usage:/);
  assert.throws(() => parseSecretIdArgs(['local', '--wrap-ttl', '0']), /--wrap-ttl is "0"; expected a whole number of seconds/);
  assert.throws(() => parseSecretIdArgs(['local', '--wrap-ttl', '1m']), /--wrap-ttl is "1m"/);
  assert.throws(() => parseSecretIdArgs(['local', '--wrap-ttl']), /--wrap-ttl needs a value/);
  assert.throws(() => parseSecretIdArgs(['local', '--wrap']), /unknown option "--wrap"/);
  assert.throws(() => parseSecretIdArgs(['local', 'ha']), /unexpected argument "ha"/);
});

test('per app: each app with jwt.boundSubject gets its own JWT role with its own policy; api keeps appAccess.jwt\'s role', T, () => {
  const doc0 = {
    ...base({ roleName: 'svc', jwt: { ...jwt, roleName: 'svc-jwt', publicKeyFiles: [pub] } }),
    roles: { readonly: { access: 'read', defaultTtlSeconds: 60, maxTtlSeconds: 120 }, shop_writer: { access: 'write', defaultTtlSeconds: 60, maxTtlSeconds: 120 } },
    apps: { api: { roles: ['readonly'] }, shop: { roles: ['shop_writer'], jwt: { boundSubject: 'system:serviceaccount:shop:shop' } }, report: { roles: ['readonly'] } },
  };
  const env = resolveEnvironment('e', 'e.json', doc0);
  const doc = JSON.parse(Testing.synth(new SecretsStack(Testing.app(), 'e-secrets', { env })));
  const roles = Object.values(doc.resource.vault_jwt_auth_backend_role) as any[];
  const by = Object.fromEntries(roles.map((r) => [r.role_name, r]));
  assert.deepEqual(Object.keys(by).sort(), ['svc-jwt', 'svc-jwt-shop'], 'report has no subject: no role');
  assert.equal(by['svc-jwt'].bound_subject, 'system:serviceaccount:shop:api');
  assert.equal(by['svc-jwt-shop'].bound_subject, 'system:serviceaccount:shop:shop');
  assert.match(JSON.stringify(by['svc-jwt-shop'].token_policies), /policy-shop_/);
  assert.match(JSON.stringify(by['svc-jwt'].token_policies), /policy-api_/);
  assert.match(doc.output.jwt_role_name.value, /jwt-access_role_[0-9A-F]+\.role_name/, 'the role of the construct ID it had before apps');
  assert.match(doc.output.apps.value.shop.jwt_role_name, /jwt-access_role-shop_/);
  assert.equal(doc.output.apps.value.report.jwt_role_name, undefined);
  // An app's jwt without appAccess.jwt: refused with the fix.
  const noMount = { ...doc0, appAccess: { roleName: 'svc' } };
  assert.throws(() => resolveEnvironment('e', 'e.json', noMount), (e: any) => e.code === 'ENV_SCHEMA' && /apps\.shop\.jwt/.test(e.message) && /"appAccess\.jwt" to be set too/.test(e.message));
  // No app can use the mount: refused at synth, naming the fix.
  const none = { ...doc0, apps: { shop: { roles: ['shop_writer'] } } };
  const envNone = resolveEnvironment('e', 'e.json', none);
  assert.throws(() => new SecretsStack(Testing.app(), 'e-secrets', { env: envNone }), /apps\.<app>\.jwt\.boundSubject/);
});
