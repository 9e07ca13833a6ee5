/**
 * `--peer <vault-benchmark binary>`: HashiCorp's vault-benchmark `postgresql_secret` test against
 * the same Vault and Postgres, with our role's creation statements and the same worker count,
 * alternating with issuance through the app's client; prints the ratio. vault-benchmark mounts a
 * database engine of its own (its connection logs in as the bench's floor role) and removes it
 * at the end (cleanup). Its config file holds that role's password: written 0600 in a private
 * temporary directory, removed after the run; the token goes through VAULT_TOKEN.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { VaultSession } from '@pgvault/runtime';
import { closedLoop } from './query-path';
import { type Bench, type Floor, loadavg, setUpFloor, tearDownFloor, vault } from './revocation';
import { median, percentile, ratio } from './stats';

const hcl = (s: string) => JSON.stringify(s); // an HCL string literal has JSON's escapes

/** One vault-benchmark run; its throughput and latencies (ms) from its JSON report. */
export function runPeer(binary: string, b: Bench, floor: Floor, workers: number, seconds: number): { perSecond: number; p50: number; p99: number; requests: number; success: number } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-peer-'));
  const config = path.join(dir, 'bench.hcl');
  fs.writeFileSync(
    config,
    [
      `vault_addr = ${hcl(b.vault)}`,
      `duration = "${seconds}s"`,
      `workers = ${workers}`,
      'report_mode = "json"',
      'cleanup = true',
      'test "postgresql_secret" "pgvault_peer" {',
      '  weight = 100',
      '  config {',
      '    db_connection {',
      `      connection_url = ${hcl(floor.connectionUrl)}`,
      `      username = ${hcl(floor.user)}`,
      `      password = ${hcl(floor.password)}`,
      `      max_open_connections = ${b.env.secretsEngine.maxOpenConnections}`,
      '    }',
      '    role {',
      `      creation_statements = ${hcl(floor.creationStatements.join('\n'))}`,
      '    }',
      '  }',
      '}',
    ].join('\n'),
    { mode: 0o600 },
  );
  try {
    const r = spawnSync(binary, ['run', `-config=${config}`], {
      encoding: 'utf8',
      env: { ...process.env, VAULT_TOKEN: b.admin, VAULT_ADDR: b.vault },
      timeout: (seconds + 600) * 1000,
      killSignal: 'SIGKILL',
      maxBuffer: 64 * 1024 * 1024,
    });
    if (r.error) throw new Error(`vault-benchmark (${binary}): ${r.error.message}`);
    const line = r.stdout.split('\n').reverse().find((l) => l.startsWith('{') && l.includes('"metrics"'));
    if (r.status !== 0 || !line) throw new Error(`vault-benchmark (${binary}) exited ${r.status} without a JSON report: ${`${r.stderr}\n${r.stdout}`.slice(-1500)}`);
    const report = JSON.parse(line);
    const m = report.metrics.pgvault_peer;
    return { perSecond: m.throughput, p50: m.latencies['50th'] / 1e6, p99: m.latencies['99th'] / 1e6, requests: m.requests, success: m.success };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Alternating rounds: vault-benchmark, then the app's client, for `seconds` each; the ratio of medians. */
export async function peerPhase(binary: string, b: Bench, session: VaultSession, opts: { workers: number; seconds: number; rounds: number }): Promise<void> {
  if (!fs.existsSync(binary)) {
    throw new Error(`--peer ${binary}: no such file. Build vault-benchmark (go install github.com/hashicorp/vault-benchmark@latest, or go build in a checkout) and pass the binary's path`);
  }
  const mount = b.env.secretsEngine.mountPath;
  console.log(`\npeer: vault-benchmark postgresql_secret against our issuance, ${opts.workers} workers, ${opts.rounds} alternating rounds of ${opts.seconds} s; load ${loadavg()}`);
  const floor = await setUpFloor(b);
  const peer: number[] = [];
  const ours: number[] = [];
  try {
    for (let r = 0; r < opts.rounds; r++) {
      const p = runPeer(binary, b, floor, opts.workers, opts.seconds);
      peer.push(p.perSecond);
      console.log(`round ${r + 1} vault-benchmark postgresql_secret  ${p.perSecond.toFixed(1)}/s  p50 ${p.p50.toFixed(1)} ms  p99 ${p.p99.toFixed(1)} ms  (${p.requests} requests, success ${p.success}); load ${loadavg()}`);
      const f = await closedLoop(opts.workers, opts.seconds, () => session.issue(mount, b.role));
      const sorted = [...f.latencies].sort((x, y) => x - y);
      ours.push(f.queries / f.seconds);
      console.log(
        `round ${r + 1} app client issue (${b.role})            ${(f.queries / f.seconds).toFixed(1)}/s  p50 ${percentile(sorted, 50).toFixed(1)} ms  p99 ${percentile(sorted, 99).toFixed(1)} ms  (${f.queries} issued, ${f.failed} failed); load ${loadavg()}`,
      );
      await vault(b, 'PUT', `sys/leases/revoke-prefix/${mount}/creds/${b.role}`, { sync: true }, 600_000);
    }
    console.log(`ratio app client / vault-benchmark (issuance throughput, medians): ${ratio(median(ours), median(peer))}`);
  } finally {
    await tearDownFloor(b, floor);
  }
}
