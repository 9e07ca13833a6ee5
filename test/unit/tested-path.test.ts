/**
 * The tested path is the default: the images every test runs, the Vault image rules, and
 * the pre-16 warning, decided by the server's version (a stubbed server_version_num).
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';
import { spawnSync } from 'node:child_process';
import { DEFAULT_POSTGRES_IMAGE, DEFAULT_VAULT_IMAGE, loadEnvironment, REPO_ROOT, resolveEnvironment, resolvePostgresImage, resolveVaultImage } from '../../stacks/config';
import { serverVersion, warnOldServer } from '../../ops/postgres/db-bootstrap';
import { applyToolchainEnv } from '../../ops/local/toolchain-env';

function versionsEnv(): Record<string, string> {
  const text = fs.readFileSync(path.join(REPO_ROOT, 'toolchain', 'versions.env'), 'utf8');
  return Object.fromEntries(text.split('\n').filter((l) => /^[A-Z_0-9]+=/.test(l)).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

/** Runs `fn` with VAULT_IMAGE set to `value` (undefined: unset), then puts it back. */
function withVaultImage<T>(value: string | undefined, fn: () => T): T {
  const saved = process.env.VAULT_IMAGE;
  if (value === undefined) delete process.env.VAULT_IMAGE;
  else process.env.VAULT_IMAGE = value;
  try {
    return fn();
  } finally {
    if (saved === undefined) delete process.env.VAULT_IMAGE;
    else process.env.VAULT_IMAGE = saved;
  }
}

test('the default images are the ones the toolchain builds and every test runs: OpenBao at the tested version', () => {
  const v = versionsEnv();
  assert.equal(DEFAULT_POSTGRES_IMAGE, v.PROJECT_POSTGRES_IMAGE);
  assert.equal(DEFAULT_VAULT_IMAGE, v.PROJECT_VAULT_IMAGE);
  assert.ok(DEFAULT_VAULT_IMAGE.includes(`openbao-${v.OPENBAO_VERSION}`), `${DEFAULT_VAULT_IMAGE} names OpenBao ${v.OPENBAO_VERSION}`);
  assert.ok(DEFAULT_POSTGRES_IMAGE.includes(`:${v.POSTGRES_MAJOR}-`), `${DEFAULT_POSTGRES_IMAGE} names PostgreSQL ${v.POSTGRES_MAJOR}`);
  assert.equal(v.ONLINE_VAULT_IMAGE, undefined, 'online mode has no image of its own');
});

test('the shipped environments get the project images with no variable set, and ha keeps them whatever VAULT_IMAGE says', () => {
  for (const variable of [undefined, 'hashicorp/vault:1.20']) {
    withVaultImage(variable, () => {
      assert.equal(loadEnvironment('ha').docker!.vaultImage, DEFAULT_VAULT_IMAGE, `ha with VAULT_IMAGE=${variable}`);
    });
  }
  withVaultImage(undefined, () => assert.equal(loadEnvironment('local').docker!.vaultImage, DEFAULT_VAULT_IMAGE));
});

test('another server is an explicit setting of the environment file, and a cluster refuses HashiCorp Vault', () => {
  const roles = { ro: { access: 'read', defaultTtlSeconds: 60, maxTtlSeconds: 120 } };
  withVaultImage(DEFAULT_VAULT_IMAGE, () => {
    const single = resolveEnvironment('x', 'x.json', { infrastructure: 'docker', docker: { vaultImage: 'hashicorp/vault:1.20' }, roles });
    assert.equal(single.docker!.vaultImage, 'hashicorp/vault:1.20', 'the file wins over the toolchain variable');
    assert.throws(
      () => resolveEnvironment('x', 'x.json', { infrastructure: 'docker', docker: { vaultNodes: 3, vaultHostPort: 18230, vaultImage: 'hashicorp/vault:1.20' }, roles }),
      (e: any) => {
        assert.equal(e.code, 'ENV_SCHEMA');
        assert.match(e.message, /docker\.vaultImage/);
        assert.match(e.message, /seal "static"/);
        return true;
      },
    );
  });
  assert.equal(resolveVaultImage('x.json', undefined, false, 'my/bao:1'), 'my/bao:1', 'one server: VAULT_IMAGE');
  assert.equal(resolveVaultImage('x.json', undefined, true, 'my/bao:1'), DEFAULT_VAULT_IMAGE, 'a cluster: no VAULT_IMAGE');
  assert.equal(resolveVaultImage('x.json', undefined, false, undefined), DEFAULT_VAULT_IMAGE);
});

/** What `toolchain.sh env` prints, from an env file write_env wrote in a scratch cache, with POSTGRES_IMAGE as given. */
function toolchainEnv(own: string | undefined): string {
  const cache = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-env-'));
  const toolchain = path.join(REPO_ROOT, 'toolchain', 'toolchain.sh');
  try {
    const write = `. '${toolchain}'; BIN=/b; OFFLINE=1; VAULT_SERVER_BIN=/v; HOST_PG_BINDIR=/p; TF_NAME=terraform; write_env`;
    const env: NodeJS.ProcessEnv = { ...process.env, PGVAULT_CACHE: cache };
    delete env.POSTGRES_IMAGE;
    const w = spawnSync('bash', ['-c', write], { encoding: 'utf8', timeout: 20_000, env: { ...env, PGVAULT_TOOLCHAIN_SOURCE_ONLY: '1' } });
    assert.equal(w.status, 0, w.stderr);
    const r = spawnSync('bash', [toolchain, 'env'], { encoding: 'utf8', timeout: 20_000, env: { ...env, ...(own !== undefined && { POSTGRES_IMAGE: own }) } });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout;
  } finally {
    fs.rmSync(cache, { recursive: true, force: true });
  }
}

