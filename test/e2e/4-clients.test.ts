/**
 * Standard Vault consumers against a real deployment (environment `clients`, a copy of
 * `local` whose roles live 10 s, at most 30 s): a real `bao agent` with AppRole auto-auth,
 * the official Go client through the `bao` CLI, plain HTTP as hvac and Spring Vault send it,
 * and psql. Then escalation attempts through Vault's own Postgres connection, and the
 * PostgreSQL major-version check of an existing data volume.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Client } from 'pg';
import { EnvironmentConfig } from '../../stacks/config';
import { issueSecretId, outputsFile, readSecretFile } from '../../ops';
import { checkPostgresDataVolume, postgresDataVolume } from '../../ops/local/preflight';
import * as h from '../harness';

const ENV = 'clients';
const PG_PORT = 15450;
const VAULT_PORT = 18220;
const DEFAULT_TTL = 10;
const MAX_TTL = 30;
const ROLES = ['readonly', 'readwrite'] as const;

function scratch(): void {
  h.scratchEnvironment('local', (doc) => {
    doc.description = 'Standard clients test: short-lived roles.';
    doc.docker = { postgresHostPort: PG_PORT, vaultHostPort: VAULT_PORT };
    for (const r of ROLES) doc.roles[r] = { access: r === 'readonly' ? 'read' : 'write', defaultTtlSeconds: DEFAULT_TTL, maxTtlSeconds: MAX_TTL };
  }, ENV);
}

interface Answer {
  status: number;
  body: any;
}

/** One Vault call with a given token; never throws on an HTTP status, never prints the token. */
async function vault(token: string, method: string, apiPath: string, body?: unknown): Promise<Answer> {
  const address = `http://127.0.0.1:${VAULT_PORT}`;
  const res = await fetch(`${address}/v1/${apiPath}`, {
    method,
    headers: { 'X-Vault-Token': token, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : {} };
}

function expectStatus(a: Answer, status: number, what: string): any {
  assert.equal(a.status, status, `${what}: HTTP ${a.status} (${JSON.stringify(a.body.errors ?? [])}), expected ${status}`);
  return a.body;
}

/** The app's token: AppRole login through the CLI, as the README shows it (role_id and secret_id from files). */
async function appToken(dir: string): Promise<string> {
  const out = JSON.parse(fs.readFileSync(outputsFile(ENV), 'utf8'));
  fs.writeFileSync(path.join(dir, 'role-id'), out.approle_role_id, { mode: 0o600 });
  fs.writeFileSync(path.join(dir, 'secret-id'), await issueSecretId(ENV), { mode: 0o600 });
  const login = bao('', 'write', '-field=token', `auth/${out.approle_mount}/login`, `role_id=@${path.join(dir, 'role-id')}`, `secret_id=@${path.join(dir, 'secret-id')}`);
  assert.equal(login.status, 0, `bao write auth/${out.approle_mount}/login: ${login.stderr}`);
  return login.stdout.trim();
}

/** Live lease ids under <mount>/creds/<role>, as the admin sees them. */
async function liveLeases(admin: string, mount: string, role: string): Promise<string[]> {
  const a = await vault(admin, 'LIST', `sys/leases/lookup/${mount}/creds/${role}/`);
  if (a.status === 404) return [];
  return expectStatus(a, 200, `LIST leases of ${role}`).data.keys.map((k: string) => `${mount}/creds/${role}/${k}`);
}

/** `bao` (the Go API client) with the given token; the token goes through the environment, not argv. */
function bao(token: string, ...args: string[]) {
  return spawnSync(process.env.VAULT_SERVER_BIN!, args, {
    encoding: 'utf8',
    env: { ...process.env, BAO_ADDR: `http://127.0.0.1:${VAULT_PORT}`, VAULT_ADDR: `http://127.0.0.1:${VAULT_PORT}`, BAO_TOKEN: token, VAULT_TOKEN: token, HOME: os.tmpdir() },
  });
}

/** A libpq service file as the agent renders it: `[<role>]` with host, port, dbname, user, password. */
function readService(file: string): { leaseId: string; user: string; password: string } | undefined {
  if (!fs.existsSync(file)) return undefined;
  const text = fs.readFileSync(file, 'utf8');
  const get = (k: string) => text.match(new RegExp(`^${k}=(.*)$`, 'm'))?.[1];
  const leaseId = text.match(/^# lease_id: (.*)$/m)?.[1];
  const user = get('user');
  const password = get('password');
  return leaseId && user && password ? { leaseId, user, password } : undefined;
}

/** Logs in with a rendered pair and reports what it may do; the write is rolled back. */
async function grantsOf(env: EnvironmentConfig, user: string, password: string): Promise<{ select: boolean; insert: boolean; denied?: string }> {
  const c = new Client({ host: '127.0.0.1', port: PG_PORT, database: env.postgres.database, user, password, connectionTimeoutMillis: 5000 });
  c.on('error', () => undefined);
  await c.connect();
  try {
    const table = `${env.database.schema}.items`;
    await c.query(`SELECT count(*) FROM ${table}`);
    await c.query('BEGIN');
    try {
      await c.query(`INSERT INTO ${table} (name) VALUES ('from a rendered credential')`);
      return { select: true, insert: true };
    } catch (e: any) {
      return { select: true, insert: false, denied: e.code };
    } finally {
      await c.query('ROLLBACK');
    }
  } finally {
    await c.end();
  }
}


describe('a data volume made by PostgreSQL 15', () => {
  let env: EnvironmentConfig;
  let volume: string;

  before(async () => {
    h.requireToolchain();
    scratch();
    env = h.loadEnvironment(ENV);
    await h.destroy(ENV);
    volume = postgresDataVolume(env);
    h.docker('volume', 'create', volume);
    // What a PostgreSQL 15 deployment leaves: a cluster whose PG_VERSION says 15.
    h.docker('run', '--rm', '--network', 'none', '--entrypoint', 'sh', '-v', `${volume}:/data`, env.docker!.postgresImage, '-c', 'echo 15 > /data/PG_VERSION');
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  after(() => {
    spawnSync('docker', ['rm', '-f', `pgvault-${ENV}-pg15-probe`], { timeout: h.DOCKER_TIMEOUT_MS });
    spawnSync('docker', ['volume', 'rm', volume], { timeout: h.DOCKER_TIMEOUT_MS });
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  test('fails before the deploy with an error that names the versions and the fix', () => {
    assert.throws(
      () => checkPostgresDataVolume(env),
      (e: any) => {
        assert.equal(e.code, 'PG_DATA_VERSION');
        assert.match(e.message, new RegExp(`${volume} holds a PostgreSQL 15 cluster`));
        assert.match(e.message, /runs PostgreSQL 17, which cannot open it/);
        assert.match(e.message, new RegExp(`npm run destroy -- ${ENV}' then 'npm run deploy -- ${ENV}'`));
        return true;
      },
    );
  });

  test('the image itself stops at once with the same explanation, instead of failing inside postgres', () => {
    const name = `pgvault-${ENV}-pg15-probe`;
    const r = spawnSync('docker', ['run', '--name', name, '--network', 'none', '-e', 'POSTGRES_PASSWORD=unused', '-v', `${volume}:/var/lib/postgresql/data`, env.docker!.postgresImage], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 78, `exit code (stderr: ${r.stderr})`);
    assert.match(r.stderr, /holds a PostgreSQL 15 cluster, but this image runs PostgreSQL 17, which cannot open it/);
    assert.match(r.stderr, /npm run destroy -- <env>, then npm run deploy -- <env>/);
  });

  test('passes when there is no volume yet', () => {
    spawnSync('docker', ['rm', '-f', `pgvault-${ENV}-pg15-probe`], { timeout: h.DOCKER_TIMEOUT_MS });
    h.docker('volume', 'rm', volume);
    checkPostgresDataVolume(env);
  });
});

describe('standard Vault clients on a deployed environment', () => {
  let env: EnvironmentConfig;
  let admin: string;
  let mount: string;
  let work: string;

  before(async () => {
    h.requireToolchain();
    process.env.PGVAULT_CDKTF_LOG ??= path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-clients-')), 'cdktf.log');
    scratch();
    env = h.loadEnvironment(ENV);
    await h.destroy(ENV);
    checkPostgresDataVolume(env);
    const { seconds } = await h.timed(() => h.deploy(ENV));
    console.log(`# figure: cold deploy of ${ENV}: ${seconds.toFixed(1)}s`);
    admin = readSecretFile(env.vault.tokenFile, 'admin token');
    mount = env.secretsEngine.mountPath;
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-clients-work-'));
    fs.chmodSync(work, 0o700);
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  after(async () => {
    await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
    if (work) fs.rmSync(work, { recursive: true, force: true });
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  test('bao agent with AppRole auto-auth: renews, rotates at max TTL, never piles up leases', async () => {
    const out = JSON.parse(fs.readFileSync(outputsFile(ENV), 'utf8'));
    const dir = path.join(work, 'agent');
    fs.mkdirSync(dir, { mode: 0o700 });
    fs.writeFileSync(path.join(dir, 'role-id'), out.approle_role_id, { mode: 0o600 });
    fs.writeFileSync(path.join(dir, 'secret-id'), await issueSecretId(ENV), { mode: 0o600 });
    const templates = ROLES.map((role) => {
      const source = path.join(dir, `${role}.ctmpl`);
      fs.writeFileSync(
        source,
        `{{ with secret "${mount}/creds/${role}" }}# lease_id: {{ .LeaseID }}\n[${role}]\nhost=127.0.0.1\nport=${PG_PORT}\ndbname=${env.postgres.database}\nuser={{ .Data.username }}\npassword={{ .Data.password }}\n{{ end }}`,
      );
      return `template {\n  source      = "${source}"\n  destination = "${path.join(dir, `${role}.service`)}"\n  perms       = "0600"\n}`;
    });
    fs.writeFileSync(
      path.join(dir, 'agent.hcl'),
      [
        `vault {\n  address = "http://127.0.0.1:${VAULT_PORT}"\n}`,
        `auto_auth {\n  method "approle" {\n    mount_path = "auth/${out.approle_mount}"\n    config = {\n      role_id_file_path                   = "${path.join(dir, 'role-id')}"\n      secret_id_file_path                 = "${path.join(dir, 'secret-id')}"\n      remove_secret_id_file_after_reading = false\n    }\n  }\n}`,
        ...templates,
      ].join('\n\n') + '\n',
    );
    const logFile = path.join(dir, 'agent.log');
    const agent = h.startProcess(process.env.VAULT_SERVER_BIN!, ['agent', `-config=${path.join(dir, 'agent.hcl')}`], { env: { HOME: dir }, logFile });
    const pg = await h.adminClient(env);

    const runSeconds = 2 * MAX_TTL + 12;
    const leasesSeen = new Map<string, Set<string>>(ROLES.map((r) => [r, new Set()]));
    const maxLive = new Map<string, number>(ROLES.map((r) => [r, 0]));
    // Per role, each rendered credential in order: when it appeared, and the VALID UNTIL values seen.
    const rendered = new Map<string, { user: string; leaseId: string; firstSeen: number; validUntil: number[] }[]>(ROLES.map((r) => [r, []]));
    const checks: Promise<void>[] = [];
    const failures: string[] = [];
    const started = Date.now();
    try {
      while (Date.now() - started < runSeconds * 1000) {
        const tick = Date.now();
        assert.equal(agent.child.exitCode, null, `bao agent exited early; see ${logFile}`);
        for (const role of ROLES) {
          const live = await liveLeases(admin, mount, role);
          live.forEach((id) => leasesSeen.get(role)!.add(id));
          maxLive.set(role, Math.max(maxLive.get(role)!, live.length));
          const cur = readService(path.join(dir, `${role}.service`));
          if (!cur) continue;
          const list = rendered.get(role)!;
          let entry = list.find((e) => e.user === cur.user);
          if (!entry) {
            entry = { user: cur.user, leaseId: cur.leaseId, firstSeen: Date.now(), validUntil: [] };
            list.push(entry);
            const { user, password } = cur;
            checks.push(
              grantsOf(env, user, password).then(
                (g) => {
                  if (!g.select) failures.push(`${role} ${user}: SELECT refused`);
                  if (g.insert !== (role === 'readwrite')) failures.push(`${role} ${user}: INSERT ${g.insert ? 'allowed' : `refused (${g.denied})`}`);
                  if (!g.insert && g.denied !== '42501') failures.push(`${role} ${user}: INSERT failed with ${g.denied}, expected 42501`);
                },
                (e) => void failures.push(`${role} ${user}: login failed (${e.code ?? e.message})`),
              ),
            );
          }
          const r = await pg.query('SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1', [cur.user]);
          const until = (r.rows[0]?.rolvaliduntil as Date | undefined)?.getTime();
          if (until !== undefined && entry.validUntil.at(-1) !== until) entry.validUntil.push(until);
        }
        await new Promise((res) => setTimeout(res, Math.max(0, 1000 - (Date.now() - tick))));
      }
      await Promise.all(checks);
    } finally {
      await agent.stop();
      await pg.end();
    }

    const log = fs.readFileSync(logFile, 'utf8');
    assert.doesNotMatch(log, /permission denied|Code: 403/, `the agent met a refusal; see ${logFile}`);
    assert.deepEqual(failures, [], 'every rendered pair logs in with its role\'s grants');
    let total = 0;
    for (const role of ROLES) {
      const list = rendered.get(role)!;
      total += leasesSeen.get(role)!.size;
      console.log(`# figure: bao agent, ${role}: ${leasesSeen.get(role)!.size} leases over ${runSeconds}s (max ${maxLive.get(role)} live at once), ${list.length} credentials rendered`);
      assert.ok(maxLive.get(role)! <= 2, `${role}: at most 2 live leases at any time (saw ${maxLive.get(role)})`);
      assert.ok(list.length >= 2, `${role}: new credentials rendered at max TTL (rendered ${list.length})`);
      assert.ok(leasesSeen.get(role)!.size <= Math.ceil(runSeconds / MAX_TTL) + 2, `${role}: ${leasesSeen.get(role)!.size} leases is a storm`);
      for (let i = 1; i < list.length; i++) {
        const gap = (list[i].firstSeen - list[i - 1].firstSeen) / 1000;
        assert.ok(gap <= MAX_TTL + 2, `${role}: credential ${i} rendered ${gap.toFixed(1)}s after the previous one, past the max TTL`);
      }
      const renewed = list.filter((e) => e.validUntil.length >= 2);
      assert.ok(renewed.length >= 1, `${role}: a renewal kept the username and moved VALID UNTIL (${JSON.stringify(list.map((e) => e.validUntil.length))})`);
      for (const e of renewed) {
        assert.ok(e.validUntil.every((v, i) => i === 0 || v > e.validUntil[i - 1]), `${role}: VALID UNTIL of ${e.user} only moves forward`);
      }
    }
    console.log(`# figure: bao agent: ${total} leases created in total over ${runSeconds}s for ${ROLES.length} roles (${DEFAULT_TTL}s TTL, ${MAX_TTL}s max)`);

    // psql with the agent's rendered service file, exactly as the README shows it.
    const psql = h.psqlBinary();
    const ro = (args: string[]) => spawnSync(psql, ['service=readonly', '-v', 'ON_ERROR_STOP=1', '-X', '-At', ...args], { encoding: 'utf8', env: { ...process.env, PGSERVICEFILE: path.join(dir, 'readonly.service') } });
    const latest = readService(path.join(dir, 'readonly.service'))!;
    const who = ro(['-c', `SELECT current_user, has_table_privilege('${env.database.schema}.items', 'INSERT')`]);
    assert.equal(who.status, 0, `psql with the rendered readonly credential: ${who.stderr}`);
    assert.equal(who.stdout.trim(), `${latest.user}|f`);
    const write = ro(['-c', `INSERT INTO ${env.database.schema}.items (name) VALUES ('no')`]);
    assert.notEqual(write.status, 0);
    assert.match(write.stderr, /permission denied for table items/);
  });

  test('the Go client (`bao lease renew/revoke`) and plain HTTP (lease_id in the body) renew and revoke the app\'s leases, and get 403 for any other role\'s', async () => {
    const dir = path.join(work, 'cli');
    fs.mkdirSync(dir, { mode: 0o700 });
    const token = await appToken(dir);
    await withOutsideRoles(env, admin, mount, ['outside'], async () => {
      const outsideRead = await vault(admin, 'GET', `${mount}/creds/outside`);
      const outside = expectStatus(outsideRead, 200, 'admin reads creds of a role outside the policy').lease_id as string;
      assert.equal((await vault(token, 'GET', `${mount}/creds/outside`)).status, 403, 'the app may not read the outside role');
      try {
        for (const role of ROLES) {
          // The Go client: `lease renew` sends PUT sys/leases/renew with the lease_id in the body.
          const read = bao(token, 'read', '-format=json', `${mount}/creds/${role}`);
          assert.equal(read.status, 0, `bao read ${mount}/creds/${role}: ${read.stderr}`);
          const issued = JSON.parse(read.stdout);
          const renew = bao(token, 'lease', 'renew', '-format=json', '-increment=10s', issued.lease_id);
          assert.equal(renew.status, 0, `bao lease renew (${role}): ${renew.stderr}`);
          assert.equal(JSON.parse(renew.stdout).lease_id, issued.lease_id);
          const revoke = bao(token, 'lease', 'revoke', issued.lease_id);
          assert.equal(revoke.status, 0, `bao lease revoke (${role}): ${revoke.stderr}`);
          // Without -sync the CLI only queues the revocation.
          await h.waitFor(`the Go client's revocation of a ${role} lease`, async () => !(await liveLeases(admin, mount, role)).includes(issued.lease_id), 10_000);

          // hvac and Spring Vault: PUT sys/leases/renew and sys/leases/revoke, lease_id in the body.
          const again = expectStatus(await vault(token, 'GET', `${mount}/creds/${role}`), 200, `app reads ${role}`);
          const renewed = expectStatus(await vault(token, 'PUT', 'sys/leases/renew', { lease_id: again.lease_id, increment: 10 }), 200, `body-form renew (${role})`);
          assert.equal(renewed.lease_id, again.lease_id);
          expectStatus(await vault(token, 'PUT', 'sys/leases/revoke', { lease_id: again.lease_id, sync: true }), 204, `body-form revoke (${role})`);
          assert.ok(!(await liveLeases(admin, mount, role)).includes(again.lease_id), 'revoked through the body form');
          const pg = await h.adminClient(env);
          try {
            const left = await pg.query('SELECT 1 FROM pg_roles WHERE rolname = ANY($1)', [[issued.data.username, again.data.username]]);
            assert.equal(left.rowCount, 0, `${role}: the revocations dropped both Postgres users`);
          } finally {
            await pg.end();
          }
        }

        // The same requests for a lease of a role outside the policy.
        const renewOut = bao(token, 'lease', 'renew', outside);
        assert.notEqual(renewOut.status, 0);
        assert.match(renewOut.stderr, /Code: 403|permission denied/);
        const revokeOut = bao(token, 'lease', 'revoke', outside);
        assert.notEqual(revokeOut.status, 0);
        assert.match(revokeOut.stderr, /Code: 403|permission denied/);
        assert.equal((await vault(token, 'PUT', 'sys/leases/renew', { lease_id: outside, increment: 10 })).status, 403, 'body-form renew of another role');
        assert.equal((await vault(token, 'PUT', 'sys/leases/revoke', { lease_id: outside })).status, 403, 'body-form revoke of another role');
        assert.equal((await vault(token, 'PUT', `sys/leases/renew/${outside}`, {})).status, 403, 'URL-form renew of another role');
        assert.ok((await liveLeases(admin, mount, 'outside')).includes(outside), 'the outside lease is still live');

        // Everything else about leases stays closed too.
        const own = expectStatus(await vault(token, 'GET', `${mount}/creds/readonly`), 200, 'app reads readonly');
        for (const [method, p, body] of [
          ['PUT', 'sys/leases/renew', { lease_id: own.lease_id, increment: 10, extra: 1 }],
          ['PUT', 'sys/leases/revoke', { lease_id: `${mount}/creds/*` }],
          ['PUT', 'sys/leases/lookup', { lease_id: own.lease_id }],
          ['LIST', `sys/leases/lookup/${mount}/creds/readonly/`, undefined],
          ['PUT', `sys/leases/revoke-prefix/${mount}/creds/readonly`, {}],
          ['PUT', `sys/leases/revoke-force/${mount}/creds/readonly`, {}],
          ['PUT', 'sys/renew', { lease_id: own.lease_id }],
          ['PUT', 'sys/revoke', { lease_id: own.lease_id }],
          ['POST', 'sys/capabilities-self', { paths: ['sys/mounts'] }],
          ['GET', 'sys/mounts', undefined],
        ] as const) {
          assert.equal((await vault(token, method, p, body)).status, 403, `${method} ${p} ${JSON.stringify(body ?? {})} must be forbidden`);
        }
        expectStatus(await vault(token, 'PUT', `sys/leases/revoke/${own.lease_id}`, {}), 204, 'URL-form revoke of its own lease (our client)');
      } finally {
        await vault(admin, 'PUT', 'sys/leases/revoke', { lease_id: outside });
      }
    });
    await vault(token, 'POST', 'auth/token/revoke-self');
  });

  test('Vault\'s own connection cannot grant pg_* roles, superuser or the admin role', async () => {
    const pg = await h.adminClient(env);
    const attempts: Record<string, string> = {
      'esc-exec': 'GRANT pg_execute_server_program TO "{{name}}";',
      'esc-read': 'GRANT pg_read_server_files TO "{{name}}";',
      'esc-write': 'GRANT pg_write_server_files TO "{{name}}";',
      'esc-super': 'ALTER ROLE "{{name}}" SUPERUSER;',
      'esc-admin': `GRANT "${env.postgres.adminUser}" TO "{{name}}";`,
    };
    const privileged = async () =>
      (
        await pg.query(
          `SELECT r.rolname, g.rolname AS granted FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid JOIN pg_roles g ON g.oid = m.roleid
            WHERE g.rolname IN ('pg_execute_server_program', 'pg_read_server_files', 'pg_write_server_files', $1)
           UNION ALL SELECT rolname, 'SUPERUSER' FROM pg_roles WHERE rolsuper AND rolname <> $1 ORDER BY 1, 2`,
          [env.postgres.adminUser],
        )
      ).rows;
    const before = await privileged();
    try {
      await withOutsideRoles(env, admin, mount, Object.keys(attempts), async () => {
        for (const [role, statement] of Object.entries(attempts)) {
          expectStatus(
            await vault(admin, 'POST', `${mount}/roles/${role}`, {
              db_name: env.secretsEngine.connectionName,
              creation_statements: [`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`, statement],
              default_ttl: DEFAULT_TTL,
              max_ttl: MAX_TTL,
            }),
            204,
            `write role ${role}`,
          );
          const creds = await vault(admin, 'GET', `${mount}/creds/${role}`);
          assert.notEqual(creds.status, 200, `${role}: Vault must not issue credentials (${statement})`);
          assert.match(JSON.stringify(creds.body.errors), /permission denied/, `${role}: Postgres's permission error`);
          console.log(`# ${role}: refused: ${String((creds.body.errors ?? []).join(' ')).match(/permission denied[^(\n]*/)?.[0]?.trim()}`);
        }
      });
      assert.deepEqual(await privileged(), before, 'no pg_* membership, superuser or admin-role grant was added');
      const leftovers = await pg.query("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%esc-%'");
      assert.deepEqual(leftovers.rows, [], 'the failed creations left no role behind');
    } finally {
      await pg.end();
    }

    // The temporary widening of allowed_roles was undone: Terraform sees no drift.
    const log = process.env.PGVAULT_CDKTF_LOG!;
    const from = fs.existsSync(log) ? fs.statSync(log).size : 0;
    await h.deploy(ENV);
    const text = fs.readFileSync(log, 'utf8').slice(from);
    const noChanges = text.match(/No changes\. Your infrastructure matches the configuration\./g) ?? [];
    assert.equal(noChanges.length, 2, `both stacks report no changes after the test restored allowed_roles:\n${text.split('\n').filter((l) => /change|add|destroy|replace|update/i.test(l)).slice(-20).join('\n')}`);
  });
});

/**
 * Runs `fn` with `names` admitted by the connection's allowed_roles (set through the admin
 * token), then removes those roles and restores allowed_roles exactly.
 */
async function withOutsideRoles(env: EnvironmentConfig, admin: string, mount: string, names: string[], fn: () => Promise<void>): Promise<void> {
  const conn = `${mount}/config/${env.secretsEngine.connectionName}`;
  const original: string[] = expectStatus(await vault(admin, 'GET', conn), 200, 'read the connection').data.allowed_roles;
  expectStatus(await vault(admin, 'POST', conn, { allowed_roles: [...original, ...names], verify_connection: false }), 204, 'widen allowed_roles');
  try {
    for (const name of names.filter((n) => n === 'outside')) {
      expectStatus(
        await vault(admin, 'POST', `${mount}/roles/${name}`, {
          db_name: env.secretsEngine.connectionName,
          creation_statements: [`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE ${env.database.groupRoles.read};`],
          default_ttl: DEFAULT_TTL,
          max_ttl: MAX_TTL,
        }),
        204,
        `write role ${name}`,
      );
    }
    await fn();
  } finally {
    for (const name of names) await vault(admin, 'DELETE', `${mount}/roles/${name}`);
    const restored = await vault(admin, 'POST', conn, { allowed_roles: original, verify_connection: false });
    expectStatus(restored, 204, 'restore allowed_roles');
    assert.deepEqual(expectStatus(await vault(admin, 'GET', conn), 200, 'read the connection').data.allowed_roles, original);
  }
}
