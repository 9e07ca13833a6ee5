/**
 * A Vault cluster's life outside Terraform: its keys and configuration before apply (a CA and
 * node certificates made with openssl, the static seal key), and its initialization after:
 * `operator init` once, an admin policy and a periodic admin token for Terraform, the file
 * audit device, then the root token is revoked. No key or token ever reaches Terraform state.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as https from 'node:https';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { EnvironmentConfig } from '../../stacks/config';
import { clusterFiles, clusterNodeDirs, nodeConfig, nodeName, postgresFiles, replicationNames } from '../../stacks/cluster-files';
import { scramVerifier } from '../postgres/db-bootstrap';
import { writePrivateFile } from '../local/local-secrets';
import { log } from '../local/toolchain-env';

/** The admin token's period: every deploy renews it; unused for longer, it expires (see docs/ha.md). */
export const ADMIN_TOKEN_PERIOD = '168h';
export const ADMIN_POLICY = 'pgvault-admin';
export { auditLog } from '../../stacks/cluster-files';

function openssl(args: string[]): void {
  try {
    execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e: any) {
    throw new Error(`openssl ${args[0]} failed (${String(e.stderr ?? e.message).trim().slice(0, 300)}); install it with 'apt-get install openssl'`);
  }
}

/** The uid:gid the image runs as (or its `user`): the node files are given to it, as mode 0600 files are unreadable to anyone else. */
function imageUser(image: string, user = ''): string {
  try {
    return execFileSync('docker', ['run', '--rm', '--entrypoint', 'sh', image, '-c', `echo "$(id -u ${user}):$(id -g ${user})"`], { encoding: 'utf8', timeout: 120_000, killSignal: 'SIGKILL' }).trim();
  } catch (e: any) {
    throw new Error(`cannot find the user${user ? ` ${user}` : ''} of the image ${image} (${e.message}); build it with 'npm run toolchain' or set ${user ? 'POSTGRES_IMAGE' : '"docker.vaultImage" in the environment file'} to another image`);
  }
}

/** A server certificate from the environment's CA, for these DNS names (and 127.0.0.1); kept when it exists. */
function serverCertificate(env: EnvironmentConfig, dir: string, names: string[]): void {
  const f = clusterFiles(env);
  const cert = path.join(dir, 'tls.pem');
  const key = path.join(dir, 'tls-key.pem');
  if (fs.existsSync(cert) && fs.existsSync(key)) return;
  openssl(['req', '-x509', '-CA', f.caCert, '-CAkey', f.caKey, '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert,
    '-days', '825', '-subj', `/CN=${names[0]}`,
    '-addext', `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')},IP:127.0.0.1`,
    '-addext', 'basicConstraints=critical,CA:FALSE', '-addext', 'extendedKeyUsage=serverAuth,clientAuth']);
}

/** Mode 0700 for the directory, 0600 for its files, all given to `owner` (uid:gid). */
function privateTo(dir: string, owner: string): void {
  for (const p of [dir, ...fs.readdirSync(dir).map((n) => path.join(dir, n))]) fs.chmodSync(p, p === dir ? 0o700 : 0o600);
  execFileSync('chown', ['-R', owner, dir]);
}

/**
 * Postgres's TLS and replication files (docker.postgresTls), from the environment's CA made by
 * prepareClusterFiles: a certificate per server (its container name, localhost, 127.0.0.1),
 * the CA for the replica, and the replication password: in the replica's pgpass (0600) and,
 * as a SCRAM verifier only, for the primary. Kept when they exist; none reaches Terraform.
 */
export function preparePostgresFiles(env: EnvironmentConfig): void {
  if (!env.docker?.postgresTls) return;
  const { primaryDir, replicaDir } = postgresFiles(env);
  const umask = process.umask(0o077);
  try {
    fs.mkdirSync(primaryDir, { recursive: true, mode: 0o700 });
    serverCertificate(env, primaryDir, [env.postgres.host, 'localhost']);
    const owner = imageUser(env.docker.postgresImage, 'postgres');
    if (env.postgres.replica) {
      const { role } = replicationNames(env);
      fs.mkdirSync(replicaDir, { recursive: true, mode: 0o700 });
      serverCertificate(env, replicaDir, [env.postgres.replica.host, 'localhost']);
      fs.copyFileSync(clusterFiles(env).caCert, path.join(replicaDir, 'ca.pem'));
      const pgpass = path.join(replicaDir, 'pgpass');
      if (!fs.existsSync(pgpass)) fs.writeFileSync(pgpass, `*:*:*:${role}:${crypto.randomBytes(24).toString('base64url')}\n`, { mode: 0o600, flag: 'wx' });
      const verifier = path.join(primaryDir, 'replication.scram');
      if (!fs.existsSync(verifier)) {
        const password = fs.readFileSync(pgpass, 'utf8').trim().split(':').pop()!;
        fs.writeFileSync(verifier, scramVerifier(password), { mode: 0o600, flag: 'wx' });
      }
      privateTo(replicaDir, owner);
    }
    privateTo(primaryDir, owner);
  } finally {
    process.umask(umask);
  }
}

