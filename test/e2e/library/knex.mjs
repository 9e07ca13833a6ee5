// Knex (3.3.0 or later) on the rotating pool through its `connectionPool` option, exactly as the
// package README shows it. Knex then takes a client from the pool face for each query or
// transaction and gives it back after: the runtime, not Knex, retires old connections.
import knex from 'knex';
import { appConfigFromOutputs, CredentialRuntime, readOutputs } from '@pgvault/runtime';
import { runLoad } from './load.mjs';

const cfg = appConfigFromOutputs(readOutputs(process.env.PGVAULT_OUTPUTS));
const runtime = await CredentialRuntime.start(cfg, { roles: ['readwrite'] });
const pool = runtime.pgPool('readwrite');
const db = knex({ client: 'pg', connectionPool: pool });

const whoAmI = async (q) => (await q.raw('SELECT current_user AS u')).rows[0].u;
// Inside a transaction: the user, the connection and the transaction, which must not change.
const identity = async (q) => (await q.raw('SELECT current_user AS u, pg_backend_pid() AS pid, txid_current()::text AS tx')).rows[0];
const report = await runLoad(runtime, 'readwrite', {
  read: async () => {
    await db('app.items').select('id', 'name').orderBy('id', 'desc').limit(5);
    return whoAmI(db);
  },
  transaction: (tag) =>
    db.transaction(async (trx) => {
      const first = await identity(trx);
      const [{ id }] = await trx('app.items').insert({ name: `knex ${tag}` }).returning('id');
      await trx('app.items').update({ name: `knex ${tag} updated` }).where({ id });
      await trx('app.items').select('name').where({ id }).first();
      return { first, last: await identity(trx) };
    }),
});

await db.destroy(); // Knex does not own the pool: end it, then close the runtime
await pool.end();
report.close = await runtime.close();
console.log(JSON.stringify(report));
