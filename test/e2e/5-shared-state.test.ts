/**
 * End to end on shared Terraform state: an existing-infrastructure environment whose state is in
 * Postgres (Terraform's pg backend), deployed from two clones of the repository at different
 * paths. A real Postgres (the host's PostgreSQL 15; a second database holds the state) and a real
 * OpenBao dev server with TLS run as host processes, as in 3-existing. Every deploy and destroy
 * is `node dist/scripts/cli.js` in its clone, as `npm run deploy` runs it.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import { Client } from 'pg';
import { EnvironmentConfig, REPO_ROOT, localDir } from '../../stacks/config';
import { stateSchema } from '../../stacks/common';
import * as h from '../harness';

const ENV = 'shared-state';
const PG_PORT = 25460;
const VAULT_PORT = 28260;
const SCHEMA = stateSchema('team_state', `${ENV}-secrets`);
const LOCK_MESSAGE = new RegExp(`another deploy of ${ENV} holds the state lock`);


interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  seconds: number;
  endedAt: number;
  log: string;
}

interface Run {
  readonly label: string;
  readonly child: ChildProcess;
  readonly done: Promise<Finished>;
}

/** The processes under `root` (by parent pid), `root` included: a deploy's Terraform runs in a pty session of its own. */
function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(d)]);
    } catch {
      // gone meanwhile
    }
  }
  const all = [root];
  for (let i = 0; i < all.length; i++) all.push(...(children.get(all[i]) ?? []));
  return all;
}

/** Running (a zombie that only waits for its parent to reap it does not count). */
function running(pid: number): boolean {
  try {
    return !/^Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]);
  } catch {
    return false;
  }
}

/** Where two states' resources differ: "<resource address> <attribute>" for each attribute. */
function stateDifferences(a: string, b: string): string[] {
  const index = (data: string) => {
    const out = new Map<string, string>();
    for (const r of JSON.parse(data).resources ?? []) {
      for (const [i, inst] of (r.instances ?? []).entries()) {
        for (const [k, v] of Object.entries(inst.attributes ?? {})) out.set(`${r.type}.${r.name}[${i}] ${k}`, JSON.stringify(v));
      }
    }
    return out;
  };
  const [x, y] = [index(a), index(b)];
  return [...new Set([...x.keys(), ...y.keys()])].filter((k) => x.get(k) !== y.get(k)).map((k) => `${k}: ${x.get(k)} -> ${y.get(k)}`);
}

