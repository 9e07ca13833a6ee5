/**
 * Child process of drain-exit.test: a rotation whose old pool is draining a checked-out
 * client that is never given back, then close(). Postgres is FakePostgres (the wire protocol on
 * 127.0.0.1), Vault FakeVaultSession; only the pool's public calls. Prints how long close() took;
 * the parent times the exit.
 */
import { LeaseManager, RotatingPool } from '@pgvault/runtime';
import { FakePostgres, FakeVaultSession } from './fakes';

async function main(): Promise<void> {
  const pg = await new FakePostgres().start();
  const fake = new FakeVaultSession(60);
  const lease = new LeaseManager({ session: fake, mount: 'database', role: 'ro' });
  await lease.start();
  const pool = new RotatingPool({ lease, host: '127.0.0.1', port: pg.port, database: 'x', drainTimeoutMillis: 30_000 });
  // Never released: it holds the old pool's drain (30 s) open.
  await pool.checkout();
  await lease.rotateNow('test', { force: true });
  if (pool.stats().retiring !== 1) throw new Error(`expected the old pool to be draining, stats ${JSON.stringify(pool.stats())}`);
  const t0 = Date.now();
  await pool.close({ timeoutMillis: 200 });
  const closedMillis = Date.now() - t0;
  await lease.stop();
  // The fake server's own sockets (the client never released included) must not keep the process either.
  await pg.stop();
  process.stdout.write(`closed in ${closedMillis} ms\n`);
}

main().catch((e) => {
  process.stderr.write(`${e?.stack ?? e}\n`);
  process.exit(2);
});
