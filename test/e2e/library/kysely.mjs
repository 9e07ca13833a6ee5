// Kysely on the rotating pool, exactly as the package README shows it.
import { Kysely, PostgresDialect, sql } from 'kysely';
import { appConfigFromOutputs, CredentialRuntime, readOutputs } from '@pgvault/runtime';
import { runLoad } from './load.mjs';

// The secret_id comes from the file named by PGVAULT_SECRET_ID_FILE, read again at every login.
const cfg = appConfigFromOutputs(readOutputs(process.env.PGVAULT_OUTPUTS));
const runtime = await CredentialRuntime.start(cfg, { roles: ['readwrite'] });
const db = new Kysely({ dialect: new PostgresDialect({ pool: runtime.pgPool('readwrite') }) });

const whoAmI = async (q) => (await sql`SELECT current_user AS u`.execute(q)).rows[0].u;
// Inside a transaction: the user, the connection and the transaction, which must not change.
const identity = async (q) => (await sql`SELECT current_user AS u, pg_backend_pid() AS pid, txid_current()::text AS tx`.execute(q)).rows[0];
const report = await runLoad(runtime, 'readwrite', {
  read: async () => {
    await db.selectFrom('app.items').select(['id', 'name']).orderBy('id', 'desc').limit(5).execute();
    return whoAmI(db);
  },
  transaction: (tag) =>
    db.transaction().execute(async (trx) => {
      const first = await identity(trx);
      const { id } = await trx.insertInto('app.items').values({ name: `kysely ${tag}` }).returning('id').executeTakeFirstOrThrow();
      await trx.updateTable('app.items').set({ name: `kysely ${tag} updated` }).where('id', '=', id).execute();
      await trx.selectFrom('app.items').select('name').where('id', '=', id).executeTakeFirstOrThrow();
      return { first, last: await identity(trx) };
    }),
});

await db.destroy(); // ends the pool face; the runtime keeps its leases until close()
report.close = await runtime.close(); // drains, revokes every lease, then the token
console.log(JSON.stringify(report));
