/**
 * The load the Kysely and Drizzle programs put on a role's rotating pool: several workers
 * alternate a read and a multi-statement transaction until the role's credentials have rotated
 * `rotations` times (bounded by `maxSeconds`). Every transaction reports, at its start and at
 * its end, current_user, the backend's pid and the transaction id: all three must stay the same.
 * The report carries usernames and counts, never a password.
 */
export async function runLoad(runtime, role, ops, { workers = 4, rotations = 3, minSeconds = 8, maxSeconds = 150 } = {}) {
  const lease = runtime.lease(role);
  const pool = runtime.pool(role);
  const issued = [lease.current().username];
  const revoked = [];
  lease.on('issued', (c) => issued.push(c.username));
  lease.on('revoked', (c) => revoked.push(c.username));
  const report = { reads: 0, transactions: 0, failed: 0, errors: [], split: [], txUsers: [], readUsers: [] };
  const txUsers = new Set();
  const readUsers = new Set();
  const started = Date.now();
  const enough = () =>
    (pool.rotations >= rotations && Date.now() - started >= minSeconds * 1000) || Date.now() - started >= maxSeconds * 1000;
  const worker = async (w) => {
    for (let i = 0; !enough(); i++) {
      try {
        if (i % 2 === 0) {
          readUsers.add(await ops.read());
          report.reads++;
        } else {
          const { first, last } = await ops.transaction(`w${w}-${i}`);
          if (JSON.stringify(first) !== JSON.stringify(last)) report.split.push([first, last]);
          txUsers.add(first.u);
          report.transactions++;
        }
      } catch (e) {
        report.failed++;
        if (report.errors.length < 5) report.errors.push(`${e?.code ?? ''} ${e?.message ?? e}`);
      }
    }
  };
  await Promise.all(Array.from({ length: workers }, (_, w) => worker(w)));
  report.seconds = (Date.now() - started) / 1000;
  report.rotations = pool.rotations;
  report.txUsers = [...txUsers];
  report.readUsers = [...readUsers];
  report.issued = [...issued];
  // Before close(): every replaced lease is revoked once its last client was released.
  report.revokedBeforeClose = [...revoked];
  report.heldBeforeClose = lease.heldCount;
  return report;
}
