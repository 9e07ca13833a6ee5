#!/usr/bin/env node
/**
 * The operator's view of one environment, on one screen:
 *   npm run --silent status -- <env> [--json]
 * Vault nodes (sealed, HA role, version, Raft peers), Postgres servers (version, role, replay
 * lag), live leases per role, the project's certificates, the state backend and its lock, and
 * the problems, one line each with what to do. Exit code: 0 when nothing is wrong, 1 when
 * something is, 2 for a usage error. It only reads (with the admin token and the superuser
 * where it must) and prints no secret.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DEFAULT_REPLICA_LAG_WINDOW_MILLIS, safeMessage } from '@pgvault/runtime';
import { EnvironmentConfig, loadEnvironment, localDir, REPO_ROOT } from '../../stacks/config';
import { nodeName } from '../../stacks/cluster-files';
import { stateFile, stateSchema } from '../../stacks/state-location';
import { adminConnect } from '../postgres/db-bootstrap';
import { outputsFile } from '../local/outputs';
import { readSecretFile } from '../local/local-secrets';
import { connectionString } from '../terraform/state-backend';
import { VaultAdminError, vaultFetch } from '../vault/vault-admin';
import {
  CertificateFacts,
  PostgresFacts,
  problemsOf,
  RaftPeer,
  RoleLeaseFacts,
  StateFacts,
  StateLockFacts,
  statusJson,
  statusText,
  StatusFacts,
  VaultNodeFacts,
} from './status-report';

/** Each call to a server answers within this, or is reported as not answering. */
const CALL_TIMEOUT_MILLIS = 5000;
/** At most this many lease look-ups per role (each is one call to Vault). */
const MAX_LEASE_LOOKUPS = 500;
const LOOKUP_CONCURRENCY = 8;
/** The whole of one role's listing and look-ups (a cluster's first nodes may not answer). */
const LEASES_BOUND_MILLIS = 30_000;

const stackIds = (env: EnvironmentConfig): string[] => (env.infrastructure === 'docker' ? [`${env.name}-infra`, `${env.name}-secrets`] : [`${env.name}-secrets`]);

/**
 * `work`, or `late()` once `millis` have passed, whatever the socket does: a paused server
 * accepts the connection and never answers. (The process exits when the report is printed.)
 */
