/**
 * CDK Terrain, the community continuation of CDKTF: `cdktn deploy` and `cdktn destroy`
 * (cdktn-cli, installed by the toolchain, run on Node >= 22.19) on a copy of `local` with its
 * own name and ports, exactly as the README's direct path runs `cdktf`: the hooks write the
 * outputs, the app gets working credentials, and a destroy under a live lease leaves nothing.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Client } from 'pg';
import { EnvironmentConfig, localDir, REPO_ROOT } from '../../stacks/config';
import * as h from '../harness';

const ENV = 'terrain';
const PG_PORT = 15540;
const VAULT_PORT = 18340;

/** What the toolchain's `cdktn` runs: its version and the Node it runs on. */
function cdktnInfo(): { version: string; node: string } {
  const r = spawnSync('bash', ['-c', 'eval "$(bash toolchain/toolchain.sh env)" && w="$(command -v cdktn)" && cdktn --version && sed -n \'s/^PATH="\\([^:]*\\):.*/\\1/p\' "$w"'], {
    cwd: REPO_ROOT,
    encoding: 'utf8',
    timeout: 120_000,
  });
  if (r.status !== 0) throw new Error(`end-to-end prerequisite missing: cdktn (${r.error?.message ?? r.stderr.trim()}); run: npm run toolchain`);
  const [version, nodeDir] = r.stdout.trim().split('\n').filter((l) => !/^\s*$/.test(l)).slice(-2);
  const node = spawnSync(path.join(nodeDir, 'node'), ['--version'], { encoding: 'utf8', timeout: 30_000 }).stdout.trim();
  return { version: version.trim(), node };
}

describe('CDK Terrain: cdktn deploy and destroy, as the direct path', () => {
  let env: EnvironmentConfig;
  let destroyed = false;

  before(async () => {
    h.requireToolchain();
    h.scratchEnvironment('local', (doc) => {
      doc.description = 'A copy of local for the CDK Terrain test, with its own name and ports.';
      doc.docker.postgresHostPort = PG_PORT;
      doc.docker.vaultHostPort = VAULT_PORT;
    }, ENV);
    env = h.loadEnvironment(ENV);
    await h.destroy(ENV);
    // What `npm run deploy` would have made first (the README's direct path starts after one).
    h.prepareLocalSecrets(env);
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  after(async () => {
    if (!destroyed) await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  test('the toolchain\'s cdktn is cdktn-cli 0.24 on Node 22.19 or later', () => {
    const { version, node } = cdktnInfo();
    console.log(`# figure: cdktn ${version} on Node ${node}`);
    assert.match(version, /^0\.24\./);
    const [major, minor] = node.replace(/^v/, '').split('.').map(Number);
    assert.ok(major > 22 || (major === 22 && minor >= 19), `cdktn runs on Node >= 22.19 (${node})`);
  });

  test('cdktn deploy: both stacks, the outputs file, and working credentials for both roles', async () => {
    const t = Date.now();
    assert.equal(h.directCdktf(ENV, `deploy ${ENV}-infra ${ENV}-secrets`, 'cdktn'), 0, `cdktn deploy (log: ${process.env.PGVAULT_CDKTF_LOG})`);
    console.log(`# figure: cdktn deploy of ${ENV} (cold): ${((Date.now() - t) / 1000).toFixed(1)}s`);
    const outputs = JSON.parse(fs.readFileSync(path.join(localDir(ENV), 'outputs.json'), 'utf8'));
    assert.equal(outputs.vault_address, `http://127.0.0.1:${VAULT_PORT}`);
    assert.equal(outputs.postgres_port, PG_PORT);
    const { cfg, session } = await h.appSession(ENV);
    try {
      for (const role of ['readonly', 'readwrite']) {
        const creds = await session.issue(cfg.mountPath, role);
        assert.equal(await h.tryLogin(env, creds.username, creds.password), 'ok', `${role} logs in`);
      }
    } finally {
      await session.revokeSelf();
    }
  });

  test('cdktn destroy with a live lease (its user in an open session) leaves no user, role, container, volume or network', async () => {
    const { cfg, session } = await h.appSession(ENV);
    const creds = await session.issue(cfg.mountPath, 'readonly');
    const live = new Client({ host: env.postgres.clientHost, port: env.postgres.clientPort, database: env.postgres.database, user: creds.username, password: creds.password });
    live.on('error', () => undefined);
    await live.connect();
    await live.query('SELECT 1');
    const watch = h.watchRoles(env);
    try {
      const t = Date.now();
      // One command for both stacks, as the README's direct path; the watch looks while it runs.
      assert.equal(await h.directCdktfAsync(ENV, `destroy ${ENV}-infra ${ENV}-secrets`, 'cdktn'), 0, `cdktn destroy (log: ${process.env.PGVAULT_CDKTF_LOG})`);
      console.log(`# figure: cdktn destroy of ${ENV} with a live lease: ${((Date.now() - t) / 1000).toFixed(1)}s`);
    } finally {
      await live.end().catch(() => undefined);
    }
    const seen = await watch.stop();
    assert.ok(seen.looks > 0, 'the watch saw the server before it went away');
    assert.deepEqual(seen.vaultNamed, [], 'the live user was dropped before the server went');
    assert.deepEqual(seen.ours, [], "and every role of the environment's");
    assert.equal(fs.existsSync(path.join(localDir(ENV), 'outputs.json')), false, 'the outputs file is gone');
    assert.equal(h.docker('ps', '-a', '--filter', `name=pgvault-${ENV}-`, '--format', '{{.Names}}'), '');
    assert.equal(h.docker('network', 'ls', '--filter', `name=pgvault-${ENV}`, '--format', '{{.Name}}'), '');
    assert.equal(h.docker('volume', 'ls', '--filter', `name=pgvault-${ENV}-`, '--format', '{{.Name}}'), '');
    await h.destroy(ENV);
    destroyed = true;
  });
});
