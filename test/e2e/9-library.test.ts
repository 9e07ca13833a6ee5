/**
 * The credential runtime as a package other services install, against a real deployment
 * (environment `lib`, a copy of `local` on Postgres 15490 and Vault 18270). `readonly` keeps
 * hour-long leases; `readwrite` leases live 4 s, at most 10 s, so they rotate every few seconds.
 *
 * The package is packed with `npm pack` and installed into a scratch project outside the
 * repository, where a CommonJS and an ES module program use it, then Kysely, Drizzle and Knex run a
 * load on its pg.Pool face across rotations (the programs are test/e2e/library/*). In this
 * process: what the library hands out carries no secret in an enumerable field, and the face's
 * counts and 'error' event follow pg.Pool's. Knex runs on the face through its `connectionPool`
 * option (Knex 3.3.0 and later), under the same load.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as util from 'node:util';
import { spawnSync } from 'node:child_process';
import { Client, Pool, PoolClient } from 'pg';
import { appConfigFromOutputs, CredentialRuntime, DatabaseCredentials, readOutputs } from '@pgvault/runtime';
import { EnvironmentConfig, REPO_ROOT } from '../../stacks/config';
import { issueSecretId, outputsFile, readSecretFile } from '../../ops';
import * as h from '../harness';

const ENV = 'lib';
const PG_PORT = 15490;
const VAULT_PORT = 18270;
const ROTATING = { defaultTtlSeconds: 4, maxTtlSeconds: 10 };
const ROTATIONS = 3;
/** Exact versions, so a run is repeatable; the README names them as the tested ones. */
const KYSELY = 'kysely@0.29.9';
const DRIZZLE = 'drizzle-orm@0.45.4';
/** Knex takes an outside pg.Pool (`connectionPool`) from 3.3.0 on. */
const KNEX = 'knex@3.3.0';
const PROGRAMS = path.join(REPO_ROOT, 'test', 'e2e', 'library');

function scratch(): void {
  h.scratchEnvironment('local', (doc) => {
    doc.description = 'Library test: readonly hour-long, readwrite seconds-long leases.';
    doc.docker = { postgresHostPort: PG_PORT, vaultHostPort: VAULT_PORT };
    doc.roles.readonly = { access: 'read', defaultTtlSeconds: 3600, maxTtlSeconds: 86400 };
    doc.roles.readwrite = { access: 'write', ...ROTATING };
  }, ENV);
}

/** npm in `cwd`; fails naming npm and the registry when it cannot do its job. */
function npm(cwd: string, ...args: string[]): string {
  const r = spawnSync('npm', [...args, '--no-audit', '--no-fund', '--loglevel=error'], {
    cwd,
    encoding: 'utf8',
    env: { ...process.env, npm_config_update_notifier: 'false' },
    timeout: 300_000,
  });
  if (r.status !== 0) {
    throw new Error(`end-to-end prerequisite missing: \`npm ${args.join(' ')}\` in ${cwd} failed (${r.error?.message ?? `exit ${r.status}`}): ${r.stderr.trim().slice(-800)}; the npm registry must be reachable (or its packages in npm's cache)`);
  }
  return r.stdout;
}

/** Live lease ids of `role`, as Vault's admin sees them. */
async function leasesOf(env: EnvironmentConfig, role: string): Promise<string[]> {
  const r = await h.vaultAdmin(env, 'GET', `sys/leases/lookup/database/creds/${role}?list=true`).catch((e: Error) => (/404/.test(e.message) ? { data: { keys: [] } } : Promise.reject(e)));
  return r.data.keys;
}

/** Keys of `root` and below (enumerable own properties, Map and Set entries) whose string value holds a secret. */
function enumerableSecrets(root: unknown, secrets: readonly string[]): string[] {
  const found: string[] = [];
  const seen = new WeakSet<object>();
  const visit = (value: unknown, where: string, depth: number) => {
    if (typeof value === 'string') {
      if (secrets.some((s) => value.includes(s))) found.push(where);
      return;
    }
    if (!value || (typeof value !== 'object' && typeof value !== 'function') || seen.has(value as object) || depth > 60) return;
    seen.add(value as object);
    if (value instanceof Map) for (const [k, v] of value) visit(v, `${where}<${String(k)}>`, depth + 1);
    if (value instanceof Set) for (const v of value) visit(v, `${where}<item>`, depth + 1);
    if (typeof value === 'function') return;
    for (const k of Object.keys(value as object)) {
      let v: unknown;
      try {
        v = (value as Record<string, unknown>)[k];
      } catch {
        continue;
      }
      visit(v, `${where}.${k}`, depth + 1);
    }
  };
  visit(root, '$', 0);
  return found;
}

