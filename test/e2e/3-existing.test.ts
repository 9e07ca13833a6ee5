/**
 * End to end on the existing-infrastructure environment: no containers. The test
 * starts a real Postgres (the host's PostgreSQL 15 binaries) and a real Vault-compatible
 * server (OpenBao, dev mode with TLS) as plain host processes, points a copy of
 * environments/existing-example.json at them, deploys, verifies, and destroys.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Client } from 'pg';
import { EnvironmentConfig } from '../../stacks/config';
import { verifyRole } from '../../app/src';
import * as h from '../harness';

const ENV = 'existing-example';
const PG_PORT = 25432;
const VAULT_PORT = 28200;

/** PostgreSQL 15 on purpose: the "older server" case (before 16, CREATEROLE is superuser-equivalent). */
function pgBinDir(): string {
  const dir = '/usr/lib/postgresql/15/bin';
  if (!fs.existsSync(path.join(dir, 'initdb'))) throw new Error(`end-to-end prerequisite missing: PostgreSQL 15 server binaries (${dir}/initdb); install them: apt-get install postgresql-15`);
  return dir;
}

describe('existing-infrastructure environment, end to end', () => {
  let work: string;
  let env: EnvironmentConfig;
  let postgres: h.HostProcess | undefined;
  let vault: h.HostProcess | undefined;
  let destroyed = false;

  before(async () => {
    h.requireToolchain();
    const bin = pgBinDir();
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-existing-'));
    fs.chmodSync(work, 0o755);
    const secrets = path.join(work, 'secrets');
    fs.mkdirSync(secrets, { mode: 0o700 });
    const pgPassword = crypto.randomBytes(18).toString('base64url');
    const rootToken = crypto.randomBytes(16).toString('hex');
    fs.writeFileSync(path.join(secrets, 'postgres-admin-password'), pgPassword, { mode: 0o600 });
    fs.writeFileSync(path.join(secrets, 'vault-token'), rootToken, { mode: 0o600 });

    // Postgres as a plain process, owned by the postgres user when running as root.
    const data = path.join(work, 'pgdata');
    fs.mkdirSync(data, { mode: 0o700 });
    const pwfile = path.join(work, 'initdb-pw');
    fs.writeFileSync(pwfile, pgPassword, { mode: 0o600 });
    const asRoot = process.getuid?.() === 0;
    if (asRoot) spawnSync('chown', ['-R', 'postgres:postgres', data, pwfile]);
    const initdb = spawnSync(asRoot ? 'runuser' : path.join(bin, 'initdb'), [
      ...(asRoot ? ['-u', 'postgres', '--', path.join(bin, 'initdb')] : []),
      '-D', data, '-U', 'postgres', `--pwfile=${pwfile}`, '--auth=scram-sha-256', '--encoding=UTF8',
    ], { encoding: 'utf8' });
    fs.rmSync(pwfile);
    if (initdb.status !== 0) throw new Error(`initdb failed: ${initdb.stderr}`);
    postgres = h.startProcess(path.join(bin, 'postgres'), ['-D', data, '-p', String(PG_PORT), '-c', 'listen_addresses=127.0.0.1', '-c', `unix_socket_directories=${data}`], {
      logFile: path.join(work, 'postgres.log'),
      asUser: 'postgres',
    });
    await h.waitFor('Postgres to accept connections', async () => {
      const c = new Client({ host: '127.0.0.1', port: PG_PORT, user: 'postgres', password: pgPassword, database: 'postgres' });
      await c.connect();
      await c.query('CREATE DATABASE app').catch(() => undefined);
      await c.end();
      return true;
    });

    // A Vault-compatible server in dev mode, with TLS and its own CA.
    const tls = path.join(work, 'vault-tls');
    fs.mkdirSync(tls);
    vault = h.startProcess(process.env.VAULT_SERVER_BIN!, ['server', '-dev', '-dev-tls', `-dev-tls-cert-dir=${tls}`, `-dev-listen-address=127.0.0.1:${VAULT_PORT}`], {
      env: { BAO_DEV_ROOT_TOKEN_ID: rootToken, VAULT_DEV_ROOT_TOKEN_ID: rootToken, HOME: work },
      logFile: path.join(work, 'vault.log'),
    });
    await h.waitFor('Vault to write its CA', async () => fs.existsSync(path.join(tls, 'vault-ca.pem')));

    h.scratchEnvironment(ENV, (doc) => {
      doc.postgres = { ...doc.postgres, host: '127.0.0.1', port: PG_PORT, sslmode: 'disable', adminPasswordFile: path.join(secrets, 'postgres-admin-password') };
      doc.vault = { ...doc.vault, address: `https://127.0.0.1:${VAULT_PORT}`, caCertFile: path.join(tls, 'vault-ca.pem'), tokenFile: path.join(secrets, 'vault-token') };
    });
    env = h.loadEnvironment(ENV);
    await h.waitFor('Vault to answer over TLS', async () => Boolean(await h.vaultAdmin(env, 'GET', 'sys/health')));
    await h.destroy(ENV);
  });

  after(async () => {
    if (!destroyed && env) await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
    await vault?.stop();
    await postgres?.stop();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  test('deploys only the Vault configuration, over TLS with the CA from the environment', async () => {
    const { value: outputs, seconds } = await h.timed(() => h.deploy(ENV));
    console.log(`# figure: deploy of ${ENV} (existing servers): ${seconds.toFixed(1)}s`);
    assert.equal(outputs.vault_address, `https://127.0.0.1:${VAULT_PORT}`);
    assert.equal(outputs.postgres_port, PG_PORT);
    assert.equal(outputs.network_name, undefined, 'no containers');
    const mounts = await h.vaultAdmin(env, 'GET', 'sys/mounts');
    assert.equal(mounts.data['database/'].type, 'database');
  });

  test('the app gets working credentials for both roles, with the right grants', async () => {
    const { cfg, session } = await h.appSession(ENV);
    try {
      for (const role of env.roles) {
        const report = await verifyRole(session, cfg, role.name, role.access);
        const failed = report.checks.filter((c) => !c.ok);
        assert.deepEqual(failed, [], `${role.name}: ${JSON.stringify(failed)}`);
        assert.equal(report.leaseDurationSeconds, role.defaultTtlSeconds);
      }
    } finally {
      await session.revokeSelf();
    }
  });

  test('destroy removes the Vault configuration and the Postgres roles and schema it created', async () => {
    await h.destroy(ENV);
    destroyed = true;
    const mounts = await h.vaultAdmin(env, 'GET', 'sys/mounts');
    assert.equal(mounts.data['database/'], undefined);
    const auths = await h.vaultAdmin(env, 'GET', 'sys/auth');
    assert.equal(auths.data['approle/'], undefined);
    const admin = await h.adminClient(env);
    try {
      const roles = await admin.query("SELECT rolname FROM pg_roles WHERE rolname LIKE 'pgvault%' OR rolname = 'vault_admin' OR rolname LIKE 'v-approle-%'");
      assert.deepEqual(roles.rows, []);
      const schema = await admin.query("SELECT 1 FROM pg_namespace WHERE nspname = 'app'");
      assert.equal(schema.rowCount, 0);
    } finally {
      await admin.end();
    }
    assert.ok(fs.existsSync(env.vault.tokenFile), "the operator's token file is left alone");
  });
});