function bounded<T>(work: Promise<T>, millis: number, late: () => T | Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<T>((resolve, reject) => {
    timer = setTimeout(() => Promise.resolve().then(late).then(resolve, reject), millis);
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

function nodeGet(env: EnvironmentConfig, address: string, apiPath: string): Promise<any> {
  return bounded(vaultFetch(env, `${address}/v1/${apiPath}`, '', 'GET', undefined, CALL_TIMEOUT_MILLIS), CALL_TIMEOUT_MILLIS, () => {
    throw new Error(`Vault GET /v1/${apiPath.split('?')[0]}: no answer within ${CALL_TIMEOUT_MILLIS / 1000} s`);
  });
}

async function vaultNode(env: EnvironmentConfig, address: string): Promise<VaultNodeFacts> {
  try {
    // Every state answers 200 with these, so that a sealed or standby node shows as such.
    const h = await nodeGet(env, address, 'sys/health?standbyok=true&perfstandbyok=true&sealedcode=200&uninitcode=200');
    let haRole: VaultNodeFacts['haRole'];
    if (!h.sealed && h.initialized) {
      if (h.standby) haRole = 'standby';
      else {
        const leader = await nodeGet(env, address, 'sys/leader').catch(() => undefined);
        haRole = leader?.ha_enabled === false ? 'single' : 'leader';
      }
    }
    return { address, reachable: true, initialized: h.initialized, sealed: h.sealed, haRole, version: h.version };
  } catch (e) {
    return { address, reachable: false, error: safeMessage(e) };
  }
}

/** The Raft peers by node id: autopilot's view (health), or the configuration's without its grant. */
async function raftPeers(admin: Admin): Promise<Map<string, RaftPeer>> {
  const peers = new Map<string, RaftPeer>();
  try {
    const s = await admin('GET', 'sys/storage/raft/autopilot/state');
    for (const p of Object.values<any>(s.data?.servers ?? {})) {
      peers.set(p.id, { nodeId: p.id, status: p.status, healthy: Boolean(p.healthy), lastContact: p.last_contact });
    }
    return peers;
  } catch (e) {
    // A deployment made before the admin policy granted autopilot's state: the configuration.
    if (!(e instanceof VaultAdminError && e.status === 403)) throw e;
  }
  const c = await admin('GET', 'sys/storage/raft/configuration');
  for (const p of c.data?.config?.servers ?? []) peers.set(p.node_id, { nodeId: p.node_id, status: p.leader ? 'leader' : p.voter ? 'voter' : 'non-voter' });
  return peers;
}

/** An admin call to one node, bounded. */
type Admin = (method: string, apiPath: string, body?: unknown) => Promise<any>;

/**
 * The nodes, then, through the leader (or any unsealed node: standbys forward), the Raft peers
 * and each role's leases. Admin calls go to a node that answered, so a node that does not
 * costs its one health check only.
 */
async function vaultFacts(env: EnvironmentConfig, token: string | undefined, tokenError: string | undefined): Promise<{ nodes: VaultNodeFacts[]; cluster: boolean; raftError?: string; roles: Record<string, RoleLeaseFacts> }> {
  let nodes = await Promise.all(env.vault.addresses.map((a) => vaultNode(env, a)));
  const cluster = Boolean(env.docker?.vaultNodes) || env.vault.addresses.length > 1;
  const target = nodes.find((n) => n.haRole === 'leader') ?? nodes.find((n) => n.reachable && !n.sealed);
  const admin: Admin | undefined =
    target && token
      ? (method, apiPath, body) =>
          bounded(vaultFetch(env, `${target.address}/v1/${apiPath}`, token, method, body, CALL_TIMEOUT_MILLIS), CALL_TIMEOUT_MILLIS, () => {
            throw new Error(`Vault ${method} /v1/${apiPath.split('?')[0]}: no answer within ${CALL_TIMEOUT_MILLIS / 1000} s`);
          })
      : undefined;
  let raftError: string | undefined;
  if (cluster && admin) {
    try {
      const peers = await raftPeers(admin);
      // Docker clusters name their nodes; node i listens on the i-th address.
      nodes = nodes.map((n, i) => ({ ...n, raft: env.docker ? peers.get(nodeName(env, i)) : undefined }));
    } catch (e) {
      raftError = safeMessage(e);
    }
  }
  const roles: Record<string, RoleLeaseFacts> = {};
  await Promise.all(
    env.roles.map(async (r) => {
      roles[r.name] = !admin
        ? { liveLeases: 0, error: tokenError ?? 'no Vault node answers' }
        : await bounded(roleLeases(admin, `${env.secretsEngine.mountPath}/creds/${r.name}`), LEASES_BOUND_MILLIS, () => ({ liveLeases: 0, error: `Vault did not list the leases within ${LEASES_BOUND_MILLIS / 1000} s` }));
    }),
  );
  // In the environment's order of roles.
  return { nodes, cluster, raftError, roles: Object.fromEntries(env.roles.map((r) => [r.name, roles[r.name]])) };
}

/** One server's facts; a primary also tells the most WAL bytes a replica has not replayed (its view is the fuller one). */
async function postgresServer(env: EnvironmentConfig, at: { clientHost: string; clientPort: number }, expectedRole: 'primary' | 'replica'): Promise<PostgresFacts & { unreplayedBytes?: number }> {
  const endpoint = `${at.clientHost}:${at.clientPort}`;
  let client;
  try {
    client = await adminConnect({ ...env, postgres: { ...env.postgres, clientHost: at.clientHost, clientPort: at.clientPort } }, 0);
  } catch (e) {
    return { endpoint, expectedRole, reachable: false, error: safeMessage(e) };
  }
  client.on('error', () => undefined);
  try {
    await client.query(`SET statement_timeout = ${CALL_TIMEOUT_MILLIS}`);
    const base = (await client.query("SELECT current_setting('server_version') AS version, pg_is_in_recovery() AS recovery")).rows[0];
    const version = String(base.version).split(' ')[0];
    if (!base.recovery) {
      // replay_lsn is visible to a superuser (or pg_read_all_stats).
      const r = await client.query('SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8 AS b FROM pg_stat_replication');
      const bytes = r.rows.map((x) => x.b).filter((b) => b !== null).map(Number);
      return { endpoint, expectedRole, reachable: true, role: 'primary', version, streamingReplicas: r.rows.length, ...(bytes.length ? { unreplayedBytes: Math.max(...bytes) } : {}) };
    }
    // Caught up (all received WAL replayed): no lag, however long ago the last transaction was.
    const r = (
      await client.query(
        `SELECT CASE WHEN pg_last_wal_receive_lsn() IS NULL OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0
                     ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END::float8 AS lag_s,
                pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8 AS lag_bytes`,
      )
    ).rows[0];
    return { endpoint, expectedRole, reachable: true, role: 'replica', version, replayLagSeconds: Number(r.lag_s ?? 0), replayLagBytes: Math.max(0, Number(r.lag_bytes ?? 0)) };
  } catch (e) {
    return { endpoint, expectedRole, reachable: false, error: safeMessage(e) };
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function postgresFacts(env: EnvironmentConfig): Promise<PostgresFacts[]> {
  // Connecting takes up to 10 s (adminConnect's bound), each statement up to CALL_TIMEOUT_MILLIS.
  const server = (at: { clientHost: string; clientPort: number }, role: 'primary' | 'replica') =>
    bounded(postgresServer(env, at, role), 10_000 + 3 * CALL_TIMEOUT_MILLIS, () => ({ endpoint: `${at.clientHost}:${at.clientPort}`, expectedRole: role, reachable: false, error: `no answer within ${(10_000 + 3 * CALL_TIMEOUT_MILLIS) / 1000} s` }));
  const servers = [server(env.postgres, 'primary')];
  if (env.postgres.replica) servers.push(server(env.postgres.replica, 'replica'));
  const [primary, replica] = await Promise.all(servers);
  const { unreplayedBytes, ...p } = primary;
  if (!replica) return [p];
  const { unreplayedBytes: _none, ...r } = replica;
  return [p, r.role === 'replica' && unreplayedBytes !== undefined ? { ...r, replayLagBytes: Math.max(r.replayLagBytes ?? 0, unreplayedBytes) } : r];
}

/** Runs `fn` over `items`, at most `n` at once. */
async function eachLimited<T>(items: readonly T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]);
  }));
}

