/**
 * The offline toolchain, for real: Terraform init from the filesystem mirror, the
 * Vault-compatible server's database secrets engine, and containers from the local images.
 */
import { before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Client } from 'pg';
import { DEFAULT_POSTGRES_IMAGE, DEFAULT_VAULT_IMAGE, REPO_ROOT } from '../../stacks/config';
import { PROVIDER_CONSTRAINTS } from '../../stacks/common';
import * as h from '../harness';

const TOOLCHAIN = path.join(REPO_ROOT, 'toolchain', 'toolchain.sh');

function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', cwd: opts.cwd, env: { ...process.env, ...opts.env }, timeout: 600_000, killSignal: 'SIGKILL' });
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${(r.error as any).code === 'ETIMEDOUT' ? 'hung, killed after 600 s' : r.error.message}`);
  return r;
}

before(() => h.requireToolchain());

test('toolchain:env prints export lines that a POSIX shell can eval', () => {
  const r = run('sh', ['-c', `eval "$(bash '${TOOLCHAIN}' env)" && printf '%s\\n' "$VAULT_SERVER_BIN" "$POSTGRES_IMAGE" "$VAULT_IMAGE" "\${TERRAFORM_BINARY_NAME:-terraform}" "$CHECKPOINT_DISABLE"`]);
  assert.equal(r.status, 0, r.stderr);
  const [bin, pgImage, vaultImage, tf, checkpoint] = r.stdout.trim().split('\n');
  assert.ok(fs.existsSync(bin), `VAULT_SERVER_BIN ${bin} exists`);
  assert.ok(pgImage && vaultImage, 'image tags are exported');
  assert.ok(run(tf, ['version']).status === 0, `${tf} runs`);
  assert.equal(checkpoint, '1');
  if (process.env.PGVAULT_OFFLINE === '1') {
    assert.ok(fs.existsSync(process.env.TF_CLI_CONFIG_FILE!), 'offline: TF_CLI_CONFIG_FILE names the mirror config');
  }
});

test('terraform init succeeds offline for hashicorp/vault and kreuzwerker/docker', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-init-'));
  try {
    fs.writeFileSync(path.join(dir, 'main.tf.json'), JSON.stringify({ terraform: { required_providers: PROVIDER_CONSTRAINTS } }));
    assert.equal(PROVIDER_CONSTRAINTS.vault.version, '~> 5.0');
    const tf = process.env.TERRAFORM_BINARY_NAME || 'terraform';
    const init = run(tf, ['init', '-input=false', '-no-color'], { cwd: dir });
    assert.equal(init.status, 0, `terraform init failed:\n${init.stdout}\n${init.stderr}`);
    const v = JSON.parse(run(tf, ['version', '-json'], { cwd: dir }).stdout);
    const selected = v.provider_selections ?? {};
    assert.match(selected['registry.terraform.io/hashicorp/vault'] ?? '', /^5\./);
    assert.match(selected['registry.terraform.io/kreuzwerker/docker'] ?? '', /^[34]\./);
    console.log(`# figure: providers selected offline: ${JSON.stringify(selected)}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the server starts in dev mode and `secrets enable database` works', async () => {
  const bin = process.env.VAULT_SERVER_BIN!;
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-bao-'));
  const addr = 'http://127.0.0.1:28210';
  const env = { BAO_DEV_ROOT_TOKEN_ID: 'toolchain-test', BAO_ADDR: addr, VAULT_ADDR: addr, BAO_TOKEN: 'toolchain-test', VAULT_TOKEN: 'toolchain-test', HOME: work };
  const server = h.startProcess(bin, ['server', '-dev', '-dev-listen-address=127.0.0.1:28210'], { env, logFile: path.join(work, 'server.log') });
  try {
    await h.waitFor('the dev server', async () => run(bin, ['status'], { env }).status === 0);
    const enable = run(bin, ['secrets', 'enable', 'database'], { env });
    assert.equal(enable.status, 0, enable.stderr);
    assert.match(run(bin, ['secrets', 'list'], { env }).stdout, /^database\/\s+database/m);
    assert.match(run(bin, ['plugin', 'list', 'database'], { env }).stdout, /postgresql-database-plugin/);
  } finally {
    await server.stop();
    fs.rmSync(work, { recursive: true, force: true });
  }
});

async function waitHealthy(name: string): Promise<void> {
  await h.waitFor(`${name} to become healthy`, async () => h.docker('inspect', '-f', '{{.State.Health.Status}}', name) === 'healthy', 90_000);
}