/** Makes what the nodes need before apply; keeps what exists (a redeploy changes nothing). */
export function prepareClusterFiles(env: EnvironmentConfig): void {
  const f = clusterFiles(env);
  fs.mkdirSync(f.tlsDir, { recursive: true, mode: 0o700 });
  const umask = process.umask(0o077);
  try {
    if (!fs.existsSync(f.caCert) || !fs.existsSync(f.caKey)) {
      openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f.caKey, '-out', f.caCert, '-days', '825',
        '-subj', `/CN=pgvault-${env.name} CA`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
    }
    if (!fs.existsSync(f.sealKey)) fs.writeFileSync(f.sealKey, crypto.randomBytes(32), { mode: 0o600, flag: 'wx' });
    const owner = imageUser(env.docker!.vaultImage);
    clusterNodeDirs(env).forEach((dir, i) => {
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
      const cert = path.join(dir, 'tls.pem');
      const key = path.join(dir, 'tls-key.pem');
      if (!fs.existsSync(cert) || !fs.existsSync(key)) {
        openssl(['req', '-x509', '-CA', f.caCert, '-CAkey', f.caKey, '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert,
          '-days', '825', '-subj', `/CN=${nodeName(env, i)}`,
          '-addext', `subjectAltName=DNS:${nodeName(env, i)},DNS:localhost,IP:127.0.0.1`,
          '-addext', 'basicConstraints=critical,CA:FALSE', '-addext', 'extendedKeyUsage=serverAuth,clientAuth']);
      }
      fs.copyFileSync(f.caCert, path.join(dir, 'ca.pem'));
      // Vault's connection verifies Postgres with it (sslrootcert; postgres.caCertFileOnVault).
      if (env.docker!.postgresTls) fs.copyFileSync(f.caCert, path.join(dir, 'postgres-ca.pem'));
      fs.copyFileSync(f.sealKey, path.join(dir, 'seal.key'));
      fs.writeFileSync(path.join(dir, 'config.hcl'), nodeConfig(env, i), { mode: 0o600 });
      privateTo(dir, owner);
    });
  } finally {
    process.umask(umask);
  }
}

interface Answer {
  status: number;
  body: any;
}

/** One HTTPS call to one node, verified with the environment's CA. Never logs a body. */
export function nodeCall(env: EnvironmentConfig, address: string, method: string, apiPath: string, token?: string, body?: unknown, timeoutMillis = 5000): Promise<Answer> {
  const ca = fs.readFileSync(env.vault.caCertFile!);
  return new Promise((resolve, reject) => {
    const req = https.request(
      new URL(`${address}/v1/${apiPath}`),
      { method, ca, headers: { 'Content-Type': 'application/json', ...(token ? { 'X-Vault-Token': token } : {}) } },
      (res) => {
        let data = '';
        res.on('data', (c) => (data += c));
        res.on('end', () => {
          let parsed: any = {};
          try {
            parsed = data ? JSON.parse(data) : {};
          } catch {
            parsed = {};
          }
          resolve({ status: res.statusCode ?? 0, body: parsed });
        });
      },
    );
    req.setTimeout(timeoutMillis, () => req.destroy(new Error(`no answer within ${timeoutMillis} ms`)));
    req.on('error', reject);
    if (body !== undefined) req.write(JSON.stringify(body));
    req.end();
  });
}

