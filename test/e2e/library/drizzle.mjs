// Drizzle's node-postgres driver on the rotating pool, exactly as the package README shows it.
import { drizzle } from 'drizzle-orm/node-postgres';
import { bigint, pgSchema, text } from 'drizzle-orm/pg-core';
import { desc, eq, sql } from 'drizzle-orm';
import { appConfigFromOutputs, CredentialRuntime, readOutputs } from '@pgvault/runtime';
import { runLoad } from './load.mjs';

const items = pgSchema('app').table('items', {
  id: bigint('id', { mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
  name: text('name').notNull(),
});

const cfg = appConfigFromOutputs(readOutputs(process.env.PGVAULT_OUTPUTS));
const runtime = await CredentialRuntime.start(cfg, { roles: ['readwrite'] });
const pool = runtime.pgPool('readwrite');
const db = drizzle({ client: pool });

const whoAmI = async (q) => (await q.execute(sql`SELECT current_user AS u`)).rows[0].u;
// Inside a transaction: the user, the connection and the transaction, which must not change.
const identity = async (q) => (await q.execute(sql`SELECT current_user AS u, pg_backend_pid() AS pid, txid_current()::text AS tx`)).rows[0];
const report = await runLoad(runtime, 'readwrite', {
  read: async () => {
    await db.select().from(items).orderBy(desc(items.id)).limit(5);
    return whoAmI(db);
  },
  transaction: (tag) =>
    db.transaction(async (tx) => {
      const first = await identity(tx);
      const [{ id }] = await tx.insert(items).values({ name: `drizzle ${tag}` }).returning({ id: items.id });
      await tx.update(items).set({ name: `drizzle ${tag} updated` }).where(eq(items.id, id));
      await tx.select().from(items).where(eq(items.id, id));
      return { first, last: await identity(tx) };
    }),
});

await pool.end();
report.close = await runtime.close();
console.log(JSON.stringify(report));