describe('shared state in Postgres, two clones, one lock', () => {
  let work: string;
  let cloneB: string;
  let logs: string;
  let runs = 0;
  let env: EnvironmentConfig;
  let postgres: h.HostProcess | undefined;
  let vault: h.HostProcess | undefined;
  let superuser: Client | undefined;
  let stateDb: Client | undefined;
  let statePassword: string;
  let secretValues: Record<string, string>;
  let envFile: string;
  const started: Run[] = [];

  /** `npm run <command> -- <env>` in a clone, in a process group of its own; cdktf's output in its own log. */
  function run(clone: string, command: 'deploy' | 'destroy', label: string, extraEnv: NodeJS.ProcessEnv = {}): Run {
    const log = path.join(logs, `${++runs}-${label}.log`);
    const t = Date.now();
    const childEnv: NodeJS.ProcessEnv = { ...process.env, ...extraEnv, PGVAULT_CDKTF_LOG: log };
    delete childEnv.PGVAULT_LOCAL_DIR; // each clone keeps its own .local/
    const child = spawn(process.execPath, [path.join(clone, 'dist', 'scripts', 'cli.js'), command, ENV], { cwd: clone, env: childEnv, detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    const done = new Promise<Finished>((resolve) =>
      child.on('close', (code, signal) => resolve({ code, signal, stderr, seconds: (Date.now() - t) / 1000, endedAt: Date.now(), log: fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : '' })),
    );
    const r = { label, child, done };
    started.push(r);
    return r;
  }

  async function succeeds(r: Run): Promise<Finished> {
    const f = await r.done;
    assert.equal(f.code, 0, `${r.label} failed (exit ${f.code}):\n${f.stderr}\n--- cdktf log tail ---\n${f.log.split('\n').slice(-30).join('\n')}`);
    return f;
  }

  /** The stored state of the stack, as the pg backend keeps it. */
  async function storedState(): Promise<{ id: string; data: string; serial: number; count: number }> {
    const r = await stateDb!.query(`SELECT id::text, name, data FROM ${SCHEMA}.states`);
    const row = r.rows.find((x) => x.name === 'default');
    return { id: row?.id, data: row?.data ?? '', serial: row ? JSON.parse(row.data).serial : -1, count: r.rowCount ?? 0 };
  }

  /** Who holds the stack's state lock: the backend's session-level advisory lock on the state row's id (README, "Working as a team"). */
  async function lockHolders(): Promise<{ pid: number; application_name: string }[]> {
    const r = await stateDb!.query(
      `SELECT a.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         JOIN ${SCHEMA}.states s ON l.objid = s.id AND l.classid = 0
        WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
    );
    return r.rows;
  }

  /** The first deploy whose Terraform holds the lock (the deploy's own check before the synth shows as "deploy-check"). */
  async function waitForLockHolder(timeoutMs: number): Promise<{ pid: number; application_name: string }> {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      const holder = (await lockHolders()).find((x) => x.application_name.startsWith(`pgvault deploy ${ENV} `));
      if (holder) return holder;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`no deploy took the state lock within ${timeoutMs / 1000}s`);
  }

  async function vaultUserPassword(): Promise<string> {
    return (await superuser!.query('SELECT rolpassword FROM pg_authid WHERE rolname = $1', [env.secretsEngine.vaultUser])).rows[0]?.rolpassword;
  }

  /** The operator's secret files, the same in each clone, where the environment file's relative paths point. */
  function placeSecrets(root: string, files: Record<string, string>): void {
    const dir = path.join(root, '.local', ENV);
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text, { mode: 0o600 });
  }

  before(async () => {
    h.requireToolchain();
    const bin = h.hostPostgres().bin;
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-shared-'));
    fs.chmodSync(work, 0o755);
    logs = path.join(work, 'logs');
    fs.mkdirSync(logs);
    console.log(`# cdktf logs of each run: ${logs}`);
    const pgPassword = crypto.randomBytes(18).toString('base64url');
    const rootToken = crypto.randomBytes(16).toString('hex');
    statePassword = crypto.randomBytes(18).toString('base64url');

    // Clone B: a fresh clone at another path, with this tree's uncommitted files, its own build.
    const clone = await h.timed(async () => {
      cloneB = path.join(work, 'clone-b');
      const git = spawnSync('git', ['clone', '-q', REPO_ROOT, cloneB], { encoding: 'utf8' });
      if (git.status !== 0) throw new Error(`end-to-end prerequisite missing: a second clone of this repository (git clone ${REPO_ROOT}) failed: ${git.stderr.trim()}; run the tests from a git checkout, with git installed`);
      const files = spawnSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: REPO_ROOT, encoding: 'utf8' }).stdout.split('\0').filter(Boolean);
      for (const f of files) {
        if (!fs.existsSync(path.join(REPO_ROOT, f))) continue;
        fs.mkdirSync(path.dirname(path.join(cloneB, f)), { recursive: true });
        fs.copyFileSync(path.join(REPO_ROOT, f), path.join(cloneB, f));
      }
      fs.symlinkSync(path.join(REPO_ROOT, 'node_modules'), path.join(cloneB, 'node_modules'));
      // Clone A's incremental build as the start: tsc rebuilds whatever differs in clone B's sources.
      fs.cpSync(path.join(REPO_ROOT, 'dist'), path.join(cloneB, 'dist'), { recursive: true });
      const tsc = spawnSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', '.'], { cwd: cloneB, encoding: 'utf8' });
      if (tsc.status !== 0) throw new Error(`build of clone B failed: ${tsc.stdout}${tsc.stderr}`);
    });
    console.log(`# figure: clone B (git clone, node_modules symlinked, tsc build): ${clone.seconds.toFixed(1)}s`);

    // Postgres: the app's database and, beside it, the state database with a role of its own.
    const pg = await h.startHostPostgres({ bin, work, port: PG_PORT, password: pgPassword });
    postgres = pg.server;
    superuser = pg.superuser;
    await superuser!.query('CREATE DATABASE app');
    await superuser!.query(`CREATE ROLE pgvault_state LOGIN PASSWORD '${statePassword}'`);
    await superuser!.query('CREATE DATABASE pgvault_state OWNER pgvault_state');
    stateDb = new Client({ host: '127.0.0.1', port: PG_PORT, user: 'pgvault_state', password: statePassword, database: 'pgvault_state' });
    stateDb.on('error', () => undefined);
    await stateDb.connect();

    // OpenBao in dev mode with TLS; its log holds the root token, so it lives with the secrets.
    const tls = path.join(work, 'vault-tls');
    fs.mkdirSync(tls);
    vault = h.startProcess(process.env.VAULT_SERVER_BIN!, ['server', '-dev', '-dev-tls', `-dev-tls-cert-dir=${tls}`, `-dev-listen-address=127.0.0.1:${VAULT_PORT}`], {
      env: { BAO_DEV_ROOT_TOKEN_ID: rootToken, VAULT_DEV_ROOT_TOKEN_ID: rootToken, HOME: work },
      logFile: path.join(fs.mkdtempSync(path.join(work, 'private-')), 'vault.log'), // mkdtemp: mode 0700
    });
    await h.waitFor('Vault to write its CA', async () => fs.existsSync(path.join(tls, 'vault-ca.pem')));

    // One environment file for both clones; its secret files are named relative to each clone.
    const rel = (f: string) => `.local/${ENV}/${f}`;
    const envDir = h.scratchEnvironment('existing-example', (doc) => {
      doc.postgres = { ...doc.postgres, host: '127.0.0.1', port: PG_PORT, sslmode: 'disable', adminPasswordFile: rel('postgres-admin-password') };
      doc.vault = { ...doc.vault, address: `https://127.0.0.1:${VAULT_PORT}`, caCertFile: rel('vault-ca.pem'), tokenFile: rel('vault-token') };
      doc.state = { backend: 'pg', connectionFile: rel('state-db'), schemaPrefix: 'team_state' };
    }, ENV);
    envFile = path.join(envDir, `${ENV}.json`);
    const files = {
      'postgres-admin-password': pgPassword,
      'vault-token': rootToken,
      'vault-ca.pem': fs.readFileSync(path.join(tls, 'vault-ca.pem'), 'utf8'),
      'state-db': `postgres://pgvault_state:${statePassword}@127.0.0.1:${PG_PORT}/pgvault_state?sslmode=disable`,
    };
    fs.rmSync(localDir(ENV), { recursive: true, force: true }); // an interrupted earlier run's files describe servers that are gone
    placeSecrets(REPO_ROOT, files);
    placeSecrets(cloneB, files);
    env = h.loadEnvironment(ENV);
    await h.waitFor('Vault to answer over TLS', async () => Boolean(await h.vaultAdmin(env, 'GET', 'sys/health')));
    const keyFile = fs.readdirSync(tls).find((f) => /key/.test(f));
    secretValues = {
      'the Postgres superuser password': pgPassword,
      'the Vault token': rootToken,
      "the state database's password": statePassword,
      ...(keyFile ? { "Vault's TLS private key": fs.readFileSync(path.join(tls, keyFile), 'utf8').split('\n').filter((l) => l && !l.startsWith('-----'))[0] } : {}),
    };
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  after(async () => {
    for (const r of started) {
      if (r.child.exitCode === null && r.child.signalCode === null) {
        try {
          process.kill(-r.child.pid!, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
    // Whatever is left goes with the servers; destroy from clone A when a test failed half-way.
    if (env && (await storedState().catch(() => ({ count: 0, data: '' }))).data.includes('"managed"')) {
      const r = run(REPO_ROOT, 'destroy', 'cleanup-destroy');
      const f = await r.done;
      if (f.code !== 0) console.error(`cleanup destroy failed: ${f.stderr}`);
    }
    await stateDb?.end().catch(() => undefined);
    await superuser?.end().catch(() => undefined);
    await vault?.stop();
    await postgres?.stop();
    fs.rmSync(localDir(ENV), { recursive: true, force: true });
    if (work && !process.env.PGVAULT_KEEP_TEST_LOGS) fs.rmSync(work, { recursive: true, force: true });
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  test('a deploy from clone A keeps one state per stack in Postgres, holding no secret and no path of this machine', async () => {
    const f = await succeeds(run(REPO_ROOT, 'deploy', 'deploy-a'));
    console.log(`# figure: first deploy from clone A (state in Postgres): ${f.seconds.toFixed(1)}s`);
    const schemas = await stateDb!.query("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'team_state%' ORDER BY 1");
    assert.deepEqual(schemas.rows.map((r) => r.nspname), [SCHEMA], 'one schema per stack (this environment has one stack)');
    const state = await storedState();
    assert.equal(state.count, 1, 'one state in it');
    const resources = JSON.parse(state.data).resources.filter((r: any) => r.mode === 'managed');
    assert.ok(resources.length >= 10, `the stack's resources are in it (${resources.length})`);
    console.log(`# figure: resources in the shared state: ${resources.length}; state size ${state.data.length} bytes`);

    const setupA = fs.readFileSync(env.secretsEngine.setupPasswordFile, 'utf8').trim();
    for (const [what, value] of Object.entries({ ...secretValues, 'the setup password': setupA })) {
      assert.ok(value.length >= 16, `${what} is a real value`);
      assert.ok(!state.data.includes(value), `the stored state holds ${what}`);
    }
    assert.ok(!/PRIVATE KEY/.test(state.data), 'the stored state holds a private key');
    assert.ok(!state.data.includes(REPO_ROOT), "the stored state holds clone A's path");
    const synthesized = fs.readFileSync(path.join(REPO_ROOT, 'cdktf.out', 'stacks', `${ENV}-secrets`, 'cdk.tf.json'), 'utf8');
    assert.deepEqual(JSON.parse(synthesized).terraform.backend, { pg: { schema_name: SCHEMA } });
    assert.ok(!synthesized.includes(statePassword) && !synthesized.includes('postgres://'), 'no connection string in cdk.tf.json');
    assert.ok(!fs.existsSync(path.join(localDir(ENV), 'state', `${ENV}-secrets.tfstate`)), 'no local state file');
    assert.equal(JSON.parse(fs.readFileSync(path.join(localDir(ENV), 'outputs.json'), 'utf8')).environment, ENV);
  });

  test('a deploy from clone B, at another path, plans no change and rewrites nothing in Vault', async () => {
    const before = await storedState();
    const password = await vaultUserPassword();
    const config = (await h.vaultAdmin(env, 'GET', `${env.secretsEngine.mountPath}/config/${env.secretsEngine.connectionName}`)).data;
    const f = await succeeds(run(cloneB, 'deploy', 'deploy-b'));
    console.log(`# figure: no-change deploy from clone B: ${f.seconds.toFixed(1)}s`);
    assert.match(f.log, /No changes\. Your infrastructure matches the configuration\./, 'Terraform reports no changes');
    assert.doesNotMatch(f.log, /will be (created|updated|destroyed|replaced)|must be replaced|Creation complete|Modifications complete|Destruction complete/, 'nothing planned or applied');
    assert.equal(await vaultUserPassword(), password, "root was not rotated again: Postgres still has the password Vault rotated to (its SCRAM verifier is unchanged)");
    assert.deepEqual((await h.vaultAdmin(env, 'GET', `${env.secretsEngine.mountPath}/config/${env.secretsEngine.connectionName}`)).data, config, "the connection's configuration is unchanged");
    const after = await storedState();
    // The Vault provider's refresh turns a first apply's unset lists and maps into empty ones,
    // from any machine; anything else that moved would be a change or a replacement.
    const differences = stateDifferences(before.data, after.data);
    assert.deepEqual(differences.filter((d) => !/: null -> (\{\}|\[\])$/.test(d)), [], 'the resources in the state are as clone A left them');
    console.log(`# figure: state attributes that clone B's refresh normalized (null -> empty): ${differences.length}`);
    assert.ok(!after.data.includes(fs.readFileSync(path.join(cloneB, '.local', ENV, 'vault-setup-password'), 'utf8').trim()), "no setup password of clone B's");
    assert.ok(!after.data.includes(cloneB), "no path of clone B's machine");
    const creds = await h.vaultAdmin(env, 'GET', `${env.secretsEngine.mountPath}/creds/readonly`);
    assert.equal(await h.tryLogin(env, creds.data.username, creds.data.password), 'ok', "Vault's connection still works");
    await h.vaultAdmin(env, 'PUT', 'sys/leases/revoke', { lease_id: creds.lease_id });
    const outB = JSON.parse(fs.readFileSync(path.join(cloneB, '.local', ENV, 'outputs.json'), 'utf8'));
    assert.equal(outB.approle_role_id, JSON.parse(fs.readFileSync(path.join(localDir(ENV), 'outputs.json'), 'utf8')).approle_role_id, 'clone B gets the outputs too');
  });

  test('two deploys at once, one per clone: exactly one proceeds, the other fails within seconds with the lock message', async () => {
    // A real change, so that there is something to half-apply: the bootstrap runs again and root is rotated.
    const doc = JSON.parse(fs.readFileSync(envFile, 'utf8'));
    doc.secretsEngine = { ...doc.secretsEngine, setupPasswordVersion: 2 };
    fs.writeFileSync(envFile, JSON.stringify(doc, null, 2));
    const password = await vaultUserPassword();
    const a = run(REPO_ROOT, 'deploy', 'race-a');
    const b = run(cloneB, 'deploy', 'race-b');
    // The first to take the lock is held there (stopped) until the other has finished, so the two
    // overlap however the start-up times fall; the holder is named by its application_name.
    const holder = await waitForLockHolder(60_000);
    const lockedAt = Date.now();
    const winner = [a, b].find((r) => holder.application_name.includes(`pid ${r.child.pid} `));
    assert.ok(winner, `the lock holder is one of the two deploys (${holder.application_name})`);
    const loser = winner === a ? b : a;
    const stopped = processTree(winner.child.pid!);
    for (const pid of stopped) process.kill(pid, 'SIGSTOP');
    let l: Finished;
    try {
      l = await Promise.race([loser.done, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${loser.label} still runs 60s after the lock was taken`)), 60_000))]);
    } finally {
      for (const pid of stopped) if (running(pid)) process.kill(pid, 'SIGCONT');
    }
    assert.notEqual(l.code, 0, `${loser.label} must fail`);
    assert.match(l.stderr, LOCK_MESSAGE, `${loser.label} says why:\n${l.stderr}`);
    assert.match(l.stderr, /pg_terminate_backend/, 'and what to do');
    assert.doesNotMatch(l.stderr, /partly deployed/, 'it changed nothing');
    assert.doesNotMatch(l.log, /Creating\.\.\.|Modifying\.\.\.|Destroying\.\.\./, 'the loser applied nothing');
    const w = await succeeds(winner);
    // The loser meets the lock at its check before the synth (the winner's check or Terraform hold it), or at Terraform's own.
    const where = /Error acquiring the state lock/.test(l.log) ? `at Terraform's lock, ${((l.endedAt - lockedAt) / 1000).toFixed(1)}s after ${winner.label}'s Terraform took it` : 'at its check before the synth';
    console.log(`# figure: lock conflict: ${loser.label} failed ${l.seconds.toFixed(1)}s after its start, ${where}; ${winner.label} finished in ${w.seconds.toFixed(1)}s`);
    assert.ok(l.endedAt - lockedAt < 30_000, `the loser fails within seconds of meeting the lock (${((l.endedAt - lockedAt) / 1000).toFixed(1)}s)`);
    assert.notEqual(await vaultUserPassword(), password, 'the winner re-ran the bootstrap and rotated root');
    const again = await succeeds(run(REPO_ROOT, 'deploy', 'after-race'));
    assert.match(again.log, /No changes\./, 'nothing is half-applied: the next deploy has nothing to do');
    const creds = await h.vaultAdmin(env, 'GET', `${env.secretsEngine.mountPath}/creds/readwrite`);
    assert.equal(await h.tryLogin(env, creds.data.username, creds.data.password), 'ok');
    await h.vaultAdmin(env, 'PUT', 'sys/leases/revoke', { lease_id: creds.lease_id });
  });

  test('a deploy killed with SIGKILL (its whole process group) while it holds the lock: the lock dies with its session', async () => {
    const doc = JSON.parse(fs.readFileSync(envFile, 'utf8'));
    doc.roles.readonly.defaultTtlSeconds = 1200; // something to apply
    fs.writeFileSync(envFile, JSON.stringify(doc, null, 2));
    const r = run(REPO_ROOT, 'deploy', 'killed');
    await waitForLockHolder(60_000);
    const tree = processTree(r.child.pid!);
    const comm = (pid: number) => {
      try {
        return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
      } catch {
        return '?';
      }
    };
    const names = tree.map(comm);
    const killedAt = Date.now();
    process.kill(-r.child.pid!, 'SIGKILL');
    await r.done;
    let released = -1;
    for (let i = 0; i < 100 && released < 0; i++) {
      if ((await lockHolders()).length === 0) released = (Date.now() - killedAt) / 1000;
      else await new Promise((res) => setTimeout(res, 100));
    }
    await new Promise((res) => setTimeout(res, 1000));
    const survivors = tree.filter(running);
    const survived = survivors.map(comm);
    for (const pid of survivors) process.kill(pid, 'SIGKILL'); // ours, started under the killed group (Terraform's pty session)
    console.log(`# figure: lock released ${released.toFixed(2)}s after SIGKILL of the deploy's process group (${names.join(', ')}; still running 1 s after that: ${survived.join(', ') || 'none'})`);
    assert.ok(released >= 0, 'the lock was released when the killed deploy\'s database session ended');
    const next = await succeeds(run(cloneB, 'deploy', 'after-kill'));
    console.log(`# figure: the next deploy (clone B) after the kill: ${next.seconds.toFixed(1)}s`);
    const role = await h.vaultAdmin(env, 'GET', `${env.secretsEngine.mountPath}/roles/readonly`);
    assert.equal(role.data.default_ttl, 1200);
  });

  test("a stuck lock holder: Terraform's lock error and the early check both refuse a destroy, and the README recovery (pg_terminate_backend) frees it", async () => {
    // A session that holds the lock and does nothing, like a hung deploy on a machine that is still up.
    const stuck = new Client({ host: '127.0.0.1', port: PG_PORT, user: 'pgvault_state', password: statePassword, database: 'pgvault_state', application_name: 'stuck deploy' });
    stuck.on('error', () => undefined);
    await stuck.connect();
    // Taken once the destroy is past its own check, while its first `terraform apply`/`destroy`
    // waits at a gate (a wrapper around the real binary), so that Terraform itself meets it.
    const gate = path.join(work, 'terraform-gate');
    const wrapper = path.join(work, 'terraform-gated');
    fs.writeFileSync(
      wrapper,
      '#!/bin/sh\n' +
        'case "$1" in apply|destroy) : > "$GATE.reached"; i=0; while [ ! -e "$GATE.open" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done;; esac\n' +
        `exec '${process.env.TERRAFORM_BINARY_NAME || 'terraform'}' "$@"\n`,
      { mode: 0o755 },
    );
    const late = run(cloneB, 'destroy', 'destroy-locked-late', { TERRAFORM_BINARY_NAME: wrapper, GATE: gate });
    await h.waitFor('the destroy to reach terraform (past its own lock check)', async () => fs.existsSync(`${gate}.reached`), 60_000);
    const took = await stuck.query(`SELECT pg_try_advisory_lock(id) AS locked FROM ${SCHEMA}.states WHERE name = 'default'`);
    fs.writeFileSync(`${gate}.open`, '');
    assert.equal(took.rows[0].locked, true);
    const lateRefusal = await late.done;
    assert.notEqual(lateRefusal.code, 0);
    assert.match(lateRefusal.log, /Error acquiring the state lock/, "Terraform's own lock refused it");
    assert.match(lateRefusal.stderr, LOCK_MESSAGE, lateRefusal.stderr);
    assert.doesNotMatch(lateRefusal.log, /Destroying\.\.\./);
    const refused = await run(cloneB, 'destroy', 'destroy-locked').done;
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, LOCK_MESSAGE, refused.stderr);
    console.log(`# figure: destroy refused by a held lock: at Terraform's lock after ${lateRefusal.seconds.toFixed(1)}s (synth included); at the check before the synth after ${refused.seconds.toFixed(1)}s`);
    const forceUnlock = spawnSync(process.env.TERRAFORM_BINARY_NAME || 'terraform', ['force-unlock', '-force', 'any-id'], {
      cwd: path.join(cloneB, 'cdktf.out', 'stacks', `${ENV}-secrets`),
      env: { ...process.env, PG_CONN_STR: fs.readFileSync(path.join(cloneB, '.local', ENV, 'state-db'), 'utf8').trim() },
      encoding: 'utf8',
      timeout: 120_000,
    });
    assert.equal(forceUnlock.status, 0, `terraform force-unlock: ${forceUnlock.error?.message ?? forceUnlock.stderr}`);
    assert.equal((await lockHolders()).length, 1, "terraform force-unlock from another process does not release it (it says it did)");
    const [holder] = await lockHolders();
    assert.equal(holder.application_name, 'stuck deploy', 'the README query finds the holder');
    await stateDb!.query('SELECT pg_terminate_backend($1)', [holder.pid]);
    await stuck.end().catch(() => undefined);
    await h.waitFor('the lock to go with the session', async () => (await lockHolders()).length === 0, 10_000);
  });

  test('destroy from clone B removes everything the environment created, and leaves the state empty', async () => {
    const f = await succeeds(run(cloneB, 'destroy', 'destroy-b'));
    console.log(`# figure: destroy from clone B: ${f.seconds.toFixed(1)}s`);
    const mounts = await h.vaultAdmin(env, 'GET', 'sys/mounts');
    assert.equal(mounts.data[`${env.secretsEngine.mountPath}/`], undefined, 'no database mount');
    assert.equal((await h.vaultAdmin(env, 'GET', 'sys/auth')).data[`${env.appAccess.approleMount}/`], undefined, 'no AppRole');
    await assert.rejects(h.vaultAdmin(env, 'GET', `sys/policies/acl/${env.appAccess.roleName}`), /404/, 'no policy');
    const roles = await superuser!.query('SELECT rolname FROM pg_roles WHERE rolname = ANY($1)', [[env.secretsEngine.vaultUser, env.database.groupRoles.read, env.database.groupRoles.write]]);
    assert.deepEqual(roles.rows, [], "Vault's role and the group roles are gone");
    const state = await storedState();
    assert.equal(state.count, 1);
    assert.deepEqual(JSON.parse(state.data).resources, [], 'the state is empty');
    assert.equal((await lockHolders()).length, 0, 'and unlocked');
    assert.ok(!fs.existsSync(path.join(cloneB, '.local', ENV, 'outputs.json')), "clone B's outputs are gone");
    // Clone A learns it from the shared state: its destroy has nothing to do.
    const again = await succeeds(run(REPO_ROOT, 'destroy', 'destroy-a'));
    assert.match(again.stderr, /nothing deployed for shared-state/);
  });
});
