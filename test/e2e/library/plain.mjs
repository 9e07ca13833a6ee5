// ES module: plain pg usage of the package, as the README shows it.
import { appConfigFromOutputs, CredentialRuntime, readOutputs } from '@pgvault/runtime';

const cfg = appConfigFromOutputs(readOutputs(process.env.PGVAULT_OUTPUTS));
const runtime = await CredentialRuntime.start(cfg);
const pool = runtime.pgPool('readwrite');
const { rows } = await pool.query('SELECT current_user AS u');
const inserted = await runtime.pool('readwrite').withClient(async (c) => {
  await c.query('BEGIN');
  const r = await c.query("INSERT INTO app.items (name) VALUES ('from an ES module') RETURNING id");
  await c.query('COMMIT');
  return r.rows[0].id;
});
await pool.end();
const close = await runtime.close();
console.log(JSON.stringify({ format: 'module', user: rows[0].u, inserted: Boolean(inserted), close }));