/** Live leases of one role under the mount's creds/<role>/ prefix, and the earliest expiry among them. */
async function roleLeases(admin: Admin, prefix: string): Promise<RoleLeaseFacts> {
  let keys: string[];
  try {
    keys = (await admin('GET', `sys/leases/lookup/${prefix}?list=true`)).data?.keys ?? [];
  } catch (e) {
    if (e instanceof VaultAdminError && e.status === 404) return { liveLeases: 0 };
    return { liveLeases: 0, error: safeMessage(e) };
  }
  const ids = keys.filter((k) => !k.endsWith('/')).slice(0, MAX_LEASE_LOOKUPS);
  let earliest: number | undefined;
  let lookupError: string | undefined;
  await eachLimited(ids, LOOKUP_CONCURRENCY, async (k) => {
    try {
      const l = await admin('PUT', 'sys/leases/lookup', { lease_id: `${prefix}/${k}` });
      const t = l.data?.expire_time ? Date.parse(l.data.expire_time) : NaN;
      if (Number.isFinite(t) && (earliest === undefined || t < earliest)) earliest = t;
    } catch (e) {
      // Expired or revoked between the list and the look-up: it is simply gone.
      if (e instanceof VaultAdminError && e.status === 403) lookupError ??= 'the admin token may not look leases up (403): its policy needs path "sys/leases/lookup" { capabilities = ["update"] }';
      else if (!(e instanceof VaultAdminError && e.status === 400)) lookupError ??= safeMessage(e);
    }
  });
  return {
    liveLeases: keys.length,
    ...(earliest !== undefined ? { earliestExpiry: new Date(earliest).toISOString() } : {}),
    ...(ids.length < keys.length ? { lookedUp: ids.length } : {}),
    ...(lookupError && earliest === undefined && ids.length ? { error: `lease look-ups failed: ${lookupError}` } : {}),
  };
}

