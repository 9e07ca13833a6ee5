/**
 * npm run bench [-- <env> [--against <other env>] [--phases <list>] [--peer <vault-benchmark binary>]]:
 * figures and ratios measured in one run, against a deployed environment (deployed first when
 * needed). Not a test: it prints, it does not assert. With --against, issuance through the app's
 * client is measured on both and their ratio printed (e.g. `npm run bench -- ha --against local`).
 *
 * Phases (--phases, comma-separated; default all but peer, which --peer adds):
 *  issuance   N workers issue credentials through the app's client and through plain HTTP
 *             requests to /v1/<mount>/creds/<role>; latency p50/p95/p99, throughput, ratio.
 *  api        API throughput in steady state and during rotations (forced every second).
 *  query      the query path: plain pg.Pool on static credentials, rt.pgPool(role),
 *             rt.pool(role).query and Kysely on the face, alternating; SELECT 1 and an indexed row.
 *  rotation   queries per second in the second around forced rotations against steady state.
 *  revocation revoke-prefix of N leases (sync=true and sync=false) against Vault's floor (a mount
 *             whose role revokes with a bare DROP ROLE) and a plain DROP ROLE of N roles.
 *  peer       vault-benchmark's postgresql_secret test alternating with our issuance.
 *  breakdown  where one issuance's time goes: the request floor, one storage write (Raft on a
 *             cluster), the creation statements on Postgres, the rest; a new TLS connection's cost.
 *
 * BENCH_WORKERS (default 4), BENCH_ISSUES (per path, default 200), BENCH_SECONDS (per API phase,
 * default 10), BENCH_QUERY_SECONDS (per round, default 1), BENCH_QUERY_ROUNDS (default 20),
 * BENCH_ROTATION_SECONDS (default 12), BENCH_REVOKE_N (default "1000,4000"),
 * BENCH_PEER_SECONDS (per round, default 20), BENCH_PEER_ROUNDS (default 2), BENCH_BREAKDOWN_N
 * (requests per step, default 200).
 *
 * It revokes every lease of the role with `sys/leases/revoke-prefix` and the admin token. On a
 * shared Vault that would drop other applications' live credentials too, so outside docker
 * environments it refuses unless `--allow-revoke-prefix` (or BENCH_ALLOW_REVOKE_PREFIX=1) is given.
 */
import { appConfigFromOutputs, CredentialRuntime, readOutputs, VaultSession } from '@pgvault/runtime';
import { ApiServer } from '../api/server';
import { loadEnvironment } from '../stacks/config';
import { deploy, issueSecretId, loadToolchainEnv, outputsFile, readSecretFile, vaultFetch } from '../ops';
import { peerPhase } from './peer';
import { queryPath, rotationUnderLoad } from './query-path';
import { issuanceBreakdown } from './breakdown';
import { dropFloorRole, floorRole, loadavg, massRevocation } from './revocation';
import { percentile } from './stats';

const WORKERS = Number(process.env.BENCH_WORKERS ?? 4);
const ISSUES = Number(process.env.BENCH_ISSUES ?? 200);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const QUERY_SECONDS = Number(process.env.BENCH_QUERY_SECONDS ?? 1);
const QUERY_ROUNDS = Number(process.env.BENCH_QUERY_ROUNDS ?? 20);
const ROTATION_SECONDS = Number(process.env.BENCH_ROTATION_SECONDS ?? 12);
const REVOKE_N = (process.env.BENCH_REVOKE_N ?? '1000,4000').split(',').map(Number);
const PEER_SECONDS = Number(process.env.BENCH_PEER_SECONDS ?? 20);
const PEER_ROUNDS = Number(process.env.BENCH_PEER_ROUNDS ?? 2);
const BREAKDOWN_N = Number(process.env.BENCH_BREAKDOWN_N ?? 200);
const PHASES = ['issuance', 'breakdown', 'api', 'query', 'rotation', 'revocation', 'peer'] as const;
/** Bound of a revoke-prefix, whose work grows with the number of leases. */
const REVOKE_ALL_MILLIS = 600_000;

async function measure(label: string, total: number, workers: number, fn: () => Promise<void>) {
  const latencies: number[] = [];
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: workers }, async () => {
      while (next++ < total) {
        const s = process.hrtime.bigint();
        await fn();
        latencies.push(Number(process.hrtime.bigint() - s) / 1e6);
      }
    }),
  );
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  latencies.sort((a, b) => a - b);
  const r = { label, n: latencies.length, p50: percentile(latencies, 50), p95: percentile(latencies, 95), p99: percentile(latencies, 99), perSecond: latencies.length / seconds };
  console.log(`${label.padEnd(34)} n=${r.n}  p50=${r.p50.toFixed(1)} ms  p95=${r.p95.toFixed(1)} ms  p99=${r.p99.toFixed(1)} ms  ${r.perSecond.toFixed(1)}/s`);
  return r;
}

