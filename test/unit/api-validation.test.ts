/**
 * The REST API's answers to bad requests, from its OpenAPI document, without a database:
 * requests are injected into the server (no socket) with a small fake runtime
 * (FakeRuntime) whose pool echoes the inserted name. The real server is tested end to end in
 * test/e2e/8-api-contract.
 */
import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { ApiServer } from '../../api/server';

/** A stand-in for CredentialRuntime: no leases, a pool answering one row. */
function fakeRuntime(): any {
  return {
    leases: new Map(),
    pools: new Map(),
    vaultLogin: 'ok',
    session: { on() {} },
    on() {},
    pool: () => ({ query: async (_sql: string, args: unknown[]) => ({ rows: [{ id: '7', name: typeof args[0] === 'string' ? args[0] : 'x', created_at: new Date(0) }] }) }),
  };
}

const api = new ApiServer({ runtime: fakeRuntime() });
after(() => api.app.close());
const post = (payload: string, type = 'application/json') => api.app.inject({ method: 'POST', url: '/items', headers: { 'content-type': type }, payload });

test('a bad body answers 400 naming what is actually wrong and what is expected', async () => {
  const cases: Array<[string, RegExp]> = [
    ['{"name":"   "}', /^body field "name" is "   ": only white space; expected a string of 1 to 200 characters/],
    ['{"name":"a\\u0000b"}', /^body field "name" is "a\\u0000b": it holds a NUL character/],
    ['{"name":""}', /^body field "name" is empty; expected/],
    [JSON.stringify({ name: 'z'.repeat(201) }), /^body field "name" is 201 characters long, more than 200/],
    ['{"name":42}', /^body field "name" is 42, a number; expected a string/],
    ['{}', /^body field "name" is missing; expected a string/],
    ['{"name":"a","__proto__":{"x":1}}', /^body field "__proto__" is not accepted; expected only "name"/],
    ['[1]', /^the body is \[1\], an array; expected a JSON object/],
    ['{"name":', /^the body is not valid JSON \(.*\); expected a JSON object/],
  ];
  for (const [payload, message] of cases) {
    const res = await post(payload);
    assert.equal(res.statusCode, 400, payload);
    assert.deepEqual(Object.keys(res.json()), ['error']);
    assert.match(res.json().error, message, payload);
    assert.doesNotMatch(res.json().error, /must be a string of 1 to 200/, payload);
  }
});

test('a bad limit answers 400; a good one is coerced from the query string', async () => {
  const cases: Array<[string, RegExp]> = [
    ['zero', /"limit" is "zero", not a whole number; expected a whole number from 1 to 100/],
    ['0', /"limit" is 0, below 1/],
    ['101', /"limit" is 101, above 100/],
    ['2.5', /"limit" is "2.5", not written as a whole number \(it has a decimal point\)/],
    // Ajv alone coerces each of these to a number (1e309 to Infinity, which reached Postgres).
    ['1.0', /"limit" is "1.0", not written as a whole number \(it has a decimal point\); expected a whole number from 1 to 100, in plain decimal digits/],
    ['0x10', /"limit" is "0x10", not decimal \(a 0x, 0o or 0b prefix\)/],
    ['%205', /"limit" is " 5", white space around the number/],
    ['5%20', /"limit" is "5 ", white space around the number/],
    ['1e309', /"limit" is "1e309", in exponent notation/],
    ['1E2', /"limit" is "1E2", in exponent notation/],
    ['-0', /"limit" is "-0", a negative zero/],
    ['%2B5', /"limit" is "\+5", written with a plus sign/],
    ['05', /"limit" is "05", written with a leading zero/],
    ['', /"limit" is "", empty/],
    ['-5', /"limit" is -5, below 1/],
    ['Infinity', /"limit" is "Infinity", not a whole number/],
  ];
  for (const [q, message] of cases) {
    const res = await api.app.inject({ url: `/items?limit=${q}` });
    assert.equal(res.statusCode, 400, q);
    assert.match(res.json().error, message, q);
  }
  assert.equal((await api.app.inject({ url: '/items?limit=3' })).statusCode, 200);
  const created = await post('{"name":"fine"}');
  assert.equal(created.statusCode, 201);
  assert.deepEqual(created.json(), { id: 7, name: 'fine', createdAt: '1970-01-01T00:00:00.000Z' });
});

test('413 over the size limit, 415 for another media type, 404 and 405 with Allow', async () => {
  assert.equal((await post(JSON.stringify({ name: 'x'.repeat(5000) }))).statusCode, 413);
  assert.equal((await post('name=x', 'application/x-www-form-urlencoded')).statusCode, 415);
  assert.equal((await post('hello', 'text/plain')).statusCode, 415);
  assert.equal((await api.app.inject({ url: '/nope' })).statusCode, 404);
  const wrong = await api.app.inject({ method: 'DELETE', url: '/items' });
  assert.equal(wrong.statusCode, 405);
  assert.equal(wrong.headers.allow, 'GET, POST');
  const head = await api.app.inject({ method: 'HEAD', url: '/healthz' });
  assert.equal(head.statusCode, 405);
  assert.equal(head.headers.allow, 'GET');
});

test('request ids differ per request; no-store everywhere but on the document', async () => {
  const [a, b] = [await api.app.inject({ url: '/healthz' }), await api.app.inject({ url: '/items' })];
  assert.notEqual(a.headers['x-request-id'], b.headers['x-request-id']);
  assert.equal(b.headers['cache-control'], 'no-store');
  const doc = await api.app.inject({ url: '/openapi.json' });
  assert.equal(doc.headers['cache-control'], undefined);
  assert.equal(doc.body, api.document);
});
