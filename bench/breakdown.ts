/**
 * Where an issuance's time goes, on the environment's own Vault and Postgres: one caller, one
 * request at a time (latencies add up that way; throughput is the issuance phase's), in
 * alternating blocks so that drift on a shared machine hits every step alike:
 *  - a read that writes nothing (auth/token/lookup-self): HTTP(S) on a warm connection, the token
 *    check, the policy, the audit log (a cluster writes two audit entries per request);
 *  - one storage write (a role definition written to the environment's mount and deleted
 *    after): a Raft commit on a cluster (a quorum of fsyncs), memory on a dev server;
 *  - the role's creation statements run directly on Postgres, as the role Vault connects as
 *    would (the revocation phase's floor role: same rights), also with synchronous_commit off
 *    and with fewer SCRAM iterations, to show what the commit and the password hash cost;
 *  - the issuance itself (the environment's role), on a warm connection and on a new one (the TLS
 *    handshake, when the address is https); each lease is revoked at the end.
 * Only the environment's own mount is used, so a cluster's least-privilege admin token suffices.
 */
import { randomBytes } from 'node:crypto';
import { vaultFetch } from '../ops';
import { Bench, loadavg, superuser, vault } from './revocation';
import { mapBounded } from './stats';
import { percentile } from './stats';

const q = (id: string) => `"${id.replace(/"/g, '""')}"`;

interface Step {
  readonly name: string;
  readonly call: (i: number) => Promise<unknown>;
  readonly latencies: number[];
}

