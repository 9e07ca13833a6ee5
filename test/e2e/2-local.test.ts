/**
 * End to end on the `local` environment: real cdktf deploy (Terraform, providers,
 * Docker, Vault, Postgres), credentials issued through the app's AppRole login,
 * checked from Postgres's side, revoked, expired, and a clean destroy.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { EnvironmentConfig } from '../../stacks/config';
import { VaultRequestError } from '../../app/src';
import { connectWith } from '../../app/src/verify';
import * as h from '../harness';

const ENV = 'local';

describe('local environment, end to end', () => {
  let env: EnvironmentConfig;
  let destroyed = false;

  before(async () => {
    h.requireToolchain();
    // The shipped local environment plus one short-lived role, to watch credentials expire.
    h.scratchEnvironment(ENV, (doc) => {
      doc.roles.shortlived = { access: 'read', defaultTtlSeconds: 4, maxTtlSeconds: 4 };
    });
    env = h.loadEnvironment(ENV);
    await h.destroy(ENV); // whatever an earlier run left
    const { seconds } = await h.timed(() => h.deploy(ENV));
    console.log(`# figure: cold deploy of ${ENV}: ${seconds.toFixed(1)}s`);
  });

  after(async () => {
    if (!destroyed) await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
  });

  test('issues credentials for both roles, and Postgres shows the group grants and VALID UNTIL', async () => {
    const { cfg, session } = await h.appSession(ENV);
    const admin = await h.adminClient(env);
    try {
      for (const [role, group, canWrite] of [
        ['readonly', 'pgvault_read', false],
        ['readwrite', 'pgvault_write', true],
      ] as const) {
        const creds = await session.issue(cfg.mountPath, role);
        assert.match(creds.username, new RegExp(`^v-approle-${role.slice(0, 8)}`));
        assert.equal(Object.keys(creds).includes('password'), false, 'the password is not enumerable');
        const r = await admin.query(
          `SELECT pg_has_role($1, $2, 'member') AS member,
                  has_table_privilege($1, 'app.items', 'SELECT') AS can_select,
                  has_table_privilege($1, 'app.items', 'INSERT') AS can_insert,
                  has_schema_privilege($1, 'app', 'CREATE') AS can_create,
                  r.rolsuper, r.rolcreaterole, r.rolvaliduntil
             FROM pg_roles r WHERE r.rolname = $1`,
          [creds.username, group],
        );
        assert.equal(r.rowCount, 1, `${creds.username} exists in pg_roles`);
        const row = r.rows[0];
        assert.equal(row.member, true, `${creds.username} is a member of ${group}`);
        assert.equal(row.can_select, true);
        assert.equal(row.can_insert, canWrite);
        assert.equal(row.can_create, canWrite);
        assert.equal(row.rolsuper, false);
        assert.equal(row.rolcreaterole, false);
        const expiry = creds.issuedAt + creds.leaseDurationSeconds * 1000;
        const drift = Math.abs((row.rolvaliduntil as Date).getTime() - expiry) / 1000;
        assert.ok(drift < 30, `VALID UNTIL is ${drift}s from the lease expiry`);
        const direct = await admin.query('SELECT count(*)::int AS n FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = $1', [creds.username]);
        assert.equal(direct.rows[0].n, 1, 'exactly one grant: the group role, not per-table grants');
        await session.revoke(creds.leaseId);
      }
    } finally {
      await admin.end();
      await session.revokeSelf();
    }
  });

  test('revoking a lease drops the user, even with an open session and objects it owns', async () => {
    const { cfg, session } = await h.appSession(ENV);
    const admin = await h.adminClient(env);
    try {
      const creds = await session.issue(cfg.mountPath, 'readwrite');
      const client = await connectWith(cfg, creds);
      client.on('error', () => undefined);
      await client.query('CREATE TABLE app.owned_by_dynamic_user (id int)');
      await session.revoke(creds.leaseId);

      const gone = await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [creds.username]);
      assert.equal(gone.rowCount, 0, 'the role is gone');
      const owner = await admin.query("SELECT tableowner FROM pg_tables WHERE schemaname = 'app' AND tablename = 'owned_by_dynamic_user'");
      assert.equal(owner.rows[0]?.tableowner, 'pgvault_owner', 'its table was handed to the owner role');
      await assert.rejects(client.query('SELECT 1'), 'the open session was terminated');
      assert.equal(await h.tryLogin(env, creds.username, creds.password), '28P01', 'login fails after revocation');
      await admin.query('DROP TABLE app.owned_by_dynamic_user');
    } finally {
      await admin.end();
      await session.revokeSelf();
    }
  });

  test('with a short TTL, login fails after expiry and Vault removes the user', async () => {
    const { cfg, session } = await h.appSession(ENV);
    const admin = await h.adminClient(env);
    try {
      const creds = await session.issue(cfg.mountPath, 'shortlived');
      assert.equal(creds.leaseDurationSeconds, 4);
      assert.equal(await h.tryLogin(env, creds.username, creds.password), 'ok', 'login works within the TTL');
      await new Promise((r) => setTimeout(r, 5500));
      assert.equal(await h.tryLogin(env, creds.username, creds.password), '28P01', 'login fails after the TTL');
      await h.waitFor(`Vault to revoke the expired ${creds.username}`, async () => {
        const r = await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [creds.username]);
        return r.rowCount === 0;
      });
    } finally {
      await admin.end();
      await session.revokeSelf();
    }
  });

  test('the AppRole token has only the app policy and gets 403 everywhere else', async () => {
    const { cfg, session } = await h.appSession(ENV);
    try {
      assert.deepEqual(session.policies, ['pgvault-app']);
      for (const p of [`${cfg.mountPath}/config/postgres`, `${cfg.mountPath}/roles/readonly`, `${cfg.mountPath}/creds/not-given`, 'sys/mounts', 'auth/approle/role/pgvault-app/role-id', 'secret/data/x']) {
        await assert.rejects(session.read(p), (e: any) => e instanceof VaultRequestError && e.status === 403, `${p} must be forbidden`);
      }
    } finally {
      await session.revokeSelf();
    }
  });

  test('the setup password stops working once Vault rotated the root credential', async () => {
    const setup = fs.readFileSync(env.secretsEngine.setupPasswordFile, 'utf8').trim();
    assert.equal(await h.tryLogin(env, env.secretsEngine.vaultUser, setup), '28P01');
  });

  test('a second deploy changes nothing and credentials still work', async () => {
    const { seconds } = await h.timed(() => h.deploy(ENV));
    console.log(`# figure: warm deploy (no changes) of ${ENV}: ${seconds.toFixed(1)}s`);
    const { cfg, session } = await h.appSession(ENV);
    try {
      const creds = await session.issue(cfg.mountPath, 'readonly');
      assert.equal(await h.tryLogin(env, creds.username, creds.password), 'ok');
      await session.revoke(creds.leaseId);
    } finally {
      await session.revokeSelf();
    }
  });

  test('destroy leaves no container, network or volume, and a second destroy is harmless', async () => {
    const { seconds } = await h.timed(() => h.destroy(ENV));
    destroyed = true;
    console.log(`# figure: destroy of ${ENV}: ${seconds.toFixed(1)}s`);
    assert.equal(h.docker('ps', '-a', '--filter', `name=pgvault-${ENV}-`, '--format', '{{.Names}}'), '');
    assert.equal(h.docker('network', 'ls', '--filter', `name=pgvault-${ENV}`, '--format', '{{.Name}}'), '');
    assert.equal(h.docker('volume', 'ls', '--filter', `name=pgvault-${ENV}-`, '--format', '{{.Name}}'), '');
    assert.ok(h.docker('image', 'inspect', '--format', '{{.Id}}', env.docker!.postgresImage), 'images are kept (keep_locally)');
    await h.destroy(ENV);
  });
});
