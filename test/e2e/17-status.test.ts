/**
 * The operator's view against a real deployment (a copy of `local` named `status`, with its own
 * ports and 20 s leases): `npm run status` in JSON and text, a forced problem (Vault paused)
 * turning it non-zero, and a real Prometheus (Debian's package, run as a plain process with a
 * scratch config) that scrapes the served runtime's /metrics, evaluates the shipped rules
 * (app/alerts/pgvault-alerts.yml), and fires PgvaultCredentialsNearExpiry once Vault is paused
 * past a fifth of the lease's TTL. Time-compressed: 1 s scrapes and evaluations.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { localDir, REPO_ROOT } from '../../stacks/config';
import * as h from '../harness';

const ENV = 'status';
const PG_PORT = 15590;
const VAULT_PORT = 18390;
const API_PORT = 18391;
const PROMETHEUS_PORT = 18392;
const LEASE_TTL_SECONDS = 20;
const STATUS = path.join(__dirname, '..', '..', 'scripts', 'status.js');
const SERVE = path.join(__dirname, '..', '..', 'scripts', 'serve.js');
const RULES = path.join(REPO_ROOT, 'app', 'alerts', 'pgvault-alerts.yml');
const VAULT_CONTAINER = `pgvault-${ENV}-vault`;

function prometheusBinary(): string {
  const found = spawnSync('sh', ['-c', 'command -v prometheus'], { encoding: 'utf8', timeout: 10_000 }).stdout?.trim();
  if (!found) throw new Error("end-to-end prerequisite missing: prometheus (Debian's prometheus package); run: npm run toolchain (as root it installs it), or apt-get install prometheus");
  return found;
}

/** `status <env> [--json]` as an operator runs it; stdout, stderr and the exit code. */
function status(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [STATUS, ENV, ...args], { encoding: 'utf8', timeout: 60_000, killSignal: 'SIGKILL' });
  if (r.error) throw new Error(`status ${args.join(' ')}: ${r.error.message}`);
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

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
