/**
 * The REST API's contract, against the real server process on a deployed environment
 * (`contract`: Postgres 15480, Vault 18250, API 18251): the served OpenAPI document is the
 * committed one; schemathesis (installed by toolchain/schemathesis.sh under the cache) fuzzes
 * every operation from it (no 5xx, responses as documented, 4xx in the error shape); 405 with
 * Allow, 404, 413, 415 and the 400 messages; Cache-Control: no-store; the request id in the
 * response header and in that request's log line; a client generated from the document by
 * openapi-typescript (from npm) makes successful calls. Figures print as `# figure:`.
 */
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync, ChildProcess } from 'node:child_process';
import { appConfigFromOutputs, CredentialRuntime, readOutputs } from '@pgvault/runtime';
import { ApiServer } from '../../api/server';
import { issueSecretId, outputsFile } from '../../ops';
import { loadEnvironment, REPO_ROOT } from '../../stacks/config';
import * as h from '../harness';

const ENV = 'contract';
/** API ports of this suite: 18251-18259. */
const PORT = 18251;
const BASE = `http://127.0.0.1:${PORT}`;
const DOCUMENT = path.join(REPO_ROOT, 'api', 'openapi.json');
/** Test cases per operation in schemathesis's fuzzing phase (its coverage phase adds its own). */
const MAX_EXAMPLES = Number(process.env.PGVAULT_CONTRACT_EXAMPLES ?? 100);
const ERROR_KEYS = ['error'];

/**
 * A child process, awaited without blocking the event loop (a blocked loop misses the server
 * closing idle keep-alive connections, and the next fetch would pick a dead one).
 */
function run(cmd: string, args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: opts.cwd ?? REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let [stdout, stderr] = ['', ''];
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr += c));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 600_000);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

function assertErrorShape(body: any, what: string): void {
  assert.deepEqual(Object.keys(body), ERROR_KEYS, `${what}: the body is {"error": "..."}: ${JSON.stringify(body)}`);
  assert.equal(typeof body.error, 'string');
  assert.ok(body.error.length > 0);
}

