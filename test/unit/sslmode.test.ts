/** sslmode → Node TLS options, with libpq's meanings; and where each role's pool connects. */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { AppConfigError, appConfigFromOutputs, DeployOutputs, pgSsl, roleEndpoint } from '@pgvault/runtime';

const CA = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';
/** A certificate whose names do not include the host: what checkServerIdentity sees for a wrong host name. */
const OTHER_NAME = { subject: { CN: 'pgvault-ha-postgres' }, subjectaltname: 'DNS:pgvault-ha-postgres' } as any;

test('disable: no TLS at all', () => {
  assert.equal(pgSsl('disable'), false);
  assert.equal(pgSsl(undefined), false);
  assert.equal(pgSsl('disable', { ca: CA }), false);
});

test('require: TLS without any certificate check; with a CA, as verify-ca (as libpq does when a root CA file exists)', () => {
  assert.deepEqual(pgSsl('require'), { rejectUnauthorized: false });
  const withCa = pgSsl('require', { ca: CA }) as any;
  assert.equal(withCa.rejectUnauthorized, true);
  assert.equal(withCa.ca, CA);
  assert.equal(withCa.checkServerIdentity('wrong.example', OTHER_NAME), undefined);
});

test('verify-ca: the chain is checked against the CA, the host name is not', () => {
  const o = pgSsl('verify-ca', { ca: CA }) as any;
  assert.equal(o.rejectUnauthorized, true);
  assert.equal(o.ca, CA);
  assert.equal(typeof o.checkServerIdentity, 'function');
  assert.equal(o.checkServerIdentity('127.0.0.1', OTHER_NAME), undefined, 'a certificate of another name passes');
  const storeOnly = pgSsl('verify-ca') as any;
  assert.equal(storeOnly.rejectUnauthorized, true);
  assert.equal(storeOnly.ca, undefined, "without a CA file: Node's CA store");
});

test('verify-full: the chain and the host name are checked (Node\'s default identity check)', () => {
  const o = pgSsl('verify-full', { ca: CA }) as any;
  assert.equal(o.rejectUnauthorized, true);
  assert.equal(o.ca, CA);
  assert.equal(o.checkServerIdentity, undefined, "Node's own check: the name must match");
  assert.deepEqual(pgSsl('verify-full'), { rejectUnauthorized: true });
});

test('fails when the sslmode is not one of the four, naming the value and what is expected', () => {
  for (const mode of ['prefer', 'allow', 'verify_full', '']) {
    assert.throws(() => pgSsl(mode), (e: unknown) => e instanceof AppConfigError && e.code === 'APP_SSLMODE' && e.message.includes(`"${mode}"`) && e.message.includes('verify-full'));
  }
});

test('role endpoints: each role connects to its target; roles without one to the primary', () => {
  const outputs = {
    vault_address: 'https://127.0.0.1:18230',
    postgres_host: '127.0.0.1',
    postgres_port: 15470,
    postgres_database: 'app',
    postgres_sslmode: 'verify-full',
    mount_path: 'database',
    roles: ['readonly', 'readwrite', 'reports'],
    approle_mount: 'approle',
    approle_role_name: 'pgvault-app',
    approle_role_id: 'x',
    role_endpoints: {
      readonly: { host: '127.0.0.1', port: 15471, target: 'replica' },
      readwrite: { host: '127.0.0.1', port: 15470, target: 'primary' },
    },
  } as DeployOutputs;
  const cfg = appConfigFromOutputs(outputs, { secretId: 's', env: {} });
  assert.deepEqual(roleEndpoint(cfg, 'readonly'), { host: '127.0.0.1', port: 15471, target: 'replica' });
  assert.deepEqual(roleEndpoint(cfg, 'readwrite'), { host: '127.0.0.1', port: 15470, target: 'primary' });
  assert.deepEqual(roleEndpoint(cfg, 'reports'), { host: '127.0.0.1', port: 15470, target: 'primary' });
  assert.throws(() => appConfigFromOutputs({ ...outputs, postgres_ca_cert_file: '/nonexistent/ca.pem' } as DeployOutputs, { secretId: 's', env: {} }), /Postgres's CA certificate.*\/nonexistent\/ca\.pem.*PGVAULT_POSTGRES_CACERT/);
});
