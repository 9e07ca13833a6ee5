/**
 * The operator's view against a real deployment (a copy of `local` named `status`, with its own
 * ports and 20 s leases): `npm run status` in JSON and text, a forced problem (Vault paused)
 * turning it non-zero, and a real Prometheus (Debian's package, run as a plain process with a
 * scratch config) that scrapes the served runtime's /metrics, evaluates the shipped rules
 * (app/alerts/pgvault-alerts.yml), and fires PgvaultCredentialsNearExpiry once Vault is paused
 * past a fifth of the lease's TTL. Time-compressed: 1 s scrapes and evaluations.
 * Then an `existing` environment (`status-pg`: a host Postgres on 15595, an OpenBao dev server
 * with TLS on 18395) whose state is in Terraform's pg backend: status names the holder of the
 * backend's advisory lock while Terraform itself holds it (`terraform console` locks the state).
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { Client } from 'pg';
import { localDir, REPO_ROOT } from '../../stacks/config';
import { stateSchema } from '../../stacks/state-location';
import * as h from '../harness';

const ENV = 'status';
const PG_PORT = 15590;
const VAULT_PORT = 18390;
const API_PORT = 18391;
const PROMETHEUS_PORT = 18392;
const LEASE_TTL_SECONDS = 20;
const STATUS = path.join(__dirname, '..', '..', 'ops', 'status', 'status.js');
const SERVE = path.join(__dirname, '..', '..', 'api', 'serve.js');
const RULES = path.join(REPO_ROOT, 'app', 'alerts', 'pgvault-alerts.yml');
const VAULT_CONTAINER = `pgvault-${ENV}-vault`;

function prometheusBinary(): string {
  const found = spawnSync('sh', ['-c', 'command -v prometheus'], { encoding: 'utf8', timeout: 10_000 }).stdout?.trim();
  if (!found) throw new Error("end-to-end prerequisite missing: prometheus (Debian's prometheus package); run: npm run toolchain (as root it installs it), or apt-get install prometheus");
  return found;
}

/** `status <env> [--json]` as an operator runs it; stdout, stderr and the exit code. */
function statusOf(envName: string, ...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [STATUS, envName, ...args], { encoding: 'utf8', timeout: 60_000, killSignal: 'SIGKILL' });
  if (r.error) throw new Error(`status ${args.join(' ')}: ${r.error.message}`);
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const status = (...args: string[]) => statusOf(ENV, ...args);

/** The environment's secret files (passwords, the admin token), which no output may show. */
function secrets(): { file: string; value: string }[] {
  const dir = localDir(ENV);
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isFile() && !/\.(json|log|tfstate|backup|pem)$/.test(e.name))
    .map((e) => ({ file: e.name, value: fs.readFileSync(path.join(dir, e.name), 'utf8').trim() }))
    .filter((s) => s.value.length >= 8);
}

async function getJson(url: string): Promise<any> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`GET ${url} answered ${res.status}`);
  return res.json();
}

const prometheusApi = (p: string) => getJson(`http://127.0.0.1:${PROMETHEUS_PORT}/api/v1/${p}`);
const alerts = async (): Promise<{ labels: Record<string, string>; state: string }[]> => (await prometheusApi('alerts')).data.alerts;