async function until<T>(envName: string, what: string, timeoutMillis: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMillis;
  let last = '';
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (e: any) {
      last = e.message;
    }
    if (Date.now() > deadline) throw new Error(`Vault cluster of ${envName}: ${what} not reached within ${timeoutMillis / 1000} s${last ? ` (last error: ${last})` : ''}; see 'docker logs' of its nodes`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** The policy of Terraform's admin token: what the stacks and the deploy's hooks use, nothing more. */
export function adminPolicy(env: EnvironmentConfig): string {
  const mount = env.secretsEngine.mountPath;
  const approle = env.appAccess.approleMount;
  // The text keeps this file's old path: the policy deployed clusters hold stays the same.
  return `# Made by scripts/vault-cluster.ts: what the -secrets stack and its hooks need.
path "sys/mounts" { capabilities = ["read"] }
path "sys/mounts/${mount}" { capabilities = ["create", "read", "update", "delete", "sudo"] }
path "sys/mounts/${mount}/*" { capabilities = ["create", "read", "update", "delete", "sudo"] }
path "sys/auth" { capabilities = ["read"] }
path "sys/auth/${approle}" { capabilities = ["create", "read", "update", "delete", "sudo"] }
path "sys/auth/${approle}/*" { capabilities = ["create", "read", "update", "delete", "sudo"] }
path "sys/mounts/auth/${approle}" { capabilities = ["read"] }
path "sys/mounts/auth/${approle}/*" { capabilities = ["read", "update"] }
# The app's policy only: a token that could write any policy could widen its own.
path "sys/policy/${env.appAccess.roleName}" { capabilities = ["create", "read", "update", "delete"] }
path "sys/policies/acl/${env.appAccess.roleName}" { capabilities = ["create", "read", "update", "delete"] }
path "${mount}/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "auth/${approle}/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "sys/leases/lookup/*" { capabilities = ["read", "list", "update", "sudo"] }
path "sys/leases/revoke-prefix/*" { capabilities = ["update", "sudo"] }
path "sys/leases/revoke-force/*" { capabilities = ["update", "sudo"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
path "sys/storage/raft/configuration" { capabilities = ["read"] }
# npm run status: each lease's expiry, and the Raft peers' health.
path "sys/leases/lookup" { capabilities = ["update"] }
path "sys/storage/raft/autopilot/state" { capabilities = ["read"] }
`;
}

/**
 * Initializes the cluster once (then renews the admin token on every deploy), and waits until
 * every node is unsealed and a voter. Returns what it did, for the log.
 */
export async function initializeCluster(env: EnvironmentConfig, timeoutMillis = 120_000): Promise<'initialized' | 'renewed'> {
  const f = clusterFiles(env);
  const [first] = env.vault.addresses;
  const init = await until(env.name, 'node 0 answering', timeoutMillis, async () => (await nodeCall(env, first, 'GET', 'sys/init')).body);
  let did: 'initialized' | 'renewed';
  if (!init.initialized) {
    const res = await nodeCall(env, first, 'PUT', 'sys/init', undefined, { recovery_shares: 5, recovery_threshold: 3 }, 60_000);
    if (res.status !== 200 || !res.body.root_token) throw new Error(`Vault cluster of ${env.name}: operator init answered ${res.status}: ${(res.body.errors ?? []).join('; ')}`);
    writePrivateFile(f.recoveryKeys, JSON.stringify({ recovery_keys_base64: res.body.recovery_keys_base64, recovery_threshold: 3, purpose: 'bao operator generate-root (a new root token)' }, null, 2) + '\n');
    const root: string = res.body.root_token;
    await until(env.name, 'an active node', timeoutMillis, async () => ((await nodeCall(env, first, 'GET', 'sys/health')).status === 200 ? true : undefined));
    const must = async (method: string, p: string, body?: unknown) => {
      const r = await nodeCall(env, first, method, p, root, body, 30_000);
      if (r.status >= 300) throw new Error(`Vault cluster of ${env.name}: ${method} ${p} answered ${r.status}: ${(r.body.errors ?? []).join('; ')}`);
      return r.body;
    };
    await must('PUT', `sys/policies/acl/${ADMIN_POLICY}`, { policy: adminPolicy(env) });
    const created = await must('POST', 'auth/token/create-orphan', { policies: [ADMIN_POLICY], period: ADMIN_TOKEN_PERIOD, display_name: 'pgvault-terraform', renewable: true });
    writePrivateFile(env.vault.tokenFile, created.auth.client_token + '\n');
    await must('POST', 'auth/token/revoke-self');
    did = 'initialized';
  } else {
    let token: string;
    try {
      token = fs.readFileSync(env.vault.tokenFile, 'utf8').trim();
    } catch {
      throw new Error(`Vault cluster of ${env.name} is initialized but its admin token file ${env.vault.tokenFile} is missing; make a root token with the recovery keys in ${f.recoveryKeys} ('bao operator generate-root'), create a token with the policy ${ADMIN_POLICY} and write it there (mode 0600)`);
    }
    const res = await until(env.name, 'an active node', timeoutMillis, async () => {
      const r = await nodeCall(env, first, 'POST', 'auth/token/renew-self', token);
      return r.status === 503 || r.status === 500 ? undefined : r;
    });
    if (res.status !== 200) {
      throw new Error(`Vault cluster of ${env.name}: the admin token in ${env.vault.tokenFile} was refused (${res.status}); it expires when no deploy renews it for ${ADMIN_TOKEN_PERIOD}. Make a root token with the recovery keys in ${f.recoveryKeys} ('bao operator generate-root') and a new token with the policy ${ADMIN_POLICY}`);
    }
    did = 'renewed';
  }
  const token = fs.readFileSync(env.vault.tokenFile, 'utf8').trim();
  const nodes = env.vault.addresses.length;
  await until(env.name, `${nodes} unsealed voters`, timeoutMillis, async () => {
    for (const a of env.vault.addresses) {
      const h = await nodeCall(env, a, 'GET', 'sys/health');
      if (h.status !== 200 && h.status !== 429) return undefined;
    }
    const cfg = await nodeCall(env, first, 'GET', 'sys/storage/raft/configuration', token);
    const servers: any[] = cfg.body?.data?.config?.servers ?? [];
    return servers.filter((s) => s.voter).length === nodes ? true : undefined;
  });
  log(`${env.name}: Vault cluster ${did === 'initialized' ? 'initialized (root token revoked)' : 'up; admin token renewed'}; ${nodes} nodes unsealed`);
  return did;
}
