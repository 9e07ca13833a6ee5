/**
 * Two days in minutes: the REST API as a real process on an environment whose secret_id,
 * token and token max TTL last seconds, with an orchestrator refreshing the secret_id file.
 * Also: the token revoked behind the app's back, hostile request lines, a failed transaction
 * in withClient, Vault refusing logins at run time, Vault paused past the leases' expiry
 * (503 within the deadline, bounded renewals, bounded SIGTERM), a wrong secret_id at start,
 * and SIGTERM/SIGINT through `npm run serve` and without npm. Figures print as `# figure:`.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync, ChildProcess } from 'node:child_process';
import { appConfigFromOutputs, CredentialRuntime, readOutputs } from '@pgvault/runtime';
import { EnvironmentConfig, REPO_ROOT } from '../../stacks/config';
import { issueSecretId, outputsFile } from '../../ops';
import * as h from '../harness';

const ENV = 'longrun';
const SERVE = path.join(REPO_ROOT, 'dist', 'api', 'serve.js');
const SECRET_ID_TTL = 15;
const TOKEN_TTL = 6;
const TOKEN_MAX_TTL = 15;
const LEASE_TTL = 10;
const LEASE_MAX_TTL = 30;
/** API ports of this suite: 18190-18199. */
const PORTS = { main: 18190, paused: 18191, refused: 18192, wrongSecret: 18193, npmTerm: 18194, npmInt: 18195, node: 18196 };

interface Served {
  child: ChildProcess;
  port: number;
  log: string;
}

interface LoadResult {
  ok: number;
  failed: number;
  statuses: Record<string, number>;
  slowestMillis: number;
}

async function load(port: number, workers: number, until: () => boolean): Promise<LoadResult> {
  const r: LoadResult = { ok: 0, failed: 0, statuses: {}, slowestMillis: 0 };
  let n = 0;
  const one = async (i: number) => {
    const post = i % 2 === 0;
    const t0 = Date.now();
    let status = 'error';
    try {
      const res = await fetch(`http://127.0.0.1:${port}/items${post ? '' : '?limit=5'}`, {
        method: post ? 'POST' : 'GET',
        headers: post ? { 'content-type': 'application/json' } : undefined,
        body: post ? JSON.stringify({ name: `longrun-${i}` }) : undefined,
        signal: AbortSignal.timeout(30_000),
      });
      await res.arrayBuffer();
      status = String(res.status);
    } catch (e: any) {
      status = e.name ?? 'error';
    }
    r.slowestMillis = Math.max(r.slowestMillis, Date.now() - t0);
    r.statuses[status] = (r.statuses[status] ?? 0) + 1;
    if (/^[23]/.test(status)) r.ok++;
    else r.failed++;
  };
  await Promise.all(Array.from({ length: workers }, async () => {
    while (!until()) await one(n++);
  }));
  return r;
}

async function metric(port: number, name: string, labels = ''): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(name + '{') || line.startsWith(name + ' ')) if (line.includes(labels)) sum += Number(line.split(' ').pop());
  }
  return sum;
}

async function status(port: number, p: string): Promise<number> {
  try {
    return (await fetch(`http://127.0.0.1:${port}${p}`, { signal: AbortSignal.timeout(5000) })).status;
  } catch {
    return 0;
  }
}

function exited(child: ChildProcess, timeoutMs: number): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode);
    const t = setTimeout(() => resolve(null), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(t);
      resolve(code);
    });
  });
}