export async function issuanceBreakdown(b: Bench, floor: { user: string; password: string; creationStatements: string[] }, opts: { n: number; block: number }): Promise<void> {
  const tls = b.vault.startsWith('https:');
  const su = await superuser(b.env);
  const asVaultRole = await superuser(b.env, { user: floor.user, password: floor.password }).catch(async (e) => {
    await su.end();
    throw e;
  });
  const made: string[] = [];
  const tag = randomBytes(4).toString('hex');
  const expiration = new Date(Date.now() + 3_600_000).toISOString();
  const fill = (s: string, name: string) => s.replace(/\{\{name\}\}/g, name).replace(/\{\{password\}\}/g, randomBytes(12).toString('hex')).replace(/\{\{expiration\}\}/g, expiration);
  const mount = b.env.secretsEngine.mountPath;
  const probeRole = `pgvault-bench-storage-${tag}`;
  const leases: string[] = [];
  const issue = async (agent?: false) => {
    const r = await vaultFetch(b.env, `${b.vault}/v1/${mount}/creds/${b.role}`, b.admin, 'GET', undefined, 30_000, {}, agent);
    leases.push(r.lease_id);
  };
  // The creation statements in one transaction, as Vault runs them, in one round trip: the
  // server's work, not this host's round trips through Docker's port mapping (Vault is on
  // Postgres's network). `setting`: a SET LOCAL first.
  const creating = (name: string, prefix: string, setting?: string): Step => ({
    name,
    call: async (i) => {
      const user = `bench-bd-${tag}-${prefix}${i}`;
      made.push(user);
      const statements = floor.creationStatements.map((x) => fill(x, user).replace(/;\s*$/, ''));
      await asVaultRole.query(['BEGIN', ...(setting ? [`SET LOCAL ${setting}`] : []), ...statements, 'COMMIT'].join(';\n'));
    },
    latencies: [],
  });
  const steps: Step[] = [
    { name: 'read, no storage write (lookup-self)', call: () => vault(b, 'GET', 'auth/token/lookup-self'), latencies: [] },
    {
      name: 'one storage write (a role definition)',
      call: (i) => vault(b, 'POST', `${mount}/roles/${probeRole}`, { db_name: b.env.secretsEngine.connectionName, creation_statements: floor.creationStatements, default_ttl: 60 + (i % 2) }),
      latencies: [],
    },
    creating(`creation statements on Postgres (${floor.creationStatements.length}, one transaction)`, 'c'),
    creating('  the same, synchronous_commit off', 'a', 'synchronous_commit = off'),
    creating('  the same, scram_iterations 16', 's', 'scram_iterations = 16'),
    { name: 'a round trip to Postgres (SELECT 1)', call: () => asVaultRole.query('SELECT 1'), latencies: [] },
    { name: 'issue (warm connection)', call: () => issue(), latencies: [] },
  ];
  if (tls) steps.push({ name: 'issue (new TLS connection)', call: () => issue(false), latencies: [] });
  try {
    console.log(`\nissuance breakdown: ${b.vault} (${tls ? 'TLS' : 'plain HTTP'}), one request at a time, ${opts.n} per step in blocks of ${opts.block}; load ${loadavg()}`);
    for (const s of steps) await s.call(0); // warm-up: connections open, paths cached
    for (let done = 0; done < opts.n; done += opts.block) {
      for (const s of steps) {
        for (let i = done; i < Math.min(opts.n, done + opts.block); i++) {
          const t0 = process.hrtime.bigint();
          await s.call(i + 1);
          s.latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
        }
      }
    }
    const p50 = new Map<string, number>();
    for (const s of steps) {
      const sorted = [...s.latencies].sort((x, y) => x - y);
      p50.set(s.name, percentile(sorted, 50));
      console.log(`  ${s.name.padEnd(40)} p50 ${percentile(sorted, 50).toFixed(2)} ms  p90 ${percentile(sorted, 90).toFixed(2)} ms  p99 ${percentile(sorted, 99).toFixed(2)} ms`);
    }
    const [read, write, pgRoundTrip, pgAsync, pgScram, select1, issue] = steps.map((s) => p50.get(s.name)!);
    const storage = Math.max(0, write - read);
    const pg = Math.max(0, pgRoundTrip - select1);
    const rest = issue - read - storage - pg;
    const share = (x: number) => `${x.toFixed(2)} ms (${((x / issue) * 100).toFixed(0)} %)`;
    console.log(
      `  an issuance's p50 ${issue.toFixed(2)} ms = request floor ${share(read)} + one storage write ${share(storage)} + Postgres's work ${share(pg)} + ` +
        `the rest ${share(rest)} (the engine's plugin call, Vault's round trips to Postgres, the lease's storage writes)`,
    );
    console.log(`  of Postgres's work, waiting for the commit to be flushed (and, with synchronous replication, acknowledged) is ${Math.max(0, pgRoundTrip - pgAsync).toFixed(2)} ms`);
    console.log(`  of Postgres's work, hashing the password (SCRAM-SHA-256, 4096 iterations by default) is about ${Math.max(0, pgRoundTrip - pgScram).toFixed(2)} ms`);
    if (tls) console.log(`  a new TLS connection adds ${(p50.get(steps[7].name)! - issue).toFixed(2)} ms to an issuance (clients that keep connections alive do not pay it)`);
    console.log(`  load ${loadavg()}`);
  } finally {
    await vault(b, 'DELETE', `${mount}/roles/${probeRole}`).catch((e) => console.error(`bench: delete ${mount}/roles/${probeRole}: ${e.message}`));
    // Each on its own: one failure must not leave the others live until their TTL.
    const failed = (await mapBounded(leases.length, 4, (i) => vault(b, 'PUT', 'sys/leases/revoke', { lease_id: leases[i] }).then(() => undefined, (e: Error) => e.message))).filter(Boolean);
    if (failed.length) console.error(`bench: ${failed.length} of the breakdown's ${leases.length} leases not revoked (they end with their TTL): ${failed[0]}`);
    for (const name of made) await su.query(`DROP ROLE IF EXISTS ${q(name)}`).catch((e) => console.error(`bench: drop ${name}: ${e.message}`));
    await asVaultRole.end();
    await su.end();
  }
}
