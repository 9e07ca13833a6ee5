// CommonJS: plain pg usage of the package, as the README shows it.
const { appConfigFromOutputs, CredentialRuntime, readOutputs } = require('@pgvault/runtime');

async function main() {
  const cfg = appConfigFromOutputs(readOutputs(process.env.PGVAULT_OUTPUTS));
  const runtime = await CredentialRuntime.start(cfg);
  const pool = runtime.pgPool('readonly'); // a pg.Pool stand-in
  const { rows } = await pool.query('SELECT current_user AS u, count(*)::int AS n FROM app.items');
  const client = await pool.connect(); // one connection, one set of credentials, until release()
  try {
    await client.query('BEGIN READ ONLY');
    await client.query('SELECT 1');
    await client.query('COMMIT');
  } finally {
    client.release();
  }
  await pool.end();
  const close = await runtime.close();
  console.log(JSON.stringify({ format: 'commonjs', user: rows[0].u, leasesWhileOpen: [...runtime.leases.keys()], close }));
}
main().catch((e) => {
  console.error(`${e.code ?? ''} ${e.message}`);
  process.exit(1);
});