async function apiLoad(base: string, seconds: number, workers: number, during?: () => void) {
  let ok = 0;
  let failed = 0;
  const end = Date.now() + seconds * 1000;
  const timer = during ? setInterval(during, 1000) : undefined;
  await Promise.all(
    Array.from({ length: workers }, async (_, w) => {
      for (let i = 0; Date.now() < end; i++) {
        const post = (i + w) % 2 === 0;
        const res = await fetch(`${base}/items${post ? '' : '?limit=5'}`, {
          method: post ? 'POST' : 'GET',
          headers: post ? { 'content-type': 'application/json' } : undefined,
          body: post ? '{"name":"bench"}' : undefined,
        }).catch(() => undefined);
        if (res) await res.arrayBuffer();
        if (res && res.status < 400) ok++;
        else failed++;
      }
    }),
  );
  if (timer) clearInterval(timer);
  return { ok, failed, perSecond: ok / seconds };
}

/** Issues credentials through plain HTTP and through the app's client; prints both and their ratio. */
async function issuance(envName: string, both: boolean) {
  const env = loadEnvironment(envName);
  const outputs = readOutputs(outputsFile(envName));
  const role = outputs.roles[0];
  const admin = readSecretFile(env.vault.tokenFile, 'admin token');
  console.log(`\nenvironment ${envName}, role ${role}, ${WORKERS} workers, ${ISSUES} issuances per path, node ${process.version}\n`);
  const cfg = appConfigFromOutputs(outputs, { secretId: await issueSecretId(envName) });
  const session = new VaultSession({ address: cfg.vaultAddress, addresses: cfg.vaultAddresses, caCert: cfg.vaultCaCert });
  await session.login(cfg.approleMount, cfg.roleId, cfg.secretId);
  const token = (session as any).client.token as string;
  const revokeAll = () => vaultFetch(env, `${cfg.vaultAddress}/v1/sys/leases/revoke-prefix/${cfg.mountPath}/creds/${role}`, admin, 'PUT', { sync: true }, REVOKE_ALL_MILLIS);
  await measure('warm-up (app client)', 10, 1, async () => void (await session.issue(cfg.mountPath, role)));
  await revokeAll();
  let raw;
  if (both) {
    // Plain HTTP(S) with the environment's CA: node's http client, no Vault library.
    raw = await measure('issue: plain HTTP', ISSUES, WORKERS, async () => void (await vaultFetch(env, `${cfg.vaultAddress}/v1/${cfg.mountPath}/creds/${role}`, token)));
    await revokeAll();
  }
  const app = await measure(`issue: app client (${envName})`, ISSUES, WORKERS, async () => void (await session.issue(cfg.mountPath, role)));
  await revokeAll();
  await session.revokeSelf();
  if (raw) console.log(`ratio app/plain: p50 ${(app.p50 / raw.p50).toFixed(2)}x, p99 ${(app.p99 / raw.p99).toFixed(2)}x, throughput ${(app.perSecond / raw.perSecond).toFixed(2)}x\n`);
  return { app, raw };
}