/** JSON.stringify that survives cycles and BigInts (what a logger would do with the object). */
function safeJson(value: unknown): string {
  const seen = new WeakSet<object>();
  return JSON.stringify(value, (_k, v) => {
    if (typeof v === 'bigint') return v.toString();
    if (v && typeof v === 'object') {
      if (seen.has(v)) return '[cycle]';
      seen.add(v);
    }
    return v;
  }) ?? '';
}

describe('the runtime as a package: pack, install elsewhere, plain pg, Kysely, Drizzle, Knex', () => {
  let env: EnvironmentConfig;
  let admin: Client;
  let consumer: string;
  let tarball: string;

  before(async () => {
    h.requireToolchain();
    scratch();
    env = h.loadEnvironment(ENV);
    await h.destroy(ENV);
    const { seconds } = await h.timed(() => h.deploy(ENV));
    console.log(`# figure: cold deploy of ${ENV}: ${seconds.toFixed(1)}s`);
    admin = await h.adminClient(env);
    consumer = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-lib-consumer-'));
  });

  after(async () => {
    await admin?.end().catch(() => undefined);
    await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
    if (consumer) fs.rmSync(consumer, { recursive: true, force: true });
  });

  /** Nothing of the app is left: no lease in Vault, no dynamic user in Postgres. */
  async function assertNothingLeft(what: string): Promise<void> {
    for (const role of ['readonly', 'readwrite']) assert.deepEqual(await leasesOf(env, role), [], `${what}: no ${role} lease is left in Vault`);
    assert.deepEqual(await h.dynamicRoles(admin, env), [], `${what}: no dynamic role is left in Postgres`);
  }

  /** Runs one of test/e2e/library/* in the consumer project, with a fresh secret_id in a 0600 file. */
  async function runProgram(file: string): Promise<any> {
    for (const f of fs.readdirSync(PROGRAMS)) fs.copyFileSync(path.join(PROGRAMS, f), path.join(consumer, f));
    const secretIdFile = path.join(consumer, 'secret-id');
    const secretId = await issueSecretId(ENV);
    fs.writeFileSync(secretIdFile, secretId, { mode: 0o600 });
    const r = spawnSync(process.execPath, [file], {
      cwd: consumer,
      encoding: 'utf8',
      timeout: 240_000,
      env: { PATH: process.env.PATH, HOME: os.tmpdir(), PGVAULT_OUTPUTS: outputsFile(ENV), PGVAULT_SECRET_ID_FILE: secretIdFile, LOG_LEVEL: 'warn' },
    });
    fs.rmSync(secretIdFile, { force: true });
    assert.doesNotMatch(r.stdout + r.stderr, new RegExp(secretId), `${file}: the secret_id never shows in its output`);
    assert.equal(r.status, 0, `${file} failed (${r.error?.message ?? `exit ${r.status}`}): ${r.stderr.trim().slice(-1500)}`);
    return JSON.parse(r.stdout.trim().split('\n').pop()!);
  }

  test('npm pack gives a tarball of the built package only; it installs outside the repository with its runtime dependencies', () => {
    const packed = JSON.parse(npm(path.join(REPO_ROOT, 'app'), 'pack', '--json', '--pack-destination', consumer))[0];
    tarball = path.join(consumer, packed.filename);
    const files: string[] = packed.files.map((f: { path: string }) => f.path).sort();
    console.log(`# figure: tarball ${packed.filename}: ${files.length} files, ${(packed.size / 1024).toFixed(1)} KiB packed, ${(packed.unpackedSize / 1024).toFixed(1)} KiB unpacked`);
    for (const f of files) {
      assert.match(f, /^(package\.json|README\.md|dist\/[a-z-]+\.(js|d\.ts)|alerts\/[a-z-]+\.yml)$/, `only the build, its types, the alert rules, the README and package.json ship (found ${f})`);
    }
    assert.ok(files.includes('alerts/pgvault-alerts.yml'), 'the alert rules for the runtime\'s metrics ship with it');
    assert.ok(!files.some((f) => f.endsWith('.test.yml')), 'their promtool tests do not');
    for (const f of ['dist/index.js', 'dist/index.d.ts', 'dist/pg-pool.js', 'README.md']) assert.ok(files.includes(f), `${f} ships`);

    fs.writeFileSync(path.join(consumer, 'package.json'), JSON.stringify({ name: 'pgvault-consumer', private: true, version: '1.0.0' }));
    const seconds = timeIt(() => npm(consumer, 'install', '--omit=dev', tarball));
    console.log(`# figure: npm install of the tarball into ${consumer}: ${seconds.toFixed(1)}s`);
    const installed = fs.readdirSync(path.join(consumer, 'node_modules'));
    for (const dev of ['typescript', 'cdktf', 'cdktf-cli', 'constructs', 'ajv', 'kysely', 'drizzle-orm', 'knex', 'fastify']) {
      assert.ok(!installed.includes(dev), `${dev} is not installed with the package`);
    }
    for (const dep of ['pg', 'node-vault', 'prom-client', 'pino']) assert.ok(installed.includes(dep), `${dep} is installed with the package`);
    assert.ok(fs.realpathSync(path.join(consumer, 'node_modules', '@pgvault', 'runtime')).startsWith(fs.realpathSync(consumer)), 'a copy, not a link into the repository');
  });

  test('a CommonJS and an ES module program each start a runtime, query and close; nothing is left after close()', async () => {
    assert.ok(tarball, 'the package is installed (previous test)');
    for (const program of ['plain.cjs', 'plain.mjs']) {
      const out = await runProgram(program);
      console.log(`# ${program}: ${JSON.stringify(out)}`);
      assert.match(out.user, /^v-/, `${program}: queries ran as a dynamic user`);
      assert.equal(out.close.unrevokedLeases, 0, `${program}: close() revoked every lease`);
      assert.equal(out.close.tokenRevoked, true, `${program}: close() revoked the token`);
      await assertNothingLeft(program);
    }
  });

  for (const [name, program, orm] of [['Kysely', 'kysely.mjs', KYSELY], ['Drizzle', 'drizzle.mjs', DRIZZLE], ['Knex', 'knex.mjs', KNEX]] as const) {
    test(`${name} on the pool face: reads and transactions across ${ROTATIONS} rotations, 0 failed, each transaction on one user, old leases revoked`, async () => {
      assert.ok(tarball, 'the package is installed (first test)');
      npm(consumer, 'install', orm);
      const r = await runProgram(program);
      console.log(`# figure: ${name}: ${r.reads} reads + ${r.transactions} transactions in ${r.seconds.toFixed(1)}s, ${r.failed} failed; ${r.rotations} rotations; transactions ran as ${r.txUsers.length} users; ${r.revokedBeforeClose.length} leases revoked before close()`);
      assert.equal(r.failed, 0, `${name}: no query failed (${r.errors.join(' | ')})`);
      assert.ok(r.rotations >= ROTATIONS, `${name}: the credentials rotated at least ${ROTATIONS} times under load (${r.rotations})`);
      assert.deepEqual(r.split, [], `${name}: every transaction ran under a single username, on one connection, as one transaction`);
      assert.ok(r.transactions >= 20, `${name}: transactions kept running (${r.transactions})`);
      assert.ok(r.txUsers.length >= ROTATIONS, `${name}: transactions ran under the successive credentials (${r.txUsers.length} users)`);
      for (const u of [...r.txUsers, ...r.readUsers]) assert.ok(r.issued.includes(u), `${name}: ${u} is one of the runtime's credentials`);
      // Every replaced credential but the newest replaced one (it may still be draining) was revoked while the load ran.
      const replaced = r.issued.slice(0, -1);
      for (const u of replaced.slice(0, -1)) assert.ok(r.revokedBeforeClose.includes(u), `${name}: the replaced lease of ${u} was revoked before close()`);
      assert.ok(r.heldBeforeClose <= 2, `${name}: at most the current lease and one draining are held (${r.heldBeforeClose})`);
      assert.equal(r.close.unrevokedLeases, 0);
      await assertNothingLeft(name);
    });
  }

  test('TypeScript takes the face, with no cast, where pg, Kysely, Drizzle and Knex expect a pool', () => {
    assert.ok(fs.existsSync(path.join(consumer, 'node_modules', 'knex')), 'the query builders are installed (previous tests)');
    fs.writeFileSync(path.join(consumer, 'typed.mts'), [
      "import type { Pool } from 'pg';",
      "import { Kysely, PostgresDialect } from 'kysely';",
      "import { drizzle } from 'drizzle-orm/node-postgres';",
      "import knex from 'knex';",
      "import { CredentialRuntime, VaultPgPool } from '@pgvault/runtime';",
      'declare const runtime: CredentialRuntime;',
      "const pool: VaultPgPool = runtime.pgPool('readwrite');",
      'export const asPg: Pool = pool;',
      'export const k = new Kysely<{ items: { id: number } }>({ dialect: new PostgresDialect({ pool }) });',
      'export const d = drizzle({ client: pool });',
      "export const x = knex({ client: 'pg', connectionPool: pool });",
      '',
    ].join('\n'));
    // Node's types come from the repository; everything else from the consumer's node_modules.
    fs.writeFileSync(path.join(consumer, 'tsconfig.json'), JSON.stringify({
      compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', strict: true, noEmit: true, skipLibCheck: true, typeRoots: [path.join(REPO_ROOT, 'node_modules', '@types')], types: ['node'] },
      files: ['typed.mts'],
    }));
    const r = spawnSync(process.execPath, [path.join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', consumer], { encoding: 'utf8' });
    assert.equal(r.status, 0, `tsc on the consumer's typed.mts: ${r.stdout}${r.stderr}`);
  });

  test('what the library hands out has no password, token or secret_id in an enumerable field', async () => {
    const secretId = await issueSecretId(ENV);
    const cfg = appConfigFromOutputs(readOutputs(outputsFile(ENV)), { secretId });
    const rt = await CredentialRuntime.start(cfg);
    try {
      const events: DatabaseCredentials[] = [];
      rt.lease('readwrite').on('issued', (c) => events.push(c));
      rt.lease('readwrite').on('rotated', (p, c) => events.push(p, c));
      await h.waitFor('a rotation of readwrite', async () => rt.pool('readwrite').rotations >= 1, 20_000);
      const face = rt.pgPool('readonly');
      const client = await face.connect();
      await client.query('SELECT 1');
      const rw = await rt.pgPool('readwrite').connect();
      await rw.query('SELECT 1');
      const creds = [rt.lease('readonly').current(), rt.lease('readwrite').current()];
      const passwords = [...creds, ...events].map((c) => c.password);
      assert.ok(passwords.every((p) => typeof p === 'string' && p.length >= 8), 'the passwords are there, only not enumerable');
      // The walk itself finds a secret where one is (a control).
      assert.deepEqual(enumerableSecrets({ a: new Map([['k', { b: 'x-SECRET-x' }]]) }, ['SECRET']), ['$.a<k>.b']);
      const token = (rt.session as any).client.token as string;
      assert.ok(token?.length > 8, 'the runtime holds a token');
      const secrets = [...passwords, token, secretId];
      const pgPoolOptions = [...rt.pools.values()].map((p) => (p as any).active.pool.options);
      const handedOut: Record<string, unknown> = {
        credentials: creds,
        'lease events': events,
        'pg client of the face (readonly)': client,
        'pg client of the face (readwrite)': rw,
        'its connection parameters': [client, rw].map((c: any) => c.connectionParameters),
        'the options given to pg.Pool': pgPoolOptions,
        'the pool face': face,
        'the rotating pool': rt.pool('readwrite'),
        'the config': cfg,
        'the runtime': rt,
      };
      for (const [what, value] of Object.entries(handedOut)) {
        assert.deepEqual(enumerableSecrets(value, secrets), [], `${what}: no secret under Object.keys`);
        const json = safeJson(value);
        assert.ok(!secrets.some((s) => json.includes(s)), `${what}: no secret in JSON.stringify`);
        const shown = util.inspect(value, { depth: Infinity });
        assert.ok(!secrets.some((s) => shown.includes(s)), `${what}: no secret in util.inspect`);
      }
      client.release();
      rw.release();
    } finally {
      await rt.close();
    }
    await assertNothingLeft('after the inspection');
  });

  test('the face counts connections and reports idle-connection errors as pg.Pool does', async () => {
    const cfg = appConfigFromOutputs(readOutputs(outputsFile(ENV)), { secretId: await issueSecretId(ENV) });
    const rt = await CredentialRuntime.start(cfg, { roles: ['readonly'], poolSize: 2 });
    const reference = new Pool({
      host: '127.0.0.1',
      port: PG_PORT,
      database: env.postgres.database,
      user: env.postgres.adminUser,
      password: readSecretFile(env.postgres.adminPasswordFile, 'admin password'),
      max: 2,
    });
    type Poolish = Pick<Pool, 'connect' | 'query' | 'totalCount' | 'idleCount' | 'waitingCount' | 'on' | 'once' | 'removeAllListeners'>;
    /** One script, run on each pool: the counts after every step, and what 'error' reported. */
    const script = async (pool: Poolish): Promise<unknown[]> => {
      const seen: unknown[] = [];
      const counts = (step: string) => seen.push([step, pool.totalCount, pool.idleCount, pool.waitingCount]);
      const tick = () => new Promise((r) => setTimeout(r, 50));
      counts('start');
      const a = await pool.connect();
      counts('one out');
      const b = await pool.connect();
      counts('two out');
      const pending = pool.connect();
      await tick();
      counts('third waits');
      a.release();
      const c = await pending;
      counts('third served');
      b.release();
      c.release();
      counts('all back');
      const victim = (b as any).processID as number;
      const reported = new Promise<[Error, PoolClient]>((resolve) => pool.once('error', (e: Error, cl: PoolClient) => resolve([e, cl])));
      await admin.query('SELECT pg_terminate_backend($1)', [victim]);
      const [err, cl] = await reported;
      await tick();
      seen.push(['error', (err as any).code, cl === b || cl === c]);
      counts('after error');
      await pool.query('SELECT 1');
      counts('after query');
      return seen;
    };
    try {
      const face = rt.pgPool('readonly');
      const typed: Pool = face; // TypeScript takes it where a pg.Pool is expected
      assert.ok(typed instanceof Pool, 'the face is a pg.Pool (for libraries that check instanceof)');
      assert.equal(face.options.max, 2);
      const expected = await script(reference);
      const got = await script(face as unknown as Poolish);
      console.log(`# pg.Pool: ${JSON.stringify(expected)}`);
      assert.deepEqual(got, expected, 'the face counts and reports as pg.Pool does');
      // Unlike pg.Pool, an idle error without a listener does not throw: it is counted.
      const idle = await face.connect();
      const pid = (idle as any).processID as number;
      idle.release();
      const before = face.totalCount;
      const terminatedBefore = rt.pool('readonly').failures.get('terminated') ?? 0;
      await admin.query('SELECT pg_terminate_backend($1)', [pid]);
      await h.waitFor('the terminated connection to be dropped', async () => face.totalCount === before - 1, 5000);
      assert.ok((rt.pool('readonly').failures.get('terminated') ?? 0) > terminatedBefore, 'the failure is counted');
      // end() as pg.Pool: once only; afterwards connect() refuses.
      await face.end();
      assert.equal(face.ended, true);
      await assert.rejects(face.connect(), (e: any) => e.code === 'POOL_ENDED');
      await assert.rejects(face.end(), (e: any) => e.code === 'POOL_ENDED');
      assert.notEqual(rt.pgPool('readonly'), face, 'the runtime hands out a new face after end()');
    } finally {
      await reference.end();
      await rt.close();
    }
    await assertNothingLeft('after the counts');
  });
});

function timeIt(fn: () => void): number {
  const t = Date.now();
  fn();
  return (Date.now() - t) / 1000;
}
