/**
 * End to end on the `ha` environment: a 3-node OpenBao Raft cluster (TLS with the
 * environment's CA, static-key auto-unseal, a file audit log) deployed and initialized by
 * `deploy`, the loss of its leader under API load, a restart of every node, and a clean destroy.
 * Load: the REST API as a real process, 2 workers, each one request per 100 ms (at most 20 requests/s).
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as https from 'node:https';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync, ChildProcess } from 'node:child_process';
import { EnvironmentConfig, REPO_ROOT, localDir } from '../../stacks/config';
import { clusterFiles } from '../../stacks/cluster-files';
import { auditLog, nodeCall } from '../../ops/vault/vault-cluster';
import { outputsFile } from '../../ops';
import { appConfigFromOutputs, readOutputs, VaultSession, AppConfig } from '@pgvault/runtime';
import * as h from '../harness';

const ENV = 'ha';
const API_PORT = 18240;
const BASE = `http://127.0.0.1:${API_PORT}`;
const SERVE = path.join(__dirname, '..', '..', 'api', 'serve.js');
const NODES = ['pgvault-ha-vault-0', 'pgvault-ha-vault-1', 'pgvault-ha-vault-2'];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('ha environment: a 3-node OpenBao Raft cluster, end to end', () => {
  let env: EnvironmentConfig;
  let cfg: AppConfig;
  let server: ChildProcess | undefined;
  const adminToken = () => fs.readFileSync(env.vault.tokenFile, 'utf8').trim();

  /** A session over every node, the app's way. */
  const session = async (addresses = env.vault.addresses): Promise<VaultSession> => {
    const s = new VaultSession({ address: addresses[0], addresses, caCert: cfg.vaultCaCert });
    await s.login(cfg.approleMount, cfg.roleId, await issueSecretIdAny(env));
    return s;
  };
  const raftServers = async (): Promise<any[]> => {
    for (const a of env.vault.addresses) {
      try {
        const r = await nodeCall(env, a, 'GET', 'sys/storage/raft/configuration', adminToken(), undefined, 3000);
        if (r.status === 200) return r.body.data.config.servers;
      } catch {
        // that node is down: ask the next
      }
    }
    throw new Error('no node answers sys/storage/raft/configuration');
  };
  const health = async (a: string): Promise<number> => {
    try {
      return (await nodeCall(env, a, 'GET', 'sys/health', undefined, undefined, 2000)).status;
    } catch {
      return 0;
    }
  };
  const allUnsealedWithLeader = async () => {
    const s = await Promise.all(env.vault.addresses.map(health));
    return s.every((x) => x === 200 || x === 429) && s.filter((x) => x === 200).length === 1;
  };

  before(async () => {
    h.requireToolchain();
    delete process.env.PGVAULT_ENVIRONMENTS_DIR;
    env = h.loadEnvironment(ENV);
    const umask = process.umask(0o022);
    try {
      // Shared with 7-replica: deployed here when it is not up, and left up under test/run.ts.
      const first = await h.upShared(ENV);
      console.log(`# figure: ${first.cold ? 'cold' : 'warm'} deploy of ${ENV}: ${first.seconds.toFixed(1)}s`);
      const warm = await h.timed(() => h.deploy(ENV));
      console.log(`# figure: warm deploy of ${ENV} (nothing to change; admin token renewed): ${warm.seconds.toFixed(1)}s`);
    } finally {
      process.umask(umask);
    }
    cfg = appConfigFromOutputs(readOutputs(outputsFile(ENV)), { secretId: 'unused' });
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  after(async () => {
    if (server && server.exitCode === null) server.kill('SIGTERM');
    for (const n of NODES) spawnQuiet('docker', ['start', n]);
    // test/run.ts destroys it after 7-replica (whose last test is the destroy); alone, this file cleans up.
    if (!h.keepShared()) await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
  }, { timeout: h.DEPLOY_HOOK_TIMEOUT_MS });

  test('raft has 3 voters and 1 leader; every node is unsealed and verified with the environment CA', async () => {
    const outputs = readOutputs(outputsFile(ENV)) as any;
    assert.deepEqual(outputs.vault_addresses, ['https://127.0.0.1:18230', 'https://127.0.0.1:18231', 'https://127.0.0.1:18232']);
    assert.equal(outputs.vault_ca_cert_file, clusterFiles(env).caCert);
    const servers = await raftServers();
    assert.equal(servers.length, 3);
    assert.equal(servers.filter((s) => s.voter).length, 3, '3 voters');
    assert.equal(servers.filter((s) => s.leader).length, 1, '1 leader');
    for (const a of env.vault.addresses) {
      const r = await nodeCall(env, a, 'GET', 'sys/health?standbyok=true');
      assert.equal(r.status, 200, `${a} answers over TLS verified with the CA`);
      assert.equal(r.body.sealed, false, `${a} is unsealed`);
      assert.equal(r.body.initialized, true);
      // Without the environment's CA the certificate is refused: TLS is really verified.
      await assert.rejects(
        new Promise((resolve, reject) => https.get(`${a}/v1/sys/health`, resolve).on('error', reject)),
        /self-signed|unable to verify|certificate/i,
      );
    }
    for (const f of [clusterFiles(env).caKey, clusterFiles(env).sealKey, clusterFiles(env).recoveryKeys, env.vault.tokenFile]) {
      assert.equal(fs.statSync(f).mode & 0o777, 0o600, `${f} is mode 0600`);
    }
    const recovery = JSON.parse(fs.readFileSync(clusterFiles(env).recoveryKeys, 'utf8'));
    assert.equal(recovery.recovery_keys_base64.length, 5);
    assert.equal(recovery.root_token, undefined, 'no root token is kept');
  });

  test('credentials issued through each node log in to Postgres', async () => {
    for (const a of env.vault.addresses) {
      const s = new VaultSession({ address: a, caCert: cfg.vaultCaCert });
      await s.login(cfg.approleMount, cfg.roleId, await issueSecretIdAny(env));
      const creds = await s.issue(cfg.mountPath, 'readonly');
      assert.equal(await h.tryLogin(env, creds.username, creds.password), 'ok', `credentials issued through ${a} log in`);
      await s.revoke(creds.leaseId);
      await s.revokeSelf();
    }
  });

  test('the root token was revoked; the admin token is a periodic token without root', async () => {
    const self = await nodeCall(env, env.vault.address, 'GET', 'auth/token/lookup-self', adminToken());
    assert.equal(self.status, 200);
    assert.deepEqual(self.body.data.policies.sort(), ['default', 'pgvault-admin']);
    assert.ok(self.body.data.period > 0, 'a periodic token');
    // The audit log shows the root token revoking itself, and no request by a root token after it.
    const entries = auditEntries(env);
    const revoked = entries.findIndex((e) => e.type === 'response' && e.request?.path === 'auth/token/revoke-self' && e.auth?.policies?.includes('root') && !e.error);
    assert.ok(revoked >= 0, 'the root token revoked itself');
    const rootAfter = entries.slice(revoked + 1).filter((e) => e.type === 'response' && e.auth?.policies?.includes('root') && !e.error);
    assert.equal(rootAfter.length, 0, 'no request by a root token succeeded after its revocation');
  });

  test('the audit log records the issuance and holds no secret in plain text', async () => {
    const s = await session();
    const creds = await s.issue(cfg.mountPath, 'readwrite');
    const token: string = (s as any).client.token;
    await sleep(500);
    const text = NODES.map((n) => spawnQuiet('docker', ['exec', n, 'cat', auditLog(env)]).stdout).join('\n');
    assert.match(text, /"path":"database\/creds\/readwrite"/, 'the issuance is in the audit log');
    for (const [what, secret] of [
      ['the issued password', creds.password],
      ['the app token', token],
      ['the admin token', adminToken()],
    ] as const) {
      assert.equal(text.includes(secret), false, `${what} is not in the audit log in plain text`);
    }
    await s.revoke(creds.leaseId);
    await s.revokeSelf();
  });

  test('no private key, seal key, recovery key or token in Terraform state or cdk.tf.json', () => {
    const f = clusterFiles(env);
    const texts = [
      ...fs.readdirSync(path.join(localDir(ENV), 'state')).filter((n) => n.endsWith('.tfstate')).map((n) => path.join(localDir(ENV), 'state', n)),
      ...['ha-infra', 'ha-secrets'].map((id) => path.join(REPO_ROOT, 'cdktf.out', 'stacks', id, 'cdk.tf.json')),
    ].map((p) => [p, fs.readFileSync(p, 'utf8')] as const);
    assert.ok(texts.length >= 4);
    const seal = fs.readFileSync(f.sealKey);
    const secrets: [string, string][] = [
      ['a private key', 'PRIVATE KEY'],
      ['the seal key (base64)', seal.toString('base64')],
      ['the seal key (hex)', seal.toString('hex')],
      ['the admin token', adminToken()],
      ...JSON.parse(fs.readFileSync(f.recoveryKeys, 'utf8')).recovery_keys_base64.map((k: string) => ['a recovery key', k] as [string, string]),
    ];
    for (const [p, text] of texts) {
      for (const [what, s] of secrets) assert.equal(text.includes(s), false, `${what} is in ${p}`);
    }
  });

  test('leader loss under API load: 0 failed requests, a new leader, issuance and renewal through the others, the node rejoins', async () => {
    const log = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-ha-')), 'server.log');
    const out = fs.openSync(log, 'a');
    server = spawn(process.execPath, [SERVE, ENV], { env: { ...process.env, PORT: String(API_PORT) }, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    await h.waitFor('the API to be ready', async () => (await fetch(`${BASE}/readyz`)).status === 200, 60_000);

    const leader = (await raftServers()).find((s) => s.leader).node_id as string;
    const leaderIndex = NODES.indexOf(leader);
    // The session talks to the leader first, so the kill takes its node away.
    const order = [env.vault.addresses[leaderIndex], ...env.vault.addresses.filter((_, i) => i !== leaderIndex)];
    const s = await session(order);
    const before = await s.issue(cfg.mountPath, 'readonly');

    let stop = false;
    const load = { ok: 0, failed: 0, statuses: {} as Record<string, number> };
    const worker = async (w: number) => {
      for (let i = 0; !stop; i++) {
        const post = (i + w) % 2 === 0;
        try {
          const res = await fetch(`${BASE}/items${post ? '' : '?limit=5'}`, {
            method: post ? 'POST' : 'GET',
            headers: post ? { 'content-type': 'application/json' } : undefined,
            body: post ? JSON.stringify({ name: `ha-${w}-${i}` }) : undefined,
            signal: AbortSignal.timeout(10_000),
          });
          await res.arrayBuffer();
          load.statuses[res.status] = (load.statuses[res.status] ?? 0) + 1;
          if (res.status < 400) load.ok++;
          else load.failed++;
        } catch (e: any) {
          load.statuses[e.name] = (load.statuses[e.name] ?? 0) + 1;
          load.failed++;
        }
        await sleep(100);
      }
    };
    const workers = [worker(0), worker(1)];
    await sleep(2000);

    const killedAt = Date.now();
    h.docker('kill', leader);
    const others = env.vault.addresses.filter((_, i) => i !== leaderIndex);
    let newLeaderSeconds: number | undefined;
    const leaderWatch = (async () => {
      while (newLeaderSeconds === undefined && Date.now() - killedAt < 60_000) {
        if ((await Promise.all(others.map(health))).includes(200)) newLeaderSeconds = (Date.now() - killedAt) / 1000;
        else await sleep(100);
      }
    })();
    // Issuance through the remaining nodes: the session skips the dead node and waits out the election.
    let issued;
    for (;;) {
      try {
        issued = await s.issue(cfg.mountPath, 'readonly');
        break;
      } catch (e) {
        if (Date.now() - killedAt > 60_000) throw e;
      }
    }
    const failoverSeconds = (Date.now() - killedAt) / 1000;
    await leaderWatch;
    assert.notEqual(s.currentAddress, env.vault.addresses[leaderIndex]);
    assert.equal(await h.tryLogin(env, issued.username, issued.password), 'ok');
    assert.ok((await s.renew(before.leaseId)) > 0, 'a lease issued before the kill renews through the remaining nodes');
    assert.ok((await s.renew(issued.leaseId)) > 0);
    await sleep(3000);
    stop = true;
    await Promise.all(workers);

    console.log(`# figure: ha failover: new leader ${newLeaderSeconds?.toFixed(1)}s after docker kill of the active node; first issuance through the others ${failoverSeconds.toFixed(1)}s after it`);
    console.log(`# figure: ha failover under load (2 workers, at most 20 requests/s): ${load.ok} API requests served, ${load.failed} failed`);
    assert.equal(load.failed, 0, `API requests failed during the failover: ${JSON.stringify(load.statuses)}`);
    assert.ok(load.ok > 20);
    assert.ok(newLeaderSeconds !== undefined && newLeaderSeconds < 15, `a new leader within 15 s (took ${newLeaderSeconds})`);

    // The killed node comes back, unseals itself with the static key and rejoins as a voter.
    spawnQuiet('docker', ['start', leader]);
    await h.waitFor('the killed node to auto-unseal and rejoin', async () => (await allUnsealedWithLeader()) && (await raftServers()).filter((x) => x.voter).length === 3, 60_000);
    assert.equal(await health(env.vault.addresses[leaderIndex]), 429, 'the killed node is back as an unsealed standby');

    server.kill('SIGTERM');
    await new Promise((r) => (server!.exitCode !== null ? r(undefined) : server!.once('exit', r)));
    await s.revoke(before.leaseId);
    await s.revoke(issued.leaseId);
    await s.revokeSelf();
  });

  test('persistence: after a restart of all three nodes a lease still renews, and revoking it drops the Postgres user', async () => {
    const s = await session();
    const creds = await s.issue(cfg.mountPath, 'readwrite');
    const t = await h.timed(async () => {
      h.docker('restart', ...NODES);
      await h.waitFor('every node unsealed with a leader', allUnsealedWithLeader, 90_000);
    });
    console.log(`# figure: ha restart of all three nodes until unsealed with a leader: ${t.seconds.toFixed(1)}s`);
    assert.ok((await s.renew(creds.leaseId)) > 0, 'the lease (and the token) survived the restart');
    const admin = await h.adminClient(env);
    try {
      const exists = async () => (await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [creds.username])).rowCount;
      assert.equal(await exists(), 1);
      await s.revoke(creds.leaseId);
      assert.equal(await exists(), 0, 'revoking the lease dropped the Postgres user');
    } finally {
      await admin.end();
      await s.revokeSelf();
    }
  });

});

function spawnQuiet(cmd: string, args: string[]): { status: number | null; stdout: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: h.DOCKER_TIMEOUT_MS });
  return { status: r.status, stdout: r.stdout ?? '' };
}

/** A fresh AppRole secret_id with the admin token, from whichever node answers. */
async function issueSecretIdAny(env: EnvironmentConfig): Promise<string> {
  const outputs = readOutputs(outputsFile(env.name)) as any;
  const token = fs.readFileSync(env.vault.tokenFile, 'utf8').trim();
  for (const a of env.vault.addresses) {
    try {
      const r = await nodeCall(env, a, 'POST', `auth/${outputs.approle_mount}/role/${outputs.approle_role_name}/secret-id`, token, {}, 5000);
      if (r.status === 200) return r.body.data.secret_id;
    } catch {
      // that node is down: ask the next
    }
  }
  throw new Error('no Vault node issued a secret_id');
}

/** Every node's audit log, parsed, in file order. */
function auditEntries(env: EnvironmentConfig): any[] {
  const all: any[] = [];
  for (const n of NODES) {
    const text = spawnQuiet('docker', ['exec', n, 'cat', auditLog(env)]).stdout;
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      try {
        all.push(JSON.parse(line));
      } catch {
        // a line being written
      }
    }
  }
  return all;
}