/** Certificates (not keys) under the environment's local directory, and its CA files elsewhere, one per certificate. */
function certificateFacts(env: EnvironmentConfig, now: number): CertificateFacts[] {
  const files: string[] = [];
  const walk = (dir: string) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries.sort((a, b) => Number(a.isDirectory()) - Number(b.isDirectory()) || a.name.localeCompare(b.name))) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && /\.(pem|crt)$/.test(e.name) && !/key/i.test(e.name)) files.push(p);
    }
  };
  // The environment's CA files first: the CA is then shown under its own name, not a node's copy.
  for (const f of [env.vault.caCertFile, env.postgres.caCertFile]) if (f && !files.includes(f)) files.push(f);
  walk(localDir(env.name));
  const seen = new Set<string>();
  const out: CertificateFacts[] = [];
  for (const file of files) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    const pem = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(text)?.[0];
    if (!pem) continue;
    let cert: crypto.X509Certificate;
    try {
      cert = new crypto.X509Certificate(pem);
    } catch {
      continue;
    }
    // The CA is copied beside each node's files: shown once, where it is first found.
    if (seen.has(cert.fingerprint256)) continue;
    seen.add(cert.fingerprint256);
    const expires = Date.parse(cert.validTo);
    const rel = path.relative(REPO_ROOT, file);
    out.push({
      file: rel.startsWith('..') ? file : rel,
      subject: cert.subject.replace(/\n/g, ', '),
      expiresAt: new Date(expires).toISOString(),
      daysLeft: Math.floor((expires - now) / 86_400_000),
      isCa: cert.ca,
    });
  }
  return out;
}

/** Terraform's local backend writes `.<state file>.lock.info` beside the state while it holds the lock. */
function localLockInfoFile(env: EnvironmentConfig, stackId: string): string {
  const f = stateFile(env, stackId);
  return path.join(path.dirname(f), `.${path.basename(f)}.lock.info`);
}