describe('npm run status, and the alert rules in a real Prometheus', () => {
  let work: string;
  let server: h.HostProcess | undefined;
  let prometheus: h.HostProcess | undefined;

  before(async () => {
    h.requireToolchain();
    prometheusBinary();
    h.scratchEnvironment('local', (doc) => {
      doc.description = 'A copy of local for the status test, with its own name, ports and 20 s leases.';
      doc.docker.postgresHostPort = PG_PORT;
      doc.docker.vaultHostPort = VAULT_PORT;
      for (const r of Object.values<any>(doc.roles)) Object.assign(r, { defaultTtlSeconds: LEASE_TTL_SECONDS, maxTtlSeconds: 600 });
    }, ENV);
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-status-'));
    await h.destroy(ENV);
    await h.deploy(ENV);
    server = h.startProcess(process.execPath, [SERVE, ENV], { env: { PORT: String(API_PORT), LOG_LEVEL: 'info' }, logFile: path.join(work, 'serve.log') });
    await h.waitFor(`the API's /metrics on ${API_PORT}`, async () => (await fetch(`http://127.0.0.1:${API_PORT}/metrics`, { signal: AbortSignal.timeout(2000) })).ok, 60_000);
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  after(async () => {
    spawnSync('docker', ['unpause', VAULT_CONTAINER], { timeout: h.DOCKER_TIMEOUT_MS });
    await prometheus?.stop();
    await server?.stop();
    await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
    if (work) fs.rmSync(work, { recursive: true, force: true });
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  test('--json: the stable shape, ok true, exit 0, the served leases per role', { timeout: 120_000 }, () => {
    const t = Date.now();
    const r = status('--json');
    console.log(`# figure: npm run status -- ${ENV} --json took ${Date.now() - t} ms (one Vault, one Postgres, 2 roles)`);
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    const j = JSON.parse(r.stdout);
    assert.deepEqual(Object.keys(j).sort(), ['certificates', 'environment', 'ok', 'postgres', 'problems', 'roles', 'state', 'vault']);
    assert.equal(j.environment, ENV);
    assert.equal(j.ok, true);
    assert.deepEqual(j.problems, []);
    assert.equal(j.vault.length, 1);
    assert.equal(j.vault[0].address, `http://127.0.0.1:${VAULT_PORT}`);
    assert.equal(j.vault[0].sealed, false);
    assert.equal(j.vault[0].haRole, 'single', 'a dev server has no HA');
    assert.match(j.vault[0].version, /^\d+\.\d+\.\d+/);
    assert.equal(j.postgres.length, 1);
    assert.equal(j.postgres[0].endpoint, `127.0.0.1:${PG_PORT}`);
    assert.equal(j.postgres[0].role, 'primary');
    assert.match(j.postgres[0].version, /^\d+\.\d+/);
    for (const role of ['readonly', 'readwrite']) {
      assert.ok(j.roles[role].liveLeases >= 1, `the server holds a lease of ${role} (${j.roles[role].liveLeases})`);
      const left = (Date.parse(j.roles[role].earliestExpiry) - Date.now()) / 1000;
      assert.ok(left > 0 && left <= LEASE_TTL_SECONDS + 5, `${role}'s earliest expiry is within its ${LEASE_TTL_SECONDS} s TTL (${left.toFixed(1)} s)`);
    }
    assert.deepEqual(j.certificates, [], 'local has no TLS of its own');
    assert.deepEqual(j.state, { backend: 'local', locked: false });
  });

  test('the text: every section on one screen, exit 0, and no secret in it', { timeout: 120_000 }, () => {
    const r = status();
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, new RegExp(`^Environment ${ENV}: OK$`, 'm'));
    assert.match(r.stdout, new RegExp(`http://127\\.0\\.0\\.1:${VAULT_PORT} +unsealed +single`));
    assert.match(r.stdout, new RegExp(`127\\.0\\.0\\.1:${PG_PORT} +primary`));
    assert.match(r.stdout, /readonly +\d+ live +earliest expiry/);
    assert.ok(r.stdout.trimEnd().split('\n').length <= 40, 'one screen');
    const files = secrets();
    assert.ok(files.length >= 2, `the environment's secret files exist (${files.map((f) => f.file).join(', ')})`);
    for (const s of files) for (const out of [r.stdout, status('--json').stdout]) assert.ok(!out.includes(s.value), `status printed the content of .local/${ENV}/${s.file}`);
  });

  test('fails (exit 1, ok false, the problem named with what to do) when Vault is paused', { timeout: 120_000 }, () => {
    h.docker('pause', VAULT_CONTAINER);
    try {
      const r = status('--json');
      assert.equal(r.code, 1, `${r.stdout}\n${r.stderr}`);
      const j = JSON.parse(r.stdout);
      assert.equal(j.ok, false);
      assert.equal(j.vault[0].sealed, null);
      assert.ok(
        j.problems.some((p: string) => p.startsWith(`Vault http://127.0.0.1:${VAULT_PORT} does not answer`) && /check its container/.test(p)),
        j.problems.join('\n'),
      );
      const text = status();
      assert.equal(text.code, 1);
      assert.match(text.stdout, /^Environment status: \d+ problems?$/m);
    } finally {
      h.docker('unpause', VAULT_CONTAINER);
    }
  });

  test('a real Prometheus fires PgvaultCredentialsNearExpiry when Vault is paused past a fifth of the lease TTL, and not before', { timeout: 240_000 }, async () => {
    const config = path.join(work, 'prometheus.yml');
    fs.writeFileSync(
      config,
      [
        'global: { scrape_interval: 1s, evaluation_interval: 1s }',
        `rule_files: [${JSON.stringify(RULES)}]`,
        'scrape_configs:',
        `  - { job_name: pgvault, static_configs: [{ targets: ["127.0.0.1:${API_PORT}"] }] }`,
      ].join('\n') + '\n',
    );
    prometheus = h.startProcess(prometheusBinary(), [`--config.file=${config}`, `--storage.tsdb.path=${path.join(work, 'tsdb')}`, `--web.listen-address=127.0.0.1:${PROMETHEUS_PORT}`], {
      logFile: path.join(work, 'prometheus.log'),
    });
    await h.waitFor('Prometheus scraping the API', async () => {
      const r = await prometheusApi(`query?query=${encodeURIComponent('pgvault_lease_ttl_remaining_seconds{role="readonly"}')}`);
      return r.data.result.length === 1;
    }, 60_000);
    // Healthy (Vault answering; the previous test's pause may still be healing): it does not fire.
    await h.waitFor('PgvaultCredentialsNearExpiry neither pending nor firing', async () => !(await alerts()).some((a) => a.labels.alertname === 'PgvaultCredentialsNearExpiry'), 60_000);
    const groups = (await prometheusApi('rules')).data.groups;
    assert.ok(groups.some((g: any) => g.rules.some((r: any) => r.name === 'PgvaultCredentialsNearExpiry' && r.health === 'ok')), 'the shipped rules are loaded and evaluate');
    h.docker('pause', VAULT_CONTAINER);
    const paused = Date.now();
    try {
      await h.waitFor('PgvaultCredentialsNearExpiry firing', async () => (await alerts()).some((a) => a.labels.alertname === 'PgvaultCredentialsNearExpiry' && a.state === 'firing'), 60_000);
      console.log(`# figure: PgvaultCredentialsNearExpiry fired ${((Date.now() - paused) / 1000).toFixed(1)} s after Vault was paused (lease TTL ${LEASE_TTL_SECONDS} s, 1 s scrapes)`);
      const firing = (await alerts()).filter((a) => a.labels.alertname === 'PgvaultCredentialsNearExpiry');
      assert.ok(firing.every((a) => a.labels.job === 'pgvault' && ['readonly', 'readwrite'].includes(a.labels.role)), JSON.stringify(firing));
    } finally {
      h.docker('unpause', VAULT_CONTAINER);
    }
    // Vault back: the runtime rotates, and the alert resolves.
    await h.waitFor('PgvaultCredentialsNearExpiry resolved', async () => !(await alerts()).some((a) => a.labels.alertname === 'PgvaultCredentialsNearExpiry'), 60_000);
  });
});

describe('npm run status: an existing environment whose state is in the pg backend', () => {
  const PG_ENV = 'status-pg';
  const HOST_PG_PORT = 15595;
  const HOST_VAULT_PORT = 18395;
  const SCHEMA_PREFIX = 'status_state';
  let work: string;
  let postgres: h.HostProcess | undefined;
  let vault: h.HostProcess | undefined;
  let superuser: Client | undefined;
  let deployed = false;

  before(async () => {
    h.requireToolchain();
    const bin = h.hostPostgres().bin;
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-status-pg-'));
    fs.chmodSync(work, 0o755); // the postgres user reaches its data directory
    const secretsDir = fs.mkdtempSync(path.join(work, 'private-')); // mode 0700
    const pgPassword = crypto.randomBytes(18).toString('base64url');
    const statePassword = crypto.randomBytes(18).toString('base64url');
    const rootToken = crypto.randomBytes(16).toString('hex');
    const pg = await h.startHostPostgres({ bin, work, port: HOST_PG_PORT, password: pgPassword });
    postgres = pg.server;
    superuser = pg.superuser;
    await superuser.query('CREATE DATABASE app');
    await superuser.query(`CREATE ROLE pgvault_state LOGIN PASSWORD '${statePassword}'`);
    await superuser.query('CREATE DATABASE pgvault_state OWNER pgvault_state');
    const tls = path.join(work, 'vault-tls');
    fs.mkdirSync(tls);
    vault = h.startProcess(process.env.VAULT_SERVER_BIN!, ['server', '-dev', '-dev-tls', `-dev-tls-cert-dir=${tls}`, `-dev-listen-address=127.0.0.1:${HOST_VAULT_PORT}`], {
      env: { BAO_DEV_ROOT_TOKEN_ID: rootToken, VAULT_DEV_ROOT_TOKEN_ID: rootToken, HOME: work },
      logFile: path.join(secretsDir, 'vault.log'), // holds the root token
    });
    await h.waitFor('Vault to write its CA', async () => fs.existsSync(path.join(tls, 'vault-ca.pem')));
    const file = (name: string, text: string) => {
      fs.writeFileSync(path.join(secretsDir, name), text, { mode: 0o600 });
      return path.join(secretsDir, name);
    };
    h.scratchEnvironment('existing-example', (doc) => {
      doc.postgres = { ...doc.postgres, host: '127.0.0.1', port: HOST_PG_PORT, sslmode: 'disable', adminPasswordFile: file('postgres-admin-password', pgPassword) };
      doc.vault = { ...doc.vault, address: `https://127.0.0.1:${HOST_VAULT_PORT}`, caCertFile: file('vault-ca.pem', fs.readFileSync(path.join(tls, 'vault-ca.pem'), 'utf8')), tokenFile: file('vault-token', rootToken) };
      doc.state = { backend: 'pg', connectionFile: file('state-db', `postgres://pgvault_state:${statePassword}@127.0.0.1:${HOST_PG_PORT}/pgvault_state?sslmode=disable`), schemaPrefix: SCHEMA_PREFIX };
    }, PG_ENV);
    fs.rmSync(localDir(PG_ENV), { recursive: true, force: true }); // an interrupted earlier run's files describe servers that are gone
    const env = h.loadEnvironment(PG_ENV);
    await h.waitFor('Vault to answer over TLS', async () => Boolean(await h.vaultAdmin(env, 'GET', 'sys/health')));
    await h.deploy(PG_ENV);
    deployed = true;
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  after(async () => {
    if (deployed) await h.destroy(PG_ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
    await superuser?.end().catch(() => undefined);
    await vault?.stop();
    await postgres?.stop();
    fs.rmSync(localDir(PG_ENV), { recursive: true, force: true });
    if (work) fs.rmSync(work, { recursive: true, force: true });
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  test('ok: a TLS dev server, the host Postgres, the pg backend not locked, and the Vault CA with its days left', { timeout: 120_000 }, () => {
    const r = statusOf(PG_ENV, '--json');
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    const j = JSON.parse(r.stdout);
    assert.equal(j.ok, true, j.problems.join('\n'));
    assert.deepEqual(j.vault.map((v: any) => [v.address, v.sealed, v.haRole]), [[`https://127.0.0.1:${HOST_VAULT_PORT}`, false, 'single']]);
    assert.deepEqual(j.postgres.map((p: any) => [p.endpoint, p.role]), [[`127.0.0.1:${HOST_PG_PORT}`, 'primary']]);
    assert.deepEqual(j.state, { backend: 'pg', locked: false });
    assert.equal(j.certificates.length, 1, JSON.stringify(j.certificates));
    assert.match(j.certificates[0].file, /vault-ca\.pem$/);
    assert.ok(j.certificates[0].daysLeft > 0);
  });

  test("while Terraform holds the pg backend's lock (terraform console), status names the holder; released, it is unlocked", { timeout: 180_000 }, async () => {
    const env = h.loadEnvironment(PG_ENV);
    const stack = `${PG_ENV}-secrets`;
    const dir = fs.mkdtempSync(path.join(work, 'backend-'));
    fs.writeFileSync(path.join(dir, 'backend.tf.json'), JSON.stringify({ terraform: { backend: { pg: { schema_name: stateSchema(SCHEMA_PREFIX, stack) } } } }));
    const tfEnv = { ...process.env, PG_CONN_STR: fs.readFileSync((env.state as any).connectionFile, 'utf8').trim(), PGAPPNAME: `terraform console ${PG_ENV} (17-status)`, TF_IN_AUTOMATION: '1' };
    const terraform = process.env.TERRAFORM_BINARY_NAME || 'terraform';
    const init = spawnSync(terraform, ['init', '-input=false', '-no-color'], { cwd: dir, env: tfEnv, encoding: 'utf8', timeout: 120_000, killSignal: 'SIGKILL' });
    assert.equal(init.status, 0, `terraform init of the pg backend: ${init.stderr}`);
    // The console holds the state lock until its input ends.
    const console_ = spawn(terraform, ['console'], { cwd: dir, env: tfEnv, stdio: ['pipe', 'ignore', 'ignore'] });
    try {
      let seen: any;
      await h.waitFor('status to show the lock held', async () => {
        seen = JSON.parse(statusOf(PG_ENV, '--json').stdout);
        return seen.state.locked === true;
      }, 60_000);
      assert.equal(seen.state.backend, 'pg');
      assert.match(seen.state.holder, new RegExp(`^terraform console ${PG_ENV} \\(17-status\\) as pgvault_state from 127\\.0\\.0\\.1 \\(${stack}\\)$`));
      const text = statusOf(PG_ENV).stdout;
      assert.match(text, new RegExp(`pg +LOCKED: ${stack} by terraform console ${PG_ENV} \\(17-status\\)`));
    } finally {
      console_.stdin.end();
      await new Promise<void>((resolve) => {
        if (console_.exitCode !== null) return resolve();
        const t = setTimeout(() => {
          console_.kill('SIGKILL');
          resolve();
        }, 30_000);
        console_.once('exit', () => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    await h.waitFor('status to show the lock released', async () => JSON.parse(statusOf(PG_ENV, '--json').stdout).state.locked === false, 30_000);
  });
});