/** Every process below `pid`, read from /proc. */
function descendants(pid: number): number[] {
  const r = spawnSync('ps', ['-eo', 'pid=,ppid='], { encoding: 'utf8', timeout: 10_000 });
  const children = new Map<number, number[]>();
  for (const line of r.stdout.trim().split('\n')) {
    const [p, pp] = line.trim().split(/\s+/).map(Number);
    children.set(pp, [...(children.get(pp) ?? []), p]);
  }
  const out: number[] = [];
  const walk = (p: number) => {
    for (const c of children.get(p) ?? []) {
      out.push(c);
      walk(c);
    }
  };
  walk(pid);
  return out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Sends raw bytes and returns the status line of the answer ('' when the connection closed without one). */
function rawRequest(port: number, bytes: string): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let data = '';
    s.setTimeout(5000, () => s.destroy());
    s.on('data', (c) => (data += c.toString('latin1')));
    s.on('close', () => resolve(data.split('\r\n')[0]));
    s.on('error', () => undefined);
    s.on('connect', () => s.end(bytes, 'latin1'));
  });
}

describe('long runs in minutes: the API on seconds-long secret_ids, tokens and leases', () => {
  let env: EnvironmentConfig;
  let dir: string;
  const secretFile = () => path.join(dir, 'secret-id');
  const issuedSecretIds: string[] = [];
  let orchestrator: NodeJS.Timeout | undefined;
  let main: Served | undefined;
  const started: ChildProcess[] = [];

  /** The test's orchestrator: a fresh secret_id into the file, replaced atomically. */
  const refreshSecretId = async () => {
    const id = await issueSecretId(ENV);
    issuedSecretIds.push(id);
    const tmp = `${secretFile()}.tmp`;
    fs.writeFileSync(tmp, id + '\n', { mode: 0o600 });
    fs.renameSync(tmp, secretFile());
  };
  const startOrchestrator = () => {
    orchestrator = setInterval(() => void refreshSecretId().catch((e) => console.error(`orchestrator: ${e.message}`)), (SECRET_ID_TTL * 1000) / 2.5);
  };
  const stopOrchestrator = () => clearInterval(orchestrator);

  const serve = (port: number, extraEnv: NodeJS.ProcessEnv = {}, name = `server-${port}`): Served => {
    const log = path.join(dir, `${name}.log`);
    const out = fs.openSync(log, 'a');
    const child = spawn(process.execPath, [SERVE, ENV], { env: { ...process.env, PORT: String(port), ...extraEnv }, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    started.push(child);
    return { child, port, log };
  };

  const dynamicRoles = async (): Promise<string[]> => {
    const admin = await h.adminClient(env);
    try {
      return (await admin.query("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-approle-%' ORDER BY 1")).rows.map((x) => x.rolname);
    } finally {
      await admin.end();
    }
  };
  const leases = async (): Promise<string[]> => {
    const keys: string[] = [];
    for (const role of ['readonly', 'readwrite']) {
      const r = await h.vaultAdmin(env, 'GET', `sys/leases/lookup/database/creds/${role}?list=true`).catch((e: Error) => (/404/.test(e.message) ? { data: { keys: [] } } : Promise.reject(e)));
      keys.push(...r.data.keys.map((k: string) => `${role}/${k}`));
    }
    return keys;
  };
  const nothingLeft = async (what: string) => {
    assert.deepEqual(await leases(), [], `${what}: no lease remains in Vault`);
    assert.deepEqual(await dynamicRoles(), [], `${what}: no dynamic role remains in pg_roles`);
  };

  before(async () => {
    h.requireToolchain();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-longrun-'));
    fs.chmodSync(dir, 0o700);
    h.scratchEnvironment('local', (doc) => {
      doc.docker = { postgresHostPort: 15440, vaultHostPort: 18210 };
      for (const r of Object.values(doc.roles) as any[]) Object.assign(r, { defaultTtlSeconds: LEASE_TTL, maxTtlSeconds: LEASE_MAX_TTL });
      doc.appAccess = { tokenTtlSeconds: TOKEN_TTL, tokenMaxTtlSeconds: TOKEN_MAX_TTL, secretIdTtlSeconds: SECRET_ID_TTL };
    }, ENV);
    env = h.loadEnvironment(ENV);
    await h.destroy(ENV);
    const { seconds } = await h.timed(() => h.deploy(ENV));
    console.log(`# figure: deploy of ${ENV}: ${seconds.toFixed(1)}s; logs in ${dir}`);
    await refreshSecretId();
    startOrchestrator();
    main = serve(PORTS.main, { PGVAULT_SECRET_ID_FILE: secretFile() });
    await h.waitFor('the API to be ready', async () => (await status(PORTS.main, '/readyz')) === 200, 60_000);
  });

  after(async () => {
    stopOrchestrator();
    let hang: Error | undefined;
    try {
      h.dockerIfAny('unpause', `pgvault-${ENV}-vault`);
    } catch (e: any) {
      hang = e; // named once the rest of the clean-up ran
    }
    for (const c of started) {
      if (c.exitCode === null && c.signalCode === null) {
        c.kill('SIGTERM');
        if ((await exited(c, 25_000)) === null) c.kill('SIGKILL');
      }
    }
    await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
    // The logs stay for reading; the secret_id files go.
    for (const f of fs.readdirSync(dir).filter((f) => f.includes('secret-id'))) fs.rmSync(path.join(dir, f), { force: true });
    if (hang) throw hang;
  });

  test(`load across 3 secret_id lifetimes (${3 * SECRET_ID_TTL} s) with re-logins: no failed request, no current lease lost`, async () => {
    const port = PORTS.main;
    const relogins0 = await metric(port, 'pgvault_token_relogins_total');
    const rotations0 = await metric(port, 'pgvault_lease_rotations_total');
    const seconds = 3 * SECRET_ID_TTL + 2;
    const end = Date.now() + seconds * 1000;
    const r = await load(port, 4, () => Date.now() > end);
    const relogins = (await metric(port, 'pgvault_token_relogins_total')) - relogins0;
    const rotations = (await metric(port, 'pgvault_lease_rotations_total')) - rotations0;
    const lost = await metric(port, 'pgvault_lease_lost_total');
    const refused = await metric(port, 'pgvault_pool_failures_total', 'reason="auth_refused"');
    console.log(`# figure: ${seconds} s load on ${SECRET_ID_TTL} s secret_ids / ${TOKEN_MAX_TTL} s token max TTL: ${r.ok} ok, ${r.failed} failed (${(r.ok / seconds).toFixed(0)} req/s); ${relogins} re-logins, ${rotations} rotations, ${issuedSecretIds.length} secret_ids written, current leases lost ${lost}, credentials refused by Postgres ${refused}`);
    assert.equal(r.failed, 0, `failed requests: ${JSON.stringify(r.statuses)}`);
    assert.ok(relogins >= 2, `at least two re-logins (${relogins})`);
    assert.equal(lost, 0, 'no current lease was found revoked');
    assert.equal(refused, 0, 'Postgres never refused current credentials');
    const log = fs.readFileSync(main!.log, 'utf8');
    for (const id of issuedSecretIds) assert.ok(!log.includes(id), 'no secret_id in the server log');
  });

  test('the token revoked behind the app’s back: it logs in again and recovers within seconds', async () => {
    const port = PORTS.main;
    const relogins0 = await metric(port, 'pgvault_token_relogins_total');
    let done = false;
    const running = load(port, 4, () => done);
    await new Promise((r) => setTimeout(r, 1000));
    const accessors: string[] = (await h.vaultAdmin(env, 'GET', 'auth/token/accessors?list=true')).data.keys;
    let revoked = 0;
    for (const accessor of accessors) {
      const info = await h.vaultAdmin(env, 'POST', 'auth/token/lookup-accessor', { accessor });
      if (info.data.meta?.role_name !== env.appAccess.roleName) continue;
      await h.vaultAdmin(env, 'POST', 'auth/token/revoke-accessor', { accessor });
      revoked++;
    }
    const t0 = Date.now();
    await h.waitFor('a re-login', async () => (await metric(port, 'pgvault_token_relogins_total')) > relogins0, 20_000);
    const reloginSeconds = (Date.now() - t0) / 1000;
    await new Promise((r) => setTimeout(r, 3000));
    done = true;
    const r = await running;
    const after = await load(port, 2, ((end) => () => Date.now() > end)(Date.now() + 3000));
    console.log(`# figure: token revoked (${revoked} app tokens): re-login after ${reloginSeconds.toFixed(1)}s; ${r.failed} failed of ${r.ok + r.failed} requests meanwhile (${JSON.stringify(r.statuses)}); then ${after.failed} failed of ${after.ok + after.failed}`);
    assert.ok(revoked >= 1);
    assert.ok(reloginSeconds < 5, 'logged in again within a few seconds');
    assert.equal(after.failed, 0, `still failing: ${JSON.stringify(after.statuses)}`);
  });

  test('hostile request lines get 4xx answers and do not end the process', async () => {
    const port = PORTS.main;
    const requests: Record<string, string> = {
      'GET //': 'GET // HTTP/1.1\r\nHost: x\r\n\r\n',
      'absolute-form target': 'GET http://example.com/healthz HTTP/1.1\r\nHost: example.com\r\n\r\n',
      'OPTIONS *': 'OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n',
      'over-long URL': `GET /items?limit=${'9'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`,
      'invalid percent-encoding': 'GET /items?limit=%zz%E0%A4%A HTTP/1.1\r\nHost: x\r\n\r\n',
      'invalid percent-encoding in the path': 'GET /%E0%A4%A/%zz HTTP/1.1\r\nHost: x\r\n\r\n',
      'a header with a NUL byte': 'GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\0b\r\n\r\n',
    };
    const answers: Record<string, string> = {};
    for (const [name, bytes] of Object.entries(requests)) {
      answers[name] = await rawRequest(port, bytes);
      assert.equal(main!.child.exitCode, null, `the process is still running after ${name}`);
      assert.equal(await status(port, '/healthz'), 200, `/healthz answers after ${name}`);
    }
    console.log(`# figure: hostile requests: ${JSON.stringify(answers)}`);
    for (const [name, line] of Object.entries(answers)) {
      if (name === 'absolute-form target') assert.match(line, /^HTTP\/1\.1 200 /, name);
      else assert.match(line, /^HTTP\/1\.1 4\d\d /, `${name} answered ${JSON.stringify(line)}`);
    }
  });

  test('a transaction that failed inside withClient does not leak into the next query (real Postgres)', async () => {
    const cfg = appConfigFromOutputs(readOutputs(outputsFile(ENV)), { secretId: await issueSecretId(ENV) });
    const rt = await CredentialRuntime.start(cfg, { roles: ['readwrite'], poolSize: 1 });
    try {
      const pool = rt.pool('readwrite');
      const name = `leak-${Date.now()}`;
      await assert.rejects(
        pool.withClient(async (c) => {
          await c.query('BEGIN');
          await c.query('INSERT INTO app.items (name) VALUES ($1)', [name]);
          throw new Error('the caller failed mid-transaction');
        }),
        /the caller failed mid-transaction/,
      );
      const r = await pool.query('SELECT pg_current_xact_id_if_assigned()::text AS xid, (SELECT count(*) FROM app.items WHERE name = $1)::int AS n', [name]);
      assert.equal(r.rows[0].xid, null, 'the next query does not run inside the failed transaction');
      assert.equal(r.rows[0].n, 0, 'the row was not committed');
    } finally {
      await rt.close();
    }
  });

  test('Vault refusing every re-login (stale secret_id): not ready, then exit 1 after the bound', async () => {
    const file = path.join(dir, 'refused-secret-id');
    fs.writeFileSync(file, (await issueSecretId(ENV)) + '\n', { mode: 0o600 });
    const s = serve(PORTS.refused, { PGVAULT_SECRET_ID_FILE: file, PGVAULT_LOGIN_REFUSED_EXIT_SECONDS: '4' }, 'refused');
    await h.waitFor('the second server to be ready', async () => (await status(s.port, '/readyz')) === 200, 30_000);
    fs.writeFileSync(file, '00000000-0000-0000-0000-000000000000\n');
    const t0 = Date.now();
    let notReady: number | undefined;
    while (s.child.exitCode === null && Date.now() - t0 < 40_000) {
      if (notReady === undefined && (await status(s.port, '/readyz')) === 503) notReady = (Date.now() - t0) / 1000;
      await new Promise((r) => setTimeout(r, 250));
    }
    const code = await exited(s.child, 1000);
    const out = fs.readFileSync(s.log, 'utf8');
    console.log(`# figure: secret_id gone stale: not ready after ${notReady?.toFixed(1)}s, exit ${code} after ${((Date.now() - t0) / 1000).toFixed(1)}s (token max TTL ${TOKEN_MAX_TTL} s, bound 4 s)`);
    assert.ok(notReady !== undefined, 'turned not-ready while logins were refused');
    assert.equal(code, 1, out.slice(-2000));
    assert.match(out, /refused every AppRole login/);
  });

  test('Vault paused past lease expiry: 503 within the deadline, bounded renewals, SIGTERM exits 0 within its bound', async () => {
    const s = serve(PORTS.paused, { PGVAULT_SECRET_ID_FILE: secretFile(), PGVAULT_REQUEST_TIMEOUT_SECONDS: '3', PGVAULT_SHUTDOWN_TIMEOUT_SECONDS: '20' }, 'paused');
    await h.waitFor('the paused-test server to be ready', async () => (await status(s.port, '/readyz')) === 200, 30_000);
    // The main server would also hammer a paused Vault; stop it first (its leases are revoked).
    main!.child.kill('SIGTERM');
    assert.equal(await exited(main!.child, 30_000), 0);
    const attempts0 = await metric(s.port, 'pgvault_lease_renew_attempts_total');
    const pauseSeconds = LEASE_TTL + 10;
    h.docker('pause', `pgvault-${ENV}-vault`);
    let r: LoadResult;
    let attempts = 0;
    let stopSeconds = 0;
    let code: number | null = null;
    try {
      const end = Date.now() + pauseSeconds * 1000;
      r = await load(s.port, 4, () => Date.now() > end);
      attempts = (await metric(s.port, 'pgvault_lease_renew_attempts_total')) - attempts0;
      const t0 = Date.now();
      s.child.kill('SIGTERM');
      code = await exited(s.child, 30_000);
      stopSeconds = (Date.now() - t0) / 1000;
    } finally {
      h.docker('unpause', `pgvault-${ENV}-vault`);
    }
    console.log(`# figure: Vault paused ${pauseSeconds}s (lease TTL ${LEASE_TTL}s): ${JSON.stringify(r.statuses)}, slowest answer ${r.slowestMillis} ms (deadline 3000 ms); ${attempts} renew attempts for 2 roles; SIGTERM exit ${code} after ${stopSeconds.toFixed(1)}s (bound 20 s)`);
    const unexpected = Object.keys(r.statuses).filter((k) => !['200', '201', '503'].includes(k));
    assert.deepEqual(unexpected, [], `only 200, 201 and 503 answers: ${JSON.stringify(r.statuses)}`);
    assert.ok((r.statuses['503'] ?? 0) > 0, 'requests answered 503 once the credentials had expired');
    assert.ok(r.slowestMillis < 3000 + 1500, `no request hung past its deadline (slowest ${r.slowestMillis} ms)`);
    assert.ok(attempts <= 20, `renew attempts stay bounded: ${attempts}`);
    assert.equal(code, 0, fs.readFileSync(s.log, 'utf8').slice(-2000));
    assert.ok(stopSeconds < 20);
    // What the server could not revoke expires in Vault, which then drops the users.
    await h.waitFor('the expired leases to be revoked by Vault', async () => (await leases()).length === 0 && (await dynamicRoles()).length === 0, 60_000);
  });

  test('a wrong secret_id at start: exit non-zero within seconds, one line naming the cause', async () => {
    const file = path.join(dir, 'wrong-secret-id');
    const wrong = '11111111-2222-3333-4444-555555555555';
    fs.writeFileSync(file, wrong + '\n', { mode: 0o600 });
    const t0 = Date.now();
    const s = serve(PORTS.wrongSecret, { PGVAULT_SECRET_ID_FILE: file }, 'wrong-secret');
    const code = await exited(s.child, 30_000);
    const seconds = (Date.now() - t0) / 1000;
    const lines = fs.readFileSync(s.log, 'utf8').trim().split('\n');
    console.log(`# figure: wrong secret_id: exit ${code} after ${seconds.toFixed(1)}s: ${lines.join(' | ')}`);
    assert.equal(code, 1);
    assert.ok(seconds < 10, 'fails fast');
    assert.equal(lines.length, 1, 'one line');
    assert.match(lines[0], /"level":60.*refused the AppRole login.*secret_id from PGVAULT_SECRET_ID_FILE/);
    assert.ok(!lines[0].includes(wrong), 'the secret_id itself is not shown');
  });

  const signalRun = async (how: 'npm' | 'node', signal: 'SIGTERM' | 'SIGINT', port: number) => {
    const log = path.join(dir, `signal-${how}-${signal}.log`);
    const out = fs.openSync(log, 'a');
    const childEnv: NodeJS.ProcessEnv = { ...process.env, PORT: String(port) };
    delete childEnv.PGVAULT_SECRET_ID_FILE;
    // Exactly as the README says: `npm run serve -- <env>`, or `node dist/api/serve.js <env>` (dist/scripts/serve.js is the deprecated path).
    const child = how === 'npm'
      ? spawn('npm', ['run', 'serve', '--', ENV], { cwd: REPO_ROOT, env: childEnv, stdio: ['ignore', out, out] })
      : spawn(process.execPath, ['dist/api/serve.js', ENV], { cwd: REPO_ROOT, env: childEnv, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    started.push(child);
    await h.waitFor(`the server (${how}) to be ready`, async () => (await status(port, '/readyz')) === 200, 120_000);
    assert.ok((await dynamicRoles()).length >= 2, 'the server holds credentials');
    const below = descendants(child.pid!);
    const t0 = Date.now();
    child.kill(signal);
    const code = await exited(child, 30_000);
    const seconds = (Date.now() - t0) / 1000;
    console.log(`# figure: ${how === 'npm' ? 'npm run serve' : 'node dist/api/serve.js'} + ${signal}: exit ${code} after ${seconds.toFixed(1)}s; processes below it: ${below.length}`);
    assert.equal(code, 0, fs.readFileSync(log, 'utf8').slice(-2000));
    await h.waitFor('every process below it to be gone', async () => below.every((p) => !alive(p)), 5000);
    assert.equal(await status(port, '/healthz'), 0, 'nothing serves on the port any more');
    assert.match(fs.readFileSync(log, 'utf8'), /stopped cleanly/);
    await nothingLeft(`${how} + ${signal}`);
  };

  test('npm run serve + SIGTERM to the PID started: exit 0, no process, lease or dynamic role left', async () => {
    await nothingLeft('before');
    await signalRun('npm', 'SIGTERM', PORTS.npmTerm);
  });

  test('npm run serve + SIGINT: the same', async () => {
    await signalRun('npm', 'SIGINT', PORTS.npmInt);
  });

  test('node dist/api/serve.js (no npm, as for containers and systemd) + SIGTERM: the same', async () => {
    await signalRun('node', 'SIGTERM', PORTS.node);
  });
});