async function stateFacts(env: EnvironmentConfig): Promise<StateFacts> {
  const locks: StateLockFacts[] = [];
  if (env.state.backend === 'local') {
    for (const stack of stackIds(env)) {
      const file = localLockInfoFile(env, stack);
      let info: any;
      try {
        info = JSON.parse(fs.readFileSync(file, 'utf8'));
      } catch (e: any) {
        if (e.code === 'ENOENT') continue;
        info = {};
      }
      const rel = path.relative(REPO_ROOT, file);
      locks.push({ stack, holder: `${info.Who ?? 'unknown'}${info.Operation ? ` (${info.Operation})` : ''}`, since: info.Created, file: rel.startsWith('..') ? file : rel });
    }
    return { backend: 'local', locks };
  }
  const { Client } = await import('pg');
  let client;
  try {
    client = new Client({ connectionString: connectionString(env), application_name: `pgvault status ${env.name}`.slice(0, 63), connectionTimeoutMillis: CALL_TIMEOUT_MILLIS, statement_timeout: CALL_TIMEOUT_MILLIS });
    client.on('error', () => undefined);
    await client.connect();
  } catch (e) {
    await client?.end().catch(() => undefined);
    return { backend: 'pg', locks, error: `cannot reach the state database named in ${env.state.connectionFile}: ${safeMessage(e)}` };
  }
  try {
    for (const stack of stackIds(env)) {
      const schema = stateSchema(env.state.schemaPrefix, stack);
      const ids = await client.query(`SELECT id FROM "${schema}".states WHERE name = 'default'`).catch((e) => {
        if (e.code === '42P01' || e.code === '3F000') return { rows: [] as any[] }; // no state yet
        throw e;
      });
      if (!ids.rows.length) continue;
      // Terraform's pg backend locks with pg_try_advisory_lock(<the state row's id>): a bigint key,
      // shown in pg_locks as classid (high 32 bits), objid (low 32 bits), objsubid 1.
      const held = await client.query(
        `SELECT a.pid, a.application_name, a.usename, host(a.client_addr) AS client, a.backend_start
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND l.classid = ($1::bigint >> 32)::oid AND l.objid = ($1::bigint & 4294967295)::oid`,
        [ids.rows[0].id],
      );
      for (const h of held.rows) {
        locks.push({ stack, pid: h.pid, holder: `${h.application_name || '(no application_name)'} as ${h.usename}${h.client ? ` from ${h.client}` : ''}`, since: new Date(h.backend_start).toISOString() });
      }
    }
    return { backend: 'pg', locks };
  } catch (e) {
    return { backend: 'pg', locks, error: safeMessage(e) };
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Everything the report shows, read in parallel; each part bounded by CALL_TIMEOUT_MILLIS per call. */
async function gatherStatus(env: EnvironmentConfig): Promise<StatusFacts> {
  const now = Date.now();
  const deployed = fs.existsSync(outputsFile(env.name));
  // Without an admin token nothing can be listed; that is one problem, not one per role.
  let token: string | undefined;
  let tokenError: string | undefined;
  try {
    token = readSecretFile(env.vault.tokenFile, 'the Vault admin token');
  } catch (e) {
    tokenError = safeMessage(e);
  }
  const [vault, postgres, state] = await Promise.all([
    vaultFacts(env, token, tokenError),
    postgresFacts(env),
    bounded(stateFacts(env), 3 * CALL_TIMEOUT_MILLIS, (): StateFacts => ({ backend: env.state.backend, locks: [], error: `no answer within ${(3 * CALL_TIMEOUT_MILLIS) / 1000} s` })),
  ]);
  return {
    environment: env.name,
    deployed,
    mountPath: env.secretsEngine.mountPath,
    replicaLagWindowSeconds: DEFAULT_REPLICA_LAG_WINDOW_MILLIS / 1000,
    vault: vault.nodes,
    vaultCluster: vault.cluster,
    raftError: vault.raftError,
    postgres,
    roles: vault.roles,
    certificates: certificateFacts(env, now),
    state,
    now,
  };
}

const USAGE = 'usage: npm run --silent status -- <environment> [--json]';

async function main(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  const rest = argv.filter((a) => a !== '--json');
  const unknown = rest.filter((a) => a.startsWith('-'));
  if (unknown.length || rest.length > 1) {
    console.error(`unknown argument ${unknown[0] ?? rest[1]}; ${USAGE}`);
    return 2;
  }
  let env: EnvironmentConfig;
  try {
    env = loadEnvironment(rest[0] ?? 'local');
  } catch (e) {
    console.error(`error: ${safeMessage(e)}\n${USAGE}`);
    return 2;
  }
  const facts = await gatherStatus(env);
  const problems = problemsOf(facts);
  process.stdout.write(json ? JSON.stringify(statusJson(facts, problems), null, 2) + '\n' : statusText(facts, problems));
  return problems.length ? 1 : 0;
}

// Run as scripts/build.js --then requires it (require.main is build.js then), or directly.
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    console.error(`error: ${safeMessage(e)}`);
    process.exit(1);
  },
);
