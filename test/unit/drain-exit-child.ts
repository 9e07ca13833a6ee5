/**
 * Child process of drain-exit.test: a rotation whose old pool is draining a checked-out
 * client, then close(). Prints how long close() took; the parent times the exit.
 */
import { LeaseManager, RotatingPool } from '@pgvault/runtime';
import { FakeVaultSession } from './fakes';

async function main(): Promise<void> {
  const fake = new FakeVaultSession(60);
  const lease = new LeaseManager({ session: fake, mount: 'database', role: 'ro' });
  await lease.start();
  const pool = new RotatingPool({ lease, host: '127.0.0.1', port: 1, database: 'x', drainTimeoutMillis: 30_000 });
  // Postgres stub: a client that is never given back holds the old pool's drain.
  (pool as any).acquire = async (gen: any) => {
    gen.inFlight++;
    return { query: async () => ({ rows: [] }), release: () => undefined, on: () => undefined };
  };
  await pool.checkout();
  await lease.rotateNow('test', { force: true });
  const t0 = Date.now();
  await pool.close({ timeoutMillis: 200 });
  await lease.stop();
  process.stdout.write(`closed in ${Date.now() - t0} ms\n`);
}

main().catch((e) => {
  process.stderr.write(`${e?.stack ?? e}\n`);
  process.exit(2);
});