test("the Postgres image: the environment file's setting, else a POSTGRES_IMAGE of the user's own, else the project's image the toolchain exports", { timeout: 30_000 }, () => {
  const roles = { ro: { access: 'read', defaultTtlSeconds: 60, maxTtlSeconds: 120 } };
  const saved = process.env.POSTGRES_IMAGE;
  try {
    process.env.POSTGRES_IMAGE = 'postgres:15';
    const explicit = resolveEnvironment('x', 'x.json', { infrastructure: 'docker', docker: { postgresImage: 'postgres:16' }, roles });
    assert.equal(explicit.docker!.postgresImage, 'postgres:16', 'the file wins over POSTGRES_IMAGE');
    assert.equal(resolveEnvironment('x', 'x.json', { infrastructure: 'docker', roles }).docker!.postgresImage, 'postgres:15', 'no file setting: POSTGRES_IMAGE');
    delete process.env.POSTGRES_IMAGE;
    assert.equal(resolveEnvironment('x', 'x.json', { infrastructure: 'docker', roles }).docker!.postgresImage, DEFAULT_POSTGRES_IMAGE, 'neither: the default');
  } finally {
    if (saved === undefined) delete process.env.POSTGRES_IMAGE;
    else process.env.POSTGRES_IMAGE = saved;
  }
  assert.equal(resolvePostgresImage(undefined, ''), DEFAULT_POSTGRES_IMAGE, 'an empty variable counts as unset');

  // The toolchain's environment keeps a user's own POSTGRES_IMAGE: loaded by the npm commands, and eval'd by a shell.
  const load = (own?: string) => {
    const env: NodeJS.ProcessEnv = { PATH: '/usr/bin', ...(own !== undefined && { POSTGRES_IMAGE: own }) };
    applyToolchainEnv(toolchainEnv(own), env);
    return env;
  };
  assert.equal(load().POSTGRES_IMAGE, DEFAULT_POSTGRES_IMAGE, 'unset: the project image');
  assert.equal(load('').POSTGRES_IMAGE, DEFAULT_POSTGRES_IMAGE, 'empty: the project image');
  assert.equal(load('postgres:15').POSTGRES_IMAGE, 'postgres:15', "the user's own is kept");
  // A project image name is what an earlier eval left (say, before the project moved to a new
  // image): not the user's own, so the current one replaces it.
  assert.equal(load('pgvault/postgres:16-bookworm-local').POSTGRES_IMAGE, DEFAULT_POSTGRES_IMAGE, 'a stale project image is replaced');
  assert.equal(load('postgres:15').VAULT_IMAGE, DEFAULT_VAULT_IMAGE, 'the Vault image is the project one (the file is the way to another)');
  assert.equal(load().PATH, '/b:/usr/bin');
  // The env file itself is unchanged (plain exports, as every checkout's loader reads it); this loader keeps the user's own over it too.
  const plain = { POSTGRES_IMAGE: 'postgres:15' } as NodeJS.ProcessEnv;
  applyToolchainEnv(toolchainEnv(undefined), plain);
  assert.equal(plain.POSTGRES_IMAGE, 'postgres:15');
  for (const own of [undefined, 'postgres:15']) {
    const env: NodeJS.ProcessEnv = { ...process.env, ENV_TEXT: toolchainEnv(own) };
    if (own === undefined) delete env.POSTGRES_IMAGE;
    else env.POSTGRES_IMAGE = own;
    const r = spawnSync('sh', ['-c', 'eval "$ENV_TEXT" && printf %s "$POSTGRES_IMAGE"'], { encoding: 'utf8', timeout: 10_000, env });
    assert.equal(r.stdout, own ?? DEFAULT_POSTGRES_IMAGE, `a shell's eval with POSTGRES_IMAGE=${own ?? '(unset)'}: ${r.stderr}`);
  }
});

/** serverVersion and warnOldServer against a stub answering SHOW server_version_num; returns what it printed. */
async function warningFor(serverVersionNum: string): Promise<string> {
  const env = loadEnvironment('local');
  const queries: string[] = [];
  const stub = { query: async (q: string) => (queries.push(q), { rows: [{ server_version_num: serverVersionNum }] }) } as any;
  const printed: string[] = [];
  const saved = console.log;
  console.log = (...a: unknown[]) => void printed.push(a.join(' '));
  try {
    warnOldServer(env, await serverVersion(stub));
  } finally {
    console.log = saved;
  }
  assert.deepEqual(queries, ['SHOW server_version_num']);
  return printed.join('\n');
}

test('the pre-16 CREATEROLE warning: printed for 15 (and 14) with the version and the fix, not for 16 or 17', async () => {
  const w15 = await warningFor('150004');
  assert.match(w15, /WARNING: PostgreSQL 15\.4 at 127\.0\.0\.1:\d+: before PostgreSQL 16 a CREATEROLE role/);
  assert.match(w15, /upgrade the server to PostgreSQL 16 or later/);
  assert.match(await warningFor('140011'), /PostgreSQL 14\.11/);
  assert.equal(await warningFor('160000'), '');
  assert.equal(await warningFor('170006'), '');
});