test('a container from the local Postgres image starts, becomes healthy and honours POSTGRES_*', async () => {
  const image = process.env.POSTGRES_IMAGE!;
  const name = 'pgvault-toolchain-test-postgres';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-pgimg-'));
  fs.writeFileSync(path.join(dir, 'pw'), 'toolchain-test-pw', { mode: 0o600 });
  spawnSync('docker', ['rm', '-f', name], { timeout: h.DOCKER_TIMEOUT_MS });
  try {
    h.docker('run', '-d', '--name', name, '-p', '127.0.0.1:25499:5432',
      '-e', 'POSTGRES_USER=admin', '-e', 'POSTGRES_DB=things', '-e', 'POSTGRES_PASSWORD_FILE=/run/secrets/pw',
      '-v', `${dir}/pw:/run/secrets/pw:ro`,
      '--health-cmd', 'pg_isready -h 127.0.0.1 -U admin -d things', '--health-interval', '1s', '--health-retries', '60', image);
    await waitHealthy(name);
    const c = new Client({ host: '127.0.0.1', port: 25499, user: 'admin', password: 'toolchain-test-pw', database: 'things' });
    await c.connect();
    const r = await c.query('SELECT current_database() AS db, current_setting(\'server_version_num\')::int AS v');
    await c.end();
    assert.equal(r.rows[0].db, 'things');
    assert.ok(r.rows[0].v >= 160000, `the local image runs PostgreSQL 16 or later (server_version_num ${r.rows[0].v})`);
  } finally {
    spawnSync('docker', ['rm', '-f', '-v', name], { timeout: h.DOCKER_TIMEOUT_MS });
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a container from the local Vault image starts, becomes healthy and honours VAULT_DEV_*', async () => {
  const image = process.env.VAULT_IMAGE!;
  const name = 'pgvault-toolchain-test-vault';
  spawnSync('docker', ['rm', '-f', name], { timeout: h.DOCKER_TIMEOUT_MS });
  try {
    h.docker('run', '-d', '--name', name, '-p', '127.0.0.1:28299:8299',
      '-e', 'VAULT_DEV_ROOT_TOKEN_ID=toolchain-test-token', '-e', 'VAULT_DEV_LISTEN_ADDRESS=0.0.0.0:8299',
      '--health-cmd', 'vault status -address=http://127.0.0.1:8299', '--health-interval', '1s', '--health-retries', '60', image, 'server', '-dev');
    await waitHealthy(name);
    const res = await fetch('http://127.0.0.1:28299/v1/auth/token/lookup-self', { headers: { 'X-Vault-Token': 'toolchain-test-token' } });
    assert.equal(res.status, 200);
    const body: any = await res.json();
    assert.deepEqual(body.data.policies, ['root']);
  } finally {
    spawnSync('docker', ['rm', '-f', name], { timeout: h.DOCKER_TIMEOUT_MS });
  }
});

test('a second toolchain run with everything present builds nothing', () => {
  const t = Date.now();
  const r = run('bash', [TOOLCHAIN, 'up']);
  const seconds = (Date.now() - t) / 1000;
  assert.equal(r.status, 0, r.stderr);
  assert.doesNotMatch(r.stderr, /building|fetching|installing/i, 'nothing is built, fetched or installed again');
  assert.match(r.stdout, /PART\s+VERSION\s+FROM\s+WHERE/);
  console.log(`# figure: warm toolchain run: ${seconds.toFixed(1)}s`);
});

test('the toolchain brings what the tests call, Node 24 for CI, cdktn, and exports the images the config defaults to', () => {
  const r = run('bash', ['-c', `eval "$(bash '${TOOLCHAIN}' env)" && printf '%s\\n' "$POSTGRES_IMAGE" "$VAULT_IMAGE" "$(command -v cdktn)"`]);
  assert.equal(r.status, 0, r.stderr);
  const [pgImage, vaultImage, cdktn] = r.stdout.trim().split('\n');
  assert.equal(pgImage, DEFAULT_POSTGRES_IMAGE, 'the exported Postgres image is the default every environment gets');
  assert.equal(vaultImage, DEFAULT_VAULT_IMAGE, 'the exported Vault image is the default (OpenBao)');
  assert.ok(cdktn && fs.existsSync(cdktn), 'cdktn is on the toolchain PATH');
  const pg = h.hostPostgres();
  console.log(`# figure: host PostgreSQL ${pg.major} at ${pg.bin}; psql ${h.psqlBinary()}`);
  for (const [cmd, args] of [['git', ['--version']], ['openssl', ['version']], ['python3', ['-c', 'import ensurepip, venv']], ['python3', ['-m', 'pip', '--version']]] as const) {
    assert.equal(run(cmd, [...args]).status, 0, `${cmd} ${args.join(' ')}`);
  }
  const machineMajor = Number(process.versions.node.split('.')[0]);
  const nodeDir = run('bash', [TOOLCHAIN, 'node-dir']).stdout.trim();
  if (machineMajor < 24) {
    assert.match(run(path.join(nodeDir, 'node'), ['--version']).stdout, /^v24\./, 'the toolchain brought Node 24');
  } else {
    assert.equal(nodeDir, '', 'no Node of its own when the machine has 24');
  }
});