describe('the REST API contract: OpenAPI 3.1 document, validation from it, schemathesis', () => {
  let server: ChildProcess | undefined;
  let serverLog: string;
  let work: string;
  let st: string;

  before(async () => {
    h.requireToolchain();
    const install = spawnSync('bash', [path.join(REPO_ROOT, 'toolchain', 'schemathesis.sh'), 'up'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    if (install.status !== 0) throw new Error('end-to-end prerequisite missing: schemathesis could not be installed (see above); run: bash toolchain/schemathesis.sh up');
    st = install.stdout.trim();
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvault-contract-'));
    serverLog = path.join(work, 'server.log');
    h.scratchEnvironment('local', (doc) => {
      doc.docker = { postgresHostPort: 15480, vaultHostPort: 18250 };
    }, ENV);
    await h.destroy(ENV);
    await h.deploy(ENV);
    const out = fs.openSync(serverLog, 'a');
    server = spawn(process.execPath, [path.join(REPO_ROOT, 'dist', 'api', 'serve.js'), ENV], { env: { ...process.env, PORT: String(PORT), LOG_LEVEL: 'info' }, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    await h.waitFor('the API to be ready', async () => (await fetch(`${BASE}/readyz`)).status === 200, 60_000);
    console.log(`# server log: ${serverLog}`);
  });

  after(async () => {
    if (server && server.exitCode === null) {
      const exited = new Promise((r) => server!.once('exit', r));
      server.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 25_000))]);
    }
    await h.destroy(ENV).catch((e) => console.error(`cleanup destroy failed: ${e.message}`));
  });

  test('GET /openapi.json serves the committed document, byte for byte, as OpenAPI 3.1', async () => {
    const res = await fetch(`${BASE}/openapi.json`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
    const served = await res.text();
    assert.equal(served, fs.readFileSync(DOCUMENT, 'utf8'));
    const doc = JSON.parse(served);
    assert.equal(doc.openapi, '3.1.0');
    assert.deepEqual(Object.keys(doc.paths).sort(), ['/healthz', '/items', '/metrics', '/openapi.json', '/readyz']);
  });

  test('schemathesis: no 5xx, every response as documented, every 4xx in the error shape', async () => {
    const report = path.join(work, 'schemathesis.json');
    const t0 = Date.now();
    // cwd: schemathesis keeps its example database (.hypothesis) there, never in the repository.
    const r = await run(st, [
      'run', DOCUMENT, '--url', BASE,
      '--checks', 'all', '--mode', 'all', '--max-examples', String(MAX_EXAMPLES), '--seed', '14',
      '--request-timeout', '10', '--no-color', '--report', 'json', '--report-json-path', report,
    ], { cwd: work });
    const seconds = (Date.now() - t0) / 1000;
    const output = `${r.stdout ?? ''}${r.stderr ?? ''}`;
    assert.ok(fs.existsSync(report), `schemathesis wrote no report (exit ${r.status}); it printed:\n${output.slice(-3000)}`);
    const result = JSON.parse(fs.readFileSync(report, 'utf8'));
    console.log(
      `# figure: schemathesis ${result.schemathesis_version}: ${result.test_cases.generated} test cases over ${result.operations.tested} operations ` +
        `(--max-examples ${MAX_EXAMPLES}), ${result.failures.length} failures, ${result.errors.length} errors, ${seconds.toFixed(1)} s`,
    );
    assert.equal(r.status, 0, `schemathesis found problems:\n${output.slice(-4000)}`);
    assert.equal(result.operations.tested, 6, 'every operation of the document was tested');
    assert.equal(result.test_cases.with_failures, 0);
    assert.ok(result.test_cases.generated >= 100, `a meaningful number of test cases: ${result.test_cases.generated}`);
  });

  test('a method a path does not have answers 405 with Allow; an unknown path 404; both in the error shape', async () => {
    for (const [method, p, allow] of [['DELETE', '/items', 'GET, POST'], ['PUT', '/healthz', 'GET'], ['POST', '/readyz', 'GET'], ['PATCH', '/openapi.json', 'GET']]) {
      const res = await fetch(`${BASE}${p}`, { method });
      assert.equal(res.status, 405, `${method} ${p}`);
      assert.equal(res.headers.get('allow'), allow, `${method} ${p}`);
      assertErrorShape(await res.json(), `${method} ${p}`);
    }
    const missing = await fetch(`${BASE}/nothing-here`);
    assert.equal(missing.status, 404);
    assertErrorShape(await missing.json(), 'unknown path');
  });

  test('bad input: 400 saying what is wrong and what is expected, 413 over the size limit, 415 for another media type', async () => {
    const post = (body: string, type = 'application/json', headers: Record<string, string> = {}) => fetch(`${BASE}/items`, { method: 'POST', headers: { 'content-type': type, ...headers }, body });
    const cases: Array<[string, Promise<Response>, number, RegExp]> = [
      ['three spaces', post('{"name":"   "}'), 400, /"name" is "   ": only white space; expected a string of 1 to 200 characters, at least one of them not white space/],
      ['a number', post('{"name":42}'), 400, /"name" is 42, a number; expected a string/],
      ['too long', post(JSON.stringify({ name: 'y'.repeat(201) })), 400, /"name" is 201 characters long, more than 200/],
      ['an unknown field', post('{"name":"a","extra":1}'), 400, /field "extra" is not accepted; expected only "name"/],
      ['not JSON', post('{"name":'), 400, /the body is not valid JSON .*; expected a JSON object/],
      ['a bad limit', fetch(`${BASE}/items?limit=zero`), 400, /query parameter "limit" is "zero", not a whole number; expected a whole number from 1 to 100/],
      // Each of these once answered 200 (coerced by Ajv), or 503 for 1e309 (Infinity reached Postgres).
      ['limit 1.0', fetch(`${BASE}/items?limit=1.0`), 400, /"limit" is "1.0", not written as a whole number \(it has a decimal point\); expected a whole number from 1 to 100/],
      ['limit 0x10', fetch(`${BASE}/items?limit=0x10`), 400, /"limit" is "0x10", not decimal/],
      ['limit " 5"', fetch(`${BASE}/items?limit=%205`), 400, /"limit" is " 5", white space around the number/],
      ['limit 1e309', fetch(`${BASE}/items?limit=1e309`), 400, /"limit" is "1e309", in exponent notation/],
      ['limit -0', fetch(`${BASE}/items?limit=-0`), 400, /"limit" is "-0", a negative zero/],
      ['an Idempotency-Key with a space', post('{"name":"k"}', 'application/json', { 'idempotency-key': 'two words' }), 400, /^header Idempotency-Key is "two words": it holds " " \(U\+0020\), a character it may not hold; expected 1 to 255 characters/],
      ['an Idempotency-Key too long', post('{"name":"k"}', 'application/json', { 'idempotency-key': 'k'.repeat(256) }), 400, /^header Idempotency-Key is .*: it is 256 characters long, more than 255/],
      ['over 4096 bytes', post(JSON.stringify({ name: 'x'.repeat(5000) })), 413, /larger than 4096 bytes/],
      ['text/plain', post('hello', 'text/plain'), 415, /Content-Type is "text\/plain"; expected application\/json/],
    ];
    for (const [what, response, status, message] of cases) {
      const res = await response;
      const body = (await res.json()) as { error: string };
      assert.equal(res.status, status, `${what}: ${JSON.stringify(body)}`);
      assertErrorShape(body, what);
      assert.match(body.error, message, what);
    }
  });

  test('POST /items with an Idempotency-Key: the retry answers the first answer and writes nothing; another body with the key answers 409', async () => {
    const key = `contract-${Date.now()}`;
    const send = (name: string) => fetch(`${BASE}/items`, { method: 'POST', headers: { 'content-type': 'application/json', 'idempotency-key': key }, body: JSON.stringify({ name }) });
    const first = await send('keyed');
    const firstBody = await first.text();
    const again = await send('keyed');
    const againBody = await again.text();
    assert.deepEqual([first.status, again.status], [201, 201], `${firstBody} ${againBody}`);
    assert.equal(againBody, firstBody, 'the first answer, byte for byte');
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    const other = await send('another');
    const otherBody = (await other.json()) as { error: string };
    assert.equal(other.status, 409);
    assertErrorShape(otherBody, 'a key reused for another body');
    const listed = (await (await fetch(`${BASE}/items?limit=100`)).json()) as { items: Array<{ id: number }> };
    assert.equal(listed.items.filter((i) => i.id === JSON.parse(firstBody).id).length, 1, 'written once');
  });

  test('an Idempotency-Key older than 24 h no longer replays (the same request writes again), and the clean-up deletes keys past 24 h only', async () => {
    const env = loadEnvironment(ENV);
    const table = `${env.database.schema}.idempotency_keys`;
    const admin = await h.adminClient(env);
    try {
      const send = (key: string) => fetch(`${BASE}/items`, { method: 'POST', headers: { 'content-type': 'application/json', 'idempotency-key': key }, body: JSON.stringify({ name: 'a day later' }) });
      // Written "yesterday": its key 25 h old, as only the superuser can make it.
      const age = (key: string, hours: number) => admin.query(`UPDATE ${table} SET created_at = now() - make_interval(hours => $2) WHERE key = $1`, [key, hours]);
      const key = `expiring-${Date.now()}`;
      const first = (await (await send(key)).json()) as { id: number };
      await age(key, 23);
      const within = await send(key);
      assert.equal(within.headers.get('idempotent-replayed'), 'true', 'a key 23 h old replays');
      assert.equal(((await within.json()) as { id: number }).id, first.id);
      await age(key, 25);
      const later = await send(key);
      const laterBody = (await later.json()) as { id: number };
      assert.equal(later.status, 201, JSON.stringify(laterBody));
      assert.equal(later.headers.get('idempotent-replayed'), null, 'a key 25 h old does not replay');
      assert.notEqual(laterBody.id, first.id, 'the same request was written again');
      const rows = await admin.query(`SELECT id FROM ${env.database.schema}.items WHERE id = ANY($1::bigint[])`, [[first.id, laterBody.id]]);
      assert.equal(rows.rowCount, 2, 'both writes are there');

      // The clean-up (every 10 min in the server) of an ApiServer on the same database, run every 200 ms here.
      const stale = `stale-${Date.now()}`;
      await (await send(stale)).arrayBuffer();
      await age(stale, 25);
      const rt = await CredentialRuntime.start(appConfigFromOutputs(readOutputs(outputsFile(ENV)), { secretId: await issueSecretId(ENV) }), { roles: ['readwrite'], poolSize: 1 });
      const api = new ApiServer({ runtime: rt, idempotencyCleanupIntervalMillis: 200 });
      try {
        const left = async (k: string) => (await admin.query(`SELECT 1 FROM ${table} WHERE key = $1`, [k])).rowCount;
        await h.waitFor('the clean-up to delete the key 25 h old', async () => (await left(stale)) === 0, 15_000);
        assert.equal(await left(key), 1, 'the key written again (fresh) is kept');
      } finally {
        await api.stop(1000);
        await rt.close({ timeoutMillis: 5000 });
      }
    } finally {
      await admin.end();
    }
  });

  test('Cache-Control: no-store on everything that reads the database or the leases', async () => {
    const requests: Array<[string, RequestInit?]> = [
      ['/readyz'],
      ['/items?limit=2'],
      ['/items', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name":"no-store"}' }],
      ['/metrics'],
      ['/items?limit=0'],
    ];
    for (const [p, init] of requests) {
      const res = await fetch(`${BASE}${p}`, init);
      await res.arrayBuffer();
      assert.equal(res.headers.get('cache-control'), 'no-store', `${init?.method ?? 'GET'} ${p} (${res.status})`);
    }
  });

  test('every response carries a request id, and the server logs that request with it', async () => {
    const a = await fetch(`${BASE}/items?limit=1`);
    const b = await fetch(`${BASE}/items?limit=zero`);
    await Promise.all([a.arrayBuffer(), b.arrayBuffer()]);
    const [idA, idB] = [a.headers.get('x-request-id'), b.headers.get('x-request-id')];
    assert.ok(idA && idB && idA !== idB, `two different request ids: ${idA}, ${idB}`);
    let lines: any[] = [];
    await h.waitFor('the request log lines', async () => {
      lines = fs.readFileSync(serverLog, 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)).filter((l) => l.reqId === idA || l.reqId === idB);
      return lines.length === 2;
    }, 5000);
    const [la, lb] = [lines.find((l) => l.reqId === idA), lines.find((l) => l.reqId === idB)];
    assert.deepEqual([la.method, la.url, la.status], ['GET', '/items?limit=1', 200]);
    assert.deepEqual([lb.method, lb.url, lb.status], ['GET', '/items?limit=zero', 400]);
    // A client cannot choose the id that lands in the log.
    const forged = await fetch(`${BASE}/healthz`, { headers: { 'x-request-id': 'forged' } });
    assert.notEqual(forged.headers.get('x-request-id'), 'forged');
  });

  test('a client generated from the served document (openapi-typescript + openapi-fetch, from npm) makes successful calls', async () => {
    // Inside the repository's dist/ so that the generated module resolves openapi-fetch from node_modules.
    const dir = path.join(REPO_ROOT, 'dist', '.contract-client');
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    const bin = (name: string) => path.join(REPO_ROOT, 'node_modules', '.bin', name);
    const gen = await run(bin('openapi-typescript'), [`${BASE}/openapi.json`, '-o', path.join(dir, 'api.d.ts')]);
    assert.equal(gen.status, 0, `openapi-typescript failed: ${gen.stderr}`);
    fs.writeFileSync(
      path.join(dir, 'client.mts'),
      [
        "import createClient from 'openapi-fetch';",
        "import type { paths } from './api.js';",
        'const client = createClient<paths>({ baseUrl: process.argv[2] });',
        "const created = await client.POST('/items', { body: { name: 'from a generated client' } });",
        "if (!created.data) throw new Error(`POST /items answered ${created.response.status}: ${JSON.stringify(created.error)}`);",
        'const id: number = created.data.id;',
        "const listed = await client.GET('/items', { params: { query: { limit: 5 } } });",
        "const names: string[] = (listed.data?.items ?? []).map((item) => item.name);",
        "const refused = await client.POST('/items', { body: { name: '   ' } });",
        'console.log(JSON.stringify({ status: created.response.status, id, names, refused: refused.response.status, error: refused.error?.error }));',
      ].join('\n'),
    );
    // Type-checked against the generated types, then run: the document types the client's calls and answers.
    const tsc = await run(process.execPath, [path.join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--types', 'node', '--skipLibCheck', path.join(dir, 'client.mts')]);
    assert.equal(tsc.status, 0, `the generated client does not type-check:\n${tsc.stdout}${tsc.stderr}`);
    const client = await run(process.execPath, [path.join(dir, 'client.mjs'), BASE]);
    assert.equal(client.status, 0, client.stderr);
    const out = JSON.parse(client.stdout);
    assert.equal(out.status, 201);
    assert.ok(out.names.includes('from a generated client'));
    assert.equal(out.refused, 400);
    assert.match(out.error, /only white space/);
    console.log(`# figure: generated client: POST /items ${out.status} (id ${out.id}), GET /items ${out.names.length} items, a blank name ${out.refused}`);
  });
});