/** The value after `flag`, if given. */
function option(args: string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  if (i < 0) return undefined;
  const v = args[i + 1];
  if (v === undefined || v.startsWith('--')) throw new Error(`${flag} needs a value`);
  return v;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const allowRevokePrefix = args.includes('--allow-revoke-prefix') || process.env.BENCH_ALLOW_REVOKE_PREFIX === '1';
  const valued = ['--against', '--phases', '--peer'];
  const positional = args.filter((a, i) => !a.startsWith('--') && !valued.includes(args[i - 1]));
  const envName = positional[0] ?? 'local';
  const against = option(args, '--against');
  const peer = option(args, '--peer');
  const phases = new Set((option(args, '--phases') ?? PHASES.filter((p) => p !== 'peer' || peer).join(',')).split(','));
  for (const p of phases) {
    if (!(PHASES as readonly string[]).includes(p)) throw new Error(`--phases: unknown phase "${p}"; expected a comma-separated list of ${PHASES.join(', ')}`);
  }
  if (phases.has('peer') && !peer) throw new Error('the peer phase needs --peer <path to a vault-benchmark binary>');
  loadToolchainEnv();
  const env = loadEnvironment(envName);
  if (env.infrastructure !== 'docker' && !allowRevokePrefix) {
    throw new Error(
      `environment ${envName} is "infrastructure": "${env.infrastructure}": the benchmark revokes every lease under ${env.secretsEngine.mountPath}/creds/<role> ` +
        `with the admin token, which would drop other applications' live credentials on a shared Vault. ` +
        `Run it against a docker environment, or pass --allow-revoke-prefix (or BENCH_ALLOW_REVOKE_PREFIX=1) if nothing else uses these roles`,
    );
  }
  process.env.PGVAULT_CDKTF_LOG ??= '/dev/null';
  await deploy(envName);
  const outputs = readOutputs(outputsFile(envName));
  console.log(`bench ${envName}: phases ${[...phases].join(', ')}; node ${process.version}; load ${loadavg()}`);

  // 1. Credential issuance.
  if (phases.has('issuance')) {
    const { app } = await issuance(envName, true);
    if (against) {
      // The same load against another environment, for a ratio from one run (e.g. ha against local).
      await deploy(against);
      const other = await issuance(against, false);
      console.log(`ratio ${envName}/${against} (app client): throughput ${(app.perSecond / other.app.perSecond).toFixed(2)}x, p50 ${(app.p50 / other.app.p50).toFixed(2)}x, p99 ${(app.p99 / other.app.p99).toFixed(2)}x\n`);
    }
  }

  const role = outputs.roles[0];
  const writer = outputs.roles.find((r) => env.roles.find((c) => c.name === r)?.access === 'write');
  const bench = { env, admin: readSecretFile(env.vault.tokenFile, 'admin token'), vault: outputs.vault_address, role };

  // 1b. Where an issuance's time goes.
  if (phases.has('breakdown')) {
    const floor = await floorRole(bench);
    try {
      await issuanceBreakdown(bench, floor, { n: BREAKDOWN_N, block: 20 });
    } finally {
      await dropFloorRole(bench, floor);
    }
  }

  if (phases.has('api') || phases.has('query') || phases.has('rotation')) {
    const rtCfg = appConfigFromOutputs(outputs, { secretId: await issueSecretId(envName) });
    const runtime = await CredentialRuntime.start(rtCfg, { poolSize: 10 });
    try {
      // 2. API throughput, steady and during rotations.
      if (phases.has('api')) await apiPhase(runtime);
      // 3. The query path, and rotation under its load.
      if (phases.has('query')) await queryPath(runtime, env, role, { clients: 8, poolSize: 10, seconds: QUERY_SECONDS, rounds: QUERY_ROUNDS, writer });
      if (phases.has('rotation')) await rotationUnderLoad(runtime, role, { clients: 8, seconds: ROTATION_SECONDS, everySeconds: 3 });
    } finally {
      await runtime.close();
    }
  }

  // 4. Mass revocation against Vault's floor and a plain DROP ROLE.
  if (phases.has('revocation')) await massRevocation(bench, REVOKE_N, 8);

  // 5. The peer, alternating with our issuance.
  if (peer && phases.has('peer')) {
    const cfg = appConfigFromOutputs(outputs, { secretId: await issueSecretId(envName) });
    const session = new VaultSession({ address: cfg.vaultAddress, addresses: cfg.vaultAddresses, caCert: cfg.vaultCaCert });
    await session.login(cfg.approleMount, cfg.roleId, cfg.secretId);
    try {
      await peerPhase(peer, bench, session, { workers: WORKERS, seconds: PEER_SECONDS, rounds: PEER_ROUNDS });
    } finally {
      await session.revokeSelf().catch(() => undefined);
    }
  }
  console.log(`\nThe environment stays deployed; tear down with: npm run destroy -- ${envName}`);
}

async function apiPhase(runtime: CredentialRuntime): Promise<void> {
  const api = new ApiServer({ runtime });
  const port = await api.listen(0);
  const base = `http://127.0.0.1:${port}`;
  try {
    await apiLoad(base, 2, 8);
    const steady = await apiLoad(base, SECONDS, 8);
    console.log(`API steady state                   ${steady.perSecond.toFixed(0)} req/s  (${steady.ok} ok, ${steady.failed} failed)`);
    const rotationsBefore = [...runtime.pools.values()].reduce((n, p) => n + p.rotations, 0);
    const rotating = await apiLoad(base, SECONDS, 8, () => {
      for (const l of runtime.leases.values()) void l.rotateNow('bench').catch(() => undefined);
    });
    const rotations = [...runtime.pools.values()].reduce((n, p) => n + p.rotations, 0) - rotationsBefore;
    console.log(`API during rotations (${rotations} in ${SECONDS}s)    ${rotating.perSecond.toFixed(0)} req/s  (${rotating.ok} ok, ${rotating.failed} failed)`);
    console.log(`ratio rotating/steady: ${(rotating.perSecond / steady.perSecond).toFixed(2)}x\n`);
  } finally {
    await api.stop();
  }
}

main().catch((e) => {
  console.error(`bench failed: ${e.message}`);
  process.exit(1);
});
