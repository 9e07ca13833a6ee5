/**
 * End to end on the `local` environment: real cdktf deploy (Terraform, providers,
 * Docker, Vault, Postgres), credentials issued through the app's AppRole login,
 * checked from Postgres's side, revoked, expired, and a clean destroy.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { EnvironmentConfig, REPO_ROOT, localDir } from '../../stacks/config';
import { VaultRequestError } from '@pgvault/runtime';
import { connectWith } from '../../demo/verify';
import { outputsFile } from '../../ops';
import * as h from '../harness';

const ENV = 'local';

/** The app's AppRole gets readonly credentials that log in to Postgres; the lease and token are revoked after. */
async function readonlyCredentialsWork(env: EnvironmentConfig): Promise<void> {
  const { cfg, session } = await h.appSession(ENV);
  try {
    const creds = await session.issue(cfg.mountPath, 'readonly');
    assert.equal(await h.tryLogin(env, creds.username, creds.password), 'ok');
    await session.revoke(creds.leaseId);
  } finally {
    await session.revokeSelf();
  }
}

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
    const umask = process.umask(0o022);
    try {
      const { seconds } = await h.timed(() => h.deploy(ENV));
      console.log(`# figure: cold deploy of ${ENV}: ${seconds.toFixed(1)}s`);
    } finally {
      process.umask(umask);
    }
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  after(async () => {
    if (!destroyed) await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  test('issues credentials for both roles, and Postgres shows the group grants and VALID UNTIL', async () => {
    const { cfg, session } = await h.appSession(ENV);
    const admin = await h.adminClient(env);
    try {
      for (const [role, group, canWrite] of [
        ['readonly', env.database.groupRoles.read, false],
        ['readwrite', env.database.groupRoles.write, true],
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
      assert.equal(owner.rows[0]?.tableowner, env.database.retiredRole, 'its table was handed to the retired role');
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

  test('a SECURITY DEFINER function left by a revoked writer gives readers nothing', async () => {
    const { cfg, session } = await h.appSession(ENV);
    const admin = await h.adminClient(env);
    try {
      await admin.query("INSERT INTO app.items (name) VALUES ('kept-1'), ('kept-2')");
      const writer = await session.issue(cfg.mountPath, 'readwrite');
      const w = await connectWith(cfg, writer);
      w.on('error', () => undefined);
      await w.query(`CREATE FUNCTION app.backdoor() RETURNS void LANGUAGE sql SECURITY DEFINER AS 'TRUNCATE app.items'`);
      // A procedure too: revocation must disarm every kind of routine, or it would fail.
      await w.query(`CREATE PROCEDURE app.backdoor_proc() LANGUAGE sql SECURITY DEFINER AS 'TRUNCATE app.items'`);
      await w.end();
      await session.revoke(writer.leaseId);
      const reader = await session.issue(cfg.mountPath, 'readonly');
      const r = await connectWith(cfg, reader);
      r.on('error', () => undefined);
      await assert.rejects(r.query('SELECT app.backdoor()'), (e: any) => e.code === '42501', 'a reader may not run it');
      await assert.rejects(r.query('CALL app.backdoor_proc()'), (e: any) => e.code === '42501', 'nor the procedure');
      await r.end();
      const owner = await admin.query("SELECT pg_get_userbyid(proowner) AS owner FROM pg_proc WHERE proname = 'backdoor'");
      assert.equal(owner.rows[0].owner, env.database.retiredRole);
      // Even its new owner, which holds no privilege, could not empty the table.
      await admin.query(`SET ROLE ${env.database.retiredRole}`);
      await assert.rejects(admin.query('SELECT app.backdoor()'), (e: any) => e.code === '42501');
      await admin.query('RESET ROLE');
      assert.ok((await admin.query('SELECT count(*)::int AS n FROM app.items')).rows[0].n >= 2, 'the table is intact');
      await admin.query('DROP FUNCTION app.backdoor()');
      await admin.query('DROP PROCEDURE app.backdoor_proc()');
      await session.revoke(reader.leaseId);
    } finally {
      await admin.end();
      await session.revokeSelf();
    }
  });

  test('a second deploy changes nothing, credentials still work, and every local file stays private (umask 0002)', async () => {
    const umask = process.umask(0o002);
    let seconds: number;
    try {
      ({ seconds } = await h.timed(() => h.deploy(ENV)));
    } finally {
      process.umask(umask);
    }
    console.log(`# figure: warm deploy (no changes) of ${ENV}: ${seconds.toFixed(1)}s`);
    assert.deepEqual(h.loosePermissions(localDir(ENV)), [], 'files 0600 and directories 0700 under .local/local (cold deploy ran with umask 0022, this one with 0002)');
    assert.ok(fs.existsSync(path.join(localDir(ENV), 'state', `${ENV}-infra.tfstate`)), 'the state holding the dev root token is among them');
    await readonlyCredentialsWork(env);
  });

  test('re-running the bootstrap (a new setupPasswordVersion) keeps the data and rotates root again', async () => {
    const admin = await h.adminClient(env);
    try {
      await admin.query("INSERT INTO app.items (name) VALUES ('survivor-1'), ('survivor-2')");
      const before = (await admin.query('SELECT count(*)::int AS n FROM app.items')).rows[0].n;
      const file = path.join(process.env.PGVAULT_ENVIRONMENTS_DIR!, `${ENV}.json`);
      const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
      doc.secretsEngine = { ...doc.secretsEngine, setupPasswordVersion: 2 };
      fs.writeFileSync(file, JSON.stringify(doc, null, 2));
      env = h.loadEnvironment(ENV);
      const mark = h.cdktfLogSize();
      await h.deploy(ENV);
      const log = h.cdktfLogSince(mark);
      assert.match(log, /bootstrap: local: roles .* are in place/, 'the bootstrap ran again');
      assert.doesNotMatch(log, /removed the roles|dropped/, 'and removed nothing');
      assert.equal((await admin.query('SELECT count(*)::int AS n FROM app.items')).rows[0].n, before, 'every row survived');
      assert.ok((await admin.query("SELECT 1 FROM app.items WHERE name = 'survivor-2'")).rowCount, 'survivor-2 is there');
    } finally {
      await admin.end();
    }
    const setup = fs.readFileSync(env.secretsEngine.setupPasswordFile, 'utf8').trim();
    assert.equal(await h.tryLogin(env, env.secretsEngine.vaultUser, setup), '28P01', 'root was rotated again');
    const { cfg, session } = await h.appSession(ENV);
    try {
      const creds = await session.issue(cfg.mountPath, 'readwrite');
      assert.equal(await h.tryLogin(env, creds.username, creds.password), 'ok');
      await session.revoke(creds.leaseId);
    } finally {
      await session.revokeSelf();
    }
  });

  test('a restarted (empty) dev server is healed by the next deploy, with no edit to any file', async () => {
    const { cfg, session } = await h.appSession(ENV);
    const lost = await session.issue(cfg.mountPath, 'readonly');
    const admin = await h.adminClient(env);
    try {
      h.docker('restart', `pgvault-${ENV}-vault`);
      await h.waitFor('the dev server to answer again', async () => Boolean(await h.vaultAdmin(env, 'GET', 'sys/health')));
      const { seconds } = await h.timed(() => h.deploy(ENV));
      console.log(`# figure: healing deploy after a dev server restart: ${seconds.toFixed(1)}s`);
      assert.deepEqual(await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [lost.username]).then((r) => r.rows), [], 'the lost lease\'s user is gone');
      const setup = fs.readFileSync(env.secretsEngine.setupPasswordFile, 'utf8').trim();
      assert.equal(await h.tryLogin(env, env.secretsEngine.vaultUser, setup), '28P01', 'root was rotated again');
      assert.ok((await admin.query('SELECT count(*)::int AS n FROM app.items')).rows[0].n >= 2, 'the data is still there');
    } finally {
      await admin.end();
    }
    const again = await h.appSession(ENV);
    try {
      const creds = await again.session.issue(again.cfg.mountPath, 'readwrite');
      assert.equal(await h.tryLogin(env, creds.username, creds.password), 'ok', 'the app gets working credentials again');
    } finally {
      await again.session.revokeSelf();
    }
  });

  test("npm run deploy and a direct cdktf deploy each see the other's state as no change", async () => {
    const stacks = [`${ENV}-infra`, `${ENV}-secrets`];
    // Terraform's summary of each stack's apply (cdktf's output is coloured, and prefixes only some lines).
    const noChange = (log: string, how: string) => {
      const summaries = [...log.replace(/\x1b\[[0-9;]*m/g, '').matchAll(/Apply complete! Resources: (\d+ added, \d+ changed, \d+ destroyed)/g)].map((m) => m[1]);
      assert.deepEqual(summaries, stacks.map(() => '0 added, 0 changed, 0 destroyed'), `${how}: each stack applied, and changed nothing`);
    };
    let mark = h.cdktfLogSize();
    const viaNpm = npmDeploy();
    assert.equal(viaNpm.status, 0, `npm run deploy failed:\n${viaNpm.stderr}`);
    for (const s of stacks) assert.equal(terraformPlan(s), 0, `after npm run deploy, terraform plan of ${s} sees no change`);
    const outputs = fs.readFileSync(outputsFile(ENV), 'utf8');

    mark = h.cdktfLogSize();
    assert.equal(h.directCdktf(ENV, `deploy ${stacks.join(' ')}`), 0, 'direct cdktf deploy');
    noChange(h.cdktfLogSince(mark), 'cdktf deploy after npm run deploy');
    for (const s of stacks) assert.equal(terraformPlan(s), 0, `after cdktf deploy, terraform plan of ${s} sees no change`);

    mark = h.cdktfLogSize();
    const again = npmDeploy();
    assert.equal(again.status, 0, `npm run deploy failed:\n${again.stderr}`);
    const log = h.cdktfLogSince(mark);
    noChange(log, 'npm run deploy after cdktf deploy');
    assert.match(log, new RegExp(`synth of ${ENV}: up to date`), "cdktf's synth wrote the same stacks: no new synth");
    assert.equal(fs.readFileSync(outputsFile(ENV), 'utf8'), outputs, 'the same outputs, in the same place');
  });

  test('a deploy that fails in the -secrets stack, after -infra applied, reports the failure, the log tail and the recovery hint', async () => {
    const passwordFile = env.postgres.adminPasswordFile;
    const password = fs.readFileSync(passwordFile, 'utf8');
    // A new setupPasswordVersion runs the bootstrap again, and it cannot log in to Postgres.
    const file = path.join(process.env.PGVAULT_ENVIRONMENTS_DIR!, `${ENV}.json`);
    const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
    doc.secretsEngine = { ...doc.secretsEngine, setupPasswordVersion: (doc.secretsEngine?.setupPasswordVersion ?? 1) + 1 };
    fs.writeFileSync(file, JSON.stringify(doc, null, 2));
    fs.writeFileSync(passwordFile, 'not-the-admin-password\n', { mode: 0o600 });
    let failed;
    const mark = h.cdktfLogSize();
    try {
      failed = npmDeploy();
    } finally {
      fs.writeFileSync(passwordFile, password, { mode: 0o600 });
    }
    assert.equal(failed.status, 1, 'npm run deploy exits 1');
    const log = h.cdktfLogSince(mark);
    assert.match(log, new RegExp(`${ENV}-infra\\s+Apply complete!`), '-infra was applied first');
    assert.doesNotMatch(log, new RegExp(`${ENV}-secrets\\s+Apply complete!`));
    const logFile = process.env.PGVAULT_CDKTF_LOG!;
    const report = failed.stderr.match(
      new RegExp(
        `\\[pgvault\\] error: deploy of ${ENV} failed: terraform apply of ${ENV}-secrets exited with 1\n` +
          `--- last lines of (.+) ---\n([\\s\\S]*)\n---\\. ` +
          `The environment may be partly deployed\\. Fix the cause shown above and run 'npm run deploy -- ${ENV}' again \\(it picks up where it stopped\\), ` +
          `or remove what was created with 'npm run destroy -- ${ENV}'\\.\n$`,
      ),
    );
    assert.ok(report, `the failure report, as before the runner changed:\n${failed.stderr}`);
    assert.equal(report[1], logFile, 'it names the log');
    assert.equal(report[2], fs.readFileSync(logFile, 'utf8').split('\n').slice(-40).join('\n'), "its tail is the log's last 40 lines");
    assert.match(report[2], /Error: local-exec provisioner error/, "Terraform's error is in the tail");
    assert.match(report[2], /bootstrap failed: .*password authentication failed/, 'and the cause');
    assert.doesNotMatch(failed.stderr, /not-the-admin-password/, 'no password in the report');

    // It picks up where it stopped.
    const resumed = h.cdktfLogSize();
    await h.deploy(ENV);
    assert.match(h.cdktfLogSince(resumed), /bootstrap: local: roles .* are in place/, 'the bootstrap ran again and succeeded');
    env = h.loadEnvironment(ENV);
    await readonlyCredentialsWork(env);
  });

  test('destroy succeeds under live leases (the API serving, an admin lease, a user owning a table with an open session) and leaves nothing', async () => {
    const server = startServer();
    const admin = await h.adminClient(env);
    try {
      await h.waitFor('the API to serve', async () => (await fetch(`${API}/items`)).status === 200, 60_000);
      const traffic = keepRequesting();
      const adminLease = await h.vaultAdmin(env, 'GET', `${env.secretsEngine.mountPath}/creds/readwrite`);
      const { cfg, session } = await h.appSession(ENV);
      const owner = await session.issue(cfg.mountPath, 'readwrite');
      const c = await connectWith(cfg, owner);
      c.on('error', () => undefined);
      await c.query('CREATE TABLE app.owned_at_destroy (id int)');
      assert.ok((await h.dynamicRoles(admin, env)).length >= 4, 'API users, the admin lease and the owner are live');
      assert.ok(adminLease.lease_id);
      await admin.end();

      const watch = h.watchRoles(env);
      const { seconds } = await h.timed(() => h.destroy(ENV));
      const seen = await watch.stop();
      traffic.stop();
      console.log(`# figure: destroy of ${ENV} under live leases: ${seconds.toFixed(1)}s (${seen.looks} looks at pg_roles during it)`);
      assert.deepEqual(seen.vaultNamed, [], 'no dynamic role was left in pg_roles before the container went');
      assert.deepEqual(seen.ours, [], "no role of the environment's either");
      destroyed = true;
      assertNoDockerLeftovers();
    } finally {
      await admin.end().catch(() => undefined);
      server.kill('SIGKILL');
    }
  });

  test("the README's direct path: cdktf deploy writes current outputs, and cdktf destroy with a live lease leaves nothing", async () => {
    // The npm scripts make the local secret files; a direct deploy after a direct destroy reuses them.
    await h.deploy(ENV);
    const stale = fs.readFileSync(path.join(localDir(ENV), 'outputs.json'), 'utf8');
    assert.equal(h.directCdktf(ENV, `destroy ${ENV}-infra ${ENV}-secrets`), 0, 'direct destroy');
    assert.equal(fs.existsSync(path.join(localDir(ENV), 'outputs.json')), false, 'the destroy removed the outputs file');
    assert.equal(h.directCdktf(ENV, `deploy ${ENV}-infra ${ENV}-secrets`), 0, 'direct deploy');
    const fresh = JSON.parse(fs.readFileSync(path.join(localDir(ENV), 'outputs.json'), 'utf8'));
    assert.notEqual(fresh.approle_role_id, JSON.parse(stale).approle_role_id, 'a new AppRole, a new role_id');
    assert.deepEqual(h.loosePermissions(localDir(ENV)), []);
    const server = startServer();
    try {
      await h.waitFor('the API to serve on the new role_id', async () => (await fetch(`${API}/items`)).status === 200, 60_000);
    } finally {
      server.kill('SIGTERM');
      await new Promise((r) => server.once('exit', r));
    }
    const { cfg, session } = await h.appSession(ENV);
    await session.issue(cfg.mountPath, 'readonly');
    const watch = h.watchRoles(env);
    assert.equal(h.directCdktf(ENV, `destroy ${ENV}-secrets`), 0, 'direct destroy of the secrets stack with a live lease');
    const seen = await watch.stop();
    assert.ok(seen.looks > 0);
    assert.deepEqual(seen.vaultNamed, []);
    assert.deepEqual(seen.ours, []);
    assert.equal(h.directCdktf(ENV, `destroy ${ENV}-infra --ignore-missing-stack-dependencies`), 0, 'direct destroy of the containers');
    assertNoDockerLeftovers();
    await h.destroy(ENV);
  });

  test('an interrupted teardown (the connection deleted under a live lease) is recovered by destroy', async () => {
    await h.deploy(ENV);
    destroyed = false;
    const { cfg, session } = await h.appSession(ENV);
    const live = await session.issue(cfg.mountPath, 'readwrite');
    await h.vaultAdmin(env, 'DELETE', `${env.secretsEngine.mountPath}/config/${env.secretsEngine.connectionName}`);
    const watch = h.watchRoles(env);
    const mark = h.cdktfLogSize();
    await h.destroy(ENV);
    destroyed = true;
    const seen = await watch.stop();
    assert.deepEqual(seen.vaultNamed, [], `${live.username} was dropped from Postgres's side`);
    assert.deepEqual(seen.ours, []);
    assert.match(h.cdktfLogSince(mark), /dropped 1 dynamic user/);
    assertNoDockerLeftovers();
  });

  test('a second destroy is harmless, and the images are kept', async () => {
    await h.destroy(ENV);
    assert.ok(h.docker('image', 'inspect', '--format', '{{.Id}}', env.docker!.postgresImage), 'images are kept (keep_locally)');
  });

  function assertNoDockerLeftovers(): void {
    assert.equal(h.docker('ps', '-a', '--filter', `name=pgvault-${ENV}-`, '--format', '{{.Names}}'), '');
    assert.equal(h.docker('network', 'ls', '--filter', `name=pgvault-${ENV}`, '--format', '{{.Name}}'), '');
    assert.equal(h.docker('volume', 'ls', '--filter', `name=pgvault-${ENV}-`, '--format', '{{.Name}}'), '');
  }
});

/** `npm run deploy -- local`, as a user runs it (the npm script, the build check, the CLI). */
function npmDeploy(): { status: number | null; stderr: string } {
  const r = spawnSync('npm', ['run', '--silent', 'deploy', '--', ENV], { cwd: REPO_ROOT, env: process.env, encoding: 'utf8', timeout: 900_000, killSignal: 'SIGKILL' });
  if (r.error) throw new Error(`npm run deploy -- ${ENV}: ${r.error.message} (killed after 900 s if ETIMEDOUT)`);
  return { status: r.status, stderr: r.stderr };
}

/** `terraform plan -detailed-exitcode` of a stack as last synthesized: 0 when it would change nothing. */
function terraformPlan(stack: string): number {
  const dir = localDir(ENV);
  const log = fs.openSync(process.env.PGVAULT_CDKTF_LOG!, 'a');
  const r = spawnSync(process.env.TERRAFORM_BINARY_NAME || 'terraform', ['plan', '-detailed-exitcode', '-input=false', '-no-color'], {
    cwd: path.join(REPO_ROOT, 'cdktf.out', 'stacks', stack),
    env: {
      ...process.env,
      TF_VAR_vault_db_setup_password: fs.readFileSync(path.join(dir, 'vault-setup-password'), 'utf8').trim(),
      TF_VAR_vault_dev_root_token: fs.readFileSync(path.join(dir, 'vault-token'), 'utf8').trim(),
    },
    stdio: ['ignore', log, log],
    timeout: 300_000,
    killSignal: 'SIGKILL',
  });
  fs.closeSync(log);
  if (r.error) throw new Error(`terraform plan of ${stack}: ${(r.error as any).code === 'ETIMEDOUT' ? 'hung, killed after 300 s' : r.error.message}`);
  return r.status ?? 1;
}

const API_PORT = 18183;
const API = `http://127.0.0.1:${API_PORT}`;

/** The REST API as a real process on the local environment. */
function startServer() {
  const serve = path.join(__dirname, '..', '..', 'api', 'serve.js');
  const child = spawn(process.execPath, [serve, ENV], { env: { ...process.env, PORT: String(API_PORT), LOG_LEVEL: 'warn' }, stdio: 'ignore' });
  return child;
}

/** Requests against the API until stopped (their outcome does not matter: the destroy must succeed). */
function keepRequesting(): { stop(): void } {
  let running = true;
  void (async () => {
    while (running) {
      await fetch(`${API}/items?limit=1`, { signal: AbortSignal.timeout(2000) }).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return { stop: () => (running = false) };
}
