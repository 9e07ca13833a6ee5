import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import type { Server } from 'node:http';
import Fastify, { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import Ajv2020, { ErrorObject } from 'ajv/dist/2020';
import { AppError, CredentialRuntime, DatabaseError, queryOutcome, RuntimeMetrics, safeMessage } from '@pgvault/runtime';

/** What the server logs with: pino's `(fields, message)` calls, or anything shaped like them. */
export interface ApiLogger {
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
}

export interface ApiServerOptions {
  readonly runtime: CredentialRuntime;
  /** The role GET /items reads through. @default "readonly" */
  readonly readRole?: string;
  /** The role POST /items writes through. @default "readwrite" */
  readonly writeRole?: string;
  /** Not ready when any lease has less than this fraction of its TTL left. @default 0.2 */
  readonly readyMarginFraction?: number;
  /** Largest accepted request body; a larger one answers 413. @default 4096 */
  readonly maxBodyBytes?: number;
  /**
   * Each request's deadline: a statement still running at it is cancelled. A read answers 503;
   * a write 503 when Postgres confirmed the cancel (nothing was written), else 504 with
   * `"outcome": "unknown"`. The answer comes within this time plus the cancel's bound
   * (`cancelTimeoutMillis` of the pools, 1 s by default). @default 5000
   */
  readonly requestTimeoutMillis?: number;
  /** How often expired idempotency keys (older than 24 h) are deleted. @default 600000 */
  readonly idempotencyCleanupIntervalMillis?: number;
  /** One line per request (with its request id) and the warnings. @default nothing is logged */
  readonly logger?: ApiLogger;
}

class HttpError extends Error {
  constructor(public readonly status: number, message: string, public readonly extra: Record<string, string> = {}) {
    super(message);
  }
}

/** How long a POST /items answer is kept for a retry with the same Idempotency-Key. */
export const IDEMPOTENCY_KEY_HOURS = 24;

/** The keyed write: the item and its key in one statement, hence one transaction; a key used before fails it whole (23505). */
const INSERT_ITEM_WITH_KEY = `WITH item AS (INSERT INTO app.items (name) VALUES ($1) RETURNING id, name, created_at)
INSERT INTO app.idempotency_keys (key, request_sha256, status, response)
SELECT $2, $3, 201, jsonb_build_object('id', id, 'name', name, 'createdAt', to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')) FROM item
RETURNING response`;

/**
 * Why a query-string whole number is not written as one (Ajv alone would coerce "1.0", "0x10",
 * " 5" and "1e309" to numbers); undefined when it is plain decimal digits with an optional minus.
 */
function notDecimalDigits(text: string): string | undefined {
  if (/^(0|-?[1-9][0-9]*)$/.test(text)) return undefined;
  if (text === '') return 'empty';
  if (text.trim() !== text) return 'white space around the number';
  if (/^[+-]?0[xob]/i.test(text)) return 'not decimal (a 0x, 0o or 0b prefix)';
  if (/^-0+$/.test(text)) return 'a negative zero';
  if (/^[+-]?[0-9.]+e[+-]?[0-9]+$/i.test(text)) return 'in exponent notation';
  if (/^[+-]?[0-9]*\.[0-9]*$/.test(text)) return 'not written as a whole number (it has a decimal point)';
  if (/^\+[0-9]+$/.test(text)) return 'written with a plus sign';
  if (/^-?0[0-9]+$/.test(text)) return 'written with a leading zero';
  return 'not a whole number';
}

/** How long after the request deadline the backstop answers, past the pools' cancel bound (1 s). */
const BACKSTOP_MARGIN_MILLIS = 1500;

/** The Idempotency-Key header as validated (the document's pattern), without the quotes of its structured-field form. */
function idempotencyKey(value: string | string[] | undefined): string | undefined {
  if (typeof value !== 'string') return undefined;
  return value.replace(/^"(.*)"$/, '$1');
}

/**
 * Whether a write whose statement was sent is known not to have taken effect: a cancel
 * Postgres confirmed (57014), a transaction it rolled back (class 40), or a value it refused
 * (classes 22, 23). Anything else may follow a COMMIT (57P01 from a terminated session, a socket
 * that broke, an error without a SQLSTATE), so its outcome is unknown.
 */
function writeNotApplied(err: DatabaseError): boolean {
  return /^(57014$|40|22|23)/.test(err.sqlState ?? '');
}

/**
 * A database error by SQLSTATE class (for a write that was sent, only after writeNotApplied; the
 * rest is 504 outcome unknown): the connection (08), an operator or a crash (57P0x), or
 * resources (53) → 503; this API's own deadline or statement_timeout (57014), a refused login
 * (28) and a transaction rolled back for a conflict (40) → 503 too, for a retry helps; bad data
 * (22) or a constraint (23) → 400; permission denied (42501, a session whose credentials are being
 * revoked) → 503; anything else → 500. Without a SQLSTATE the database could
 * not be reached → 503.
 */
function databaseAnswer(err: DatabaseError, write: boolean): [number, string] {
  const state = err.sqlState ?? '';
  if (state === '' || /^(08|53|57P0|28|40)/.test(state) || state === '57014') return [503, `the database is unavailable; ${write ? 'nothing was written; ' : ''}try again`];
  // Permission denied on a session whose credentials are being revoked (the revocation takes the
  // group membership away before it ends the sessions): new credentials answer, so retry.
  if (state === '42501') return [503, `the database refused this request's credentials (SQLSTATE 42501: they were being revoked or rotated); ${write ? 'nothing was written; ' : ''}try again`];
  if (/^(22|23)/.test(state)) return [400, `the database refused the value (SQLSTATE ${state}): ${err.message.replace(/^query failed: /, '').slice(0, 200)}; expected a value the column accepts`];
  return [500, `internal error (SQLSTATE ${state})`];
}

/** The contract: served at GET /openapi.json byte for byte, and the source of every request schema. */
export const OPENAPI_FILE = [path.join(__dirname, 'openapi.json'), path.join(__dirname, '..', '..', 'api', 'openapi.json')].find((f) => fs.existsSync(f)) ?? path.join(__dirname, 'openapi.json');

type Doc = { paths: Record<string, Record<string, any>>; components: { schemas: Record<string, any> } };

/** The schema with every `#/components/schemas/X` reference replaced by X (the document has no cycles). */
function deref(doc: Doc, node: any): any {
  if (Array.isArray(node)) return node.map((n) => deref(doc, n));
  if (!node || typeof node !== 'object') return node;
  if (typeof node.$ref === 'string') return deref(doc, doc.components.schemas[node.$ref.replace('#/components/schemas/', '')]);
  return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, deref(doc, v)]));
}

function shown(value: unknown): string {
  if (value === undefined) return 'missing';
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 40)}... (${typeof value === 'string' ? [...value].length : text.length} characters)` : text;
}

function kind(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' || typeof value === 'undefined' ? `an ${typeof value}` : `a ${typeof value}`;
}

/** The value at an Ajv instance path ("/name") in `data`. */
function at(data: any, pointer: string): unknown {
  return pointer.split('/').slice(1).reduce((v, k) => (v == null ? undefined : v[k.replace(/~1/g, '/').replace(/~0/g, '~')]), data);
}

/**
 * One Ajv error as a sentence: where, the value, what is actually wrong with it, and what the
 * document expects (the schema's `description`, which the document writes as that phrase).
 */
function describeError(part: 'body' | 'querystring' | 'headers', e: ErrorObject, data: unknown): string {
  const headerName = (p: string) => p.replace(/(^|-)([a-z])/g, (_m, dash: string, c: string) => dash + c.toUpperCase());
  const field = (p: string) => (part === 'body' ? `body field ${JSON.stringify(p)}` : part === 'headers' ? `header ${headerName(p)}` : `query parameter ${JSON.stringify(p)}`);
  const name = e.instancePath.split('/').slice(1).join('.');
  const where = name ? field(name) : part === 'body' ? 'the body' : part === 'headers' ? 'the headers' : 'the query';
  const value = at(data, e.instancePath);
  const expected = (e.parentSchema as any)?.description ?? `a value that passes ${e.schemaPath}`;
  switch (e.keyword) {
    case 'required': {
      const prop = (e.params as any).missingProperty as string;
      const wanted = (e.parentSchema as any)?.properties?.[prop]?.description;
      return `${field(prop)} is missing${wanted ? `; expected ${wanted}` : ''}`;
    }
    case 'additionalProperties': {
      const extra = (e.params as any).additionalProperty as string;
      const known = Object.keys((e.parentSchema as any)?.properties ?? {}).map((k) => JSON.stringify(k)).join(', ');
      return `${field(name ? `${name}.${extra}` : extra)} is not accepted; expected only ${known || 'no field'}`;
    }
    case 'type': {
      if (value === undefined || (value === null && !name)) return `${where} is missing; expected ${expected}`;
      const what = typeof value === 'string' && (e.params as any).type === 'integer' ? 'not a whole number' : kind(value);
      return `${where} is ${shown(value)}, ${what}; expected ${expected}`;
    }
    case 'minimum':
    case 'maximum':
      return `${where} is ${shown(value)}, ${e.keyword === 'minimum' ? 'below' : 'above'} ${(e.params as any).limit}; expected ${expected}`;
    case 'minLength':
    case 'maxLength': {
      const n = [...String(value)].length;
      if (n === 0) return `${where} is empty; expected ${expected}`;
      const what = n > 40 ? `${n} characters long` : `${shown(value)}, ${n} characters long`;
      return `${where} is ${what}, ${e.keyword === 'minLength' ? 'fewer' : 'more'} than ${(e.params as any).limit}; expected ${expected}`;
    }
    case 'pattern': {
      const text = String(value);
      const bad = part === 'headers' ? [...text].find((c) => !/[A-Za-z0-9._~:+\/=-]/.test(c)) : undefined;
      const why = text.includes('\u0000')
        ? 'it holds a NUL character'
        : text.trim() === ''
          ? 'only white space'
          : bad !== undefined && !(bad === '"' && /^"[^"]+"$/.test(text))
            ? `it holds ${JSON.stringify(bad)} (U+${bad.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}), a character it may not hold`
            : part === 'headers' && text.replace(/^"(.*)"$/, '$1').length > 255
              ? `it is ${text.replace(/^"(.*)"$/, '$1').length} characters long, more than 255`
              : `it does not match ${(e.params as any).pattern}`;
      return `${where} is ${shown(value)}: ${why}; expected ${expected}`;
    }
    default:
      return `${where} is ${shown(value)}: it ${e.message ?? 'is not valid'}; expected ${expected}`;
  }
}

/**
 * The REST API, built from its OpenAPI 3.1 document (api/openapi.json): /healthz, /readyz,
 * GET and POST /items, /metrics, /openapi.json. Requests are validated by Ajv in the
 * document's own dialect (JSON Schema 2020-12). Database errors answer 503 with no
 * connection detail; bad input answers 400 with what is wrong and what is expected.
 */
export class ApiServer {
  public readonly app: FastifyInstance;
  public readonly server: Server;
  public readonly metrics: RuntimeMetrics;
  /** The document's bytes, as served. */
  public readonly document: string;
  private readonly opts: ApiServerOptions;
  private readonly rt: CredentialRuntime;
  private readonly requestTimeoutMillis: number;
  private readonly maxBodyBytes: number;
  private readonly routes: Map<string, string[]>;
  private accepting = true;
  private readonly cleanup: NodeJS.Timeout;

  constructor(opts: ApiServerOptions) {
    this.opts = opts;
    this.rt = opts.runtime;
    this.requestTimeoutMillis = opts.requestTimeoutMillis ?? 5000;
    this.maxBodyBytes = opts.maxBodyBytes ?? 4096;
    this.metrics = new RuntimeMetrics(this.rt);
    this.document = fs.readFileSync(OPENAPI_FILE, 'utf8');
    const doc = JSON.parse(this.document) as Doc;
    this.routes = new Map(Object.entries(doc.paths).map(([p, ops]) => [p, Object.keys(ops).map((m) => m.toUpperCase())]));
    const idPrefix = randomBytes(4).toString('hex');
    let nextId = 0;

    this.app = Fastify({
      bodyLimit: this.maxBodyBytes,
      // The contract lists every method; HEAD is not one of them.
      exposeHeadRoutes: false,
      // Shutting down answers with the documented error shape (the hook below), not Fastify's.
      return503OnClosing: false,
      genReqId: () => `${idPrefix}-${(++nextId).toString(36)}`,
      keepAliveTimeout: 5000,
      // Slow clients cannot hold a connection (and a shutdown) for Node's default 300 s.
      requestTimeout: 15_000,
      // A request line or header the parser rejects (NUL byte, too long, bad syntax): 400 or 431, and close.
      clientErrorHandler: (err: NodeJS.ErrnoException, socket) => {
        if (!socket.writable || err.code === 'ECONNRESET') return void socket.destroy();
        const tooLarge = err.code === 'HPE_HEADER_OVERFLOW';
        const body = JSON.stringify({ error: tooLarge ? 'the request line or headers are too large; expected at most 16 KiB' : 'malformed HTTP request' });
        socket.end(`HTTP/1.1 ${tooLarge ? '431 Request Header Fields Too Large' : '400 Bad Request'}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
      },
      // A path that is not valid percent-encoding: 400 in the documented shape.
      frameworkErrors: (err, _req, reply: FastifyReply) => void reply.code(400).send({ error: `${err.message}; expected a path like /items?limit=5` }),
      // Absolute-form targets (http://host/path) are routed by their path.
      rewriteUrl: (req) => {
        const url = req.url ?? '/';
        return /^https?:\/\/[^/]/i.test(url) ? url.replace(/^https?:\/\/[^/]+/i, '') || '/' : url;
      },
    });
    this.server = this.app.server;
    this.server.headersTimeout = 10_000;
    this.cleanup = setInterval(() => {
      this.removeExpiredIdempotencyKeys().catch((e) => this.opts.logger?.warn({ code: (e as AppError).code }, `removing expired idempotency keys failed: ${safeMessage(e)}`));
    }, this.opts.idempotencyCleanupIntervalMillis ?? 600_000);
    this.cleanup.unref();

    // Validation from the document, in its own dialect: JSON Schema 2020-12 (Fastify's built-in Ajv is draft-07).
    // Query strings are text, so their values are coerced to the schema's types; a JSON body never is.
    const ajv = {
      querystring: new Ajv2020({ coerceTypes: true, useDefaults: true, strict: true, verbose: true }),
      body: new Ajv2020({ coerceTypes: false, useDefaults: true, strict: true, verbose: true }),
      headers: new Ajv2020({ coerceTypes: false, useDefaults: false, strict: true, verbose: true }),
    };
    this.app.setValidatorCompiler(({ schema, httpPart }) => {
      const part = httpPart === 'body' ? 'body' : httpPart === 'headers' ? 'headers' : 'querystring';
      const validate = ajv[part].compile(schema);
      // Whole numbers in the query string must be written as plain digits before Ajv coerces them.
      const integers = part === 'querystring' ? Object.entries((schema as any).properties ?? {}).filter(([, p]: [string, any]) => p.type === 'integer') : [];
      return (data: any) => {
        for (const [name, prop] of integers as Array<[string, any]>) {
          const raw = data?.[name];
          const why = typeof raw === 'string' ? notDecimalDigits(raw) : undefined;
          if (why) return { error: new HttpError(400, `query parameter ${JSON.stringify(name)} is ${shown(raw)}, ${why}; expected ${prop.description}`) };
        }
        return validate(data) ? true : { error: new HttpError(400, describeError(part, validate.errors![0], data)) };
      };
    });

    // JSON only (a text/plain body answers 415). Plain JSON.parse: the body goes to the validator,
    // whose additionalProperties refuses "__proto__" and any other unknown key, and then only .name is read.
    const expectedBody = 'expected a JSON object {"name": "<1 to 200 characters>"}';
    this.app.removeAllContentTypeParsers();
    this.app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, text, done) => {
      if (text === '') return done(new HttpError(400, `the body is empty; ${expectedBody}`), undefined);
      try {
        done(null, JSON.parse(text as string));
      } catch (e: any) {
        done(new HttpError(400, `the body is not valid JSON (${String(e.message).slice(0, 120)}); ${expectedBody}`), undefined);
      }
    });

    // Hooks in callback form: no promise per request.
    this.app.addHook('onRequest', (req, reply, done) => {
      reply.header('X-Request-Id', req.id);
      // What reads the database or the leases must never be cached; the document may be.
      if (req.url !== '/openapi.json' && !req.url.startsWith('/openapi.json?')) reply.header('Cache-Control', 'no-store');
      done(this.accepting ? undefined : new HttpError(503, 'shutting down; try again on another instance'));
    });
    // While shutting down, a connection is closed after its answer (also one begun before), so the drain ends with the last answer.
    this.app.addHook('onSend', (_req, reply, payload, done) => {
      if (!this.accepting) reply.header('Connection', 'close');
      done(null, payload);
    });
    this.app.addHook('onResponse', (req, reply, done) => {
      const route = req.routeOptions.url && this.routes.has(req.routeOptions.url) ? `${req.method} ${req.routeOptions.url}` : 'other';
      this.metrics.httpRequests.inc({ route, status: String(reply.statusCode) });
      this.opts.logger?.info(
        { reqId: req.id, method: req.method, url: req.url.length > 200 ? `${req.url.slice(0, 200)}...` : req.url, status: reply.statusCode, millis: Math.round(reply.elapsedTime) },
        'request',
      );
      done();
    });
    this.app.setNotFoundHandler((req, reply) => this.notFound(req, reply));
    this.app.setErrorHandler((err, req, reply) => this.fail(err as FastifyError, req, reply));

    // Each route takes its query and body schemas from the document.
    for (const [p, ops] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const params = (op.parameters ?? []).filter((x: any) => x.in === 'query');
        const querystring = params.length
          ? { type: 'object', properties: Object.fromEntries(params.map((x: any) => [x.name, deref(doc, x.schema)])), required: params.filter((x: any) => x.required).map((x: any) => x.name) }
          : undefined;
        // Node gives header names in lower case.
        const headerParams = (op.parameters ?? []).filter((x: any) => x.in === 'header');
        const headers = headerParams.length
          ? { type: 'object', properties: Object.fromEntries(headerParams.map((x: any) => [x.name.toLowerCase(), deref(doc, x.schema)])), required: headerParams.filter((x: any) => x.required).map((x: any) => x.name.toLowerCase()) }
          : undefined;
        const body = op.requestBody ? deref(doc, op.requestBody.content['application/json'].schema) : undefined;
        const handle = this.handler(`${method.toUpperCase()} ${p}`);
        this.app.route({
          method: method.toUpperCase() as any,
          url: p,
          schema: { ...(querystring && { querystring }), ...(body && { body }), ...(headers && { headers }) },
          handler: (req, reply) => this.within(handle(req, reply), method !== 'get'),
        });
      }
    }
  }

  listen(port: number, host = '127.0.0.1'): Promise<number> {
    return this.app.listen({ port, host }).then(() => (this.server.address() as any).port);
  }

  /**
   * Stops taking new requests and waits for those in flight, which answer within the
   * request deadline plus the cancel's bound; connections still open after `graceMillis`
   * (default: the request deadline plus 2 s) are closed.
   */
  async stop(graceMillis = this.requestTimeoutMillis + BACKSTOP_MARGIN_MILLIS + 500): Promise<void> {
    this.accepting = false;
    clearInterval(this.cleanup);
    const t = setTimeout(() => this.server.closeAllConnections(), graceMillis);
    try {
      await this.app.close();
    } finally {
      clearTimeout(t);
    }
  }

  /**
   * The answer of `work`. A read answers 503 at the deadline (the pool cancels its statement in
   * the background). A write waits past it for the pool, which ends a statement at the deadline
   * (cancel, then close the connection a bounded time later) and so says whether it happened;
   * this is only a backstop, a little later, and answers 504, for the write may have been sent.
   */
  private async within<T>(work: Promise<T>, write: boolean): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(write ? this.unknownOutcome() : new HttpError(503, `no answer within ${this.requestTimeoutMillis / 1000} s (credentials or the database are unavailable); try again`)),
        this.requestTimeoutMillis + (write ? BACKSTOP_MARGIN_MILLIS : 0),
      );
    });
    work.catch(() => undefined);
    try {
      return await Promise.race([work, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  private handler(route: string): (req: FastifyRequest, reply: FastifyReply) => Promise<unknown> {
    const deadline = () => Date.now() + this.requestTimeoutMillis;
    switch (route) {
      case 'GET /healthz':
        return async () => ({ status: 'ok' });
      case 'GET /readyz':
        return async (_req, reply) => {
          const [status, body] = await this.readiness();
          reply.code(status);
          return body;
        };
      case 'GET /items':
        return async (req) => this.listItems((req.query as { limit: number }).limit, deadline());
      case 'POST /items':
        return async (req, reply) => {
          const end = deadline();
          const key = idempotencyKey(req.headers['idempotency-key']);
          const answer = key === undefined ? await this.createItem((req.body as { name: string }).name, end) : await this.createItemOnce((req.body as { name: string }).name, key, end);
          reply.code(201);
          if (answer.replayed) reply.header('Idempotent-Replayed', 'true');
          return answer.body;
        };
      case 'GET /metrics':
        return async (_req, reply) => {
          reply.type(this.metrics.registry.contentType);
          return this.metrics.registry.metrics();
        };
      case 'GET /openapi.json':
        return async (_req, reply) => {
          reply.type('application/json');
          return this.document;
        };
      default:
        throw new Error(`the document names ${route}, which the server does not implement`);
    }
  }

  /** An unknown path answers 404; a known path with a method it does not have, 405 with Allow. */
  private notFound(req: FastifyRequest, reply: FastifyReply): FastifyReply {
    const p = req.url.split('?')[0];
    const methods = this.routes.get(p);
    const shownRoute = JSON.stringify(`${req.method} ${p}`.slice(0, 100));
    if (methods) {
      return reply.code(405).header('Allow', methods.join(', ')).send({ error: `${shownRoute}: method ${req.method} is not allowed here; expected ${methods.join(' or ')}` });
    }
    const all = [...this.routes].flatMap(([route, ms]) => ms.map((m) => `${m} ${route}`));
    return reply.code(404).send({ error: `no route ${shownRoute}; routes: ${all.join(', ')}` });
  }

  private fail(err: FastifyError, req: FastifyRequest, reply: FastifyReply): FastifyReply | void {
    // A body the parser refused on a path with no such route is still a 404 or 405.
    if (req.is404) return this.notFound(req, reply);
    const send = (status: number, error: string) => reply.code(status).send({ error });
    if (err instanceof HttpError) return reply.code(err.status).send({ error: err.message, ...err.extra });
    switch (err.code) {
      case 'FST_ERR_CTP_BODY_TOO_LARGE':
        return send(413, `the body is larger than ${this.maxBodyBytes} bytes; expected a JSON object of at most ${this.maxBodyBytes} bytes`);
      case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
        return send(415, `Content-Type is ${JSON.stringify(req.headers['content-type'] ?? '')}; expected application/json`);
      case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
        return send(400, `${err.message}; expected a Content-Length that is the body's size`);
    }
    if (err instanceof AppError) {
      this.opts.logger?.warn({ reqId: req.id, code: err.code, sqlState: (err as DatabaseError).sqlState }, `${req.method} ${req.routeOptions.url}: ${safeMessage(err)}`);
      if (!(err instanceof DatabaseError)) {
        // Credentials unavailable (Vault down), or the deadline passed before anything was sent.
        const written = req.method === 'GET' ? '' : 'nothing was written; ';
        return send(503, err.code === 'REQUEST_DEADLINE' ? `no answer within ${this.requestTimeoutMillis / 1000} s (credentials or the database are unavailable); ${written}try again` : `credentials are unavailable; ${written}try again`);
      }
      // DB_CONNECT: no connection, so nothing of the write was sent.
      const dbError: DatabaseError = err;
      const sent = dbError.code !== 'DB_CONNECT';
      if (req.method !== 'GET' && (queryOutcome(dbError) === 'unknown' || (sent && !writeNotApplied(dbError)))) {
        const failure = dbError.sqlState ? `SQLSTATE ${dbError.sqlState}` : 'no SQLSTATE: the connection failed';
        const e = this.unknownOutcome(queryOutcome(dbError) === 'unknown' ? undefined : `the database failed after the write was sent (${failure})`);
        return reply.code(e.status).send({ error: e.message, ...e.extra });
      }
      const [status, message] = databaseAnswer(err, req.method !== 'GET');
      return send(status, message);
    }
    const status = (err as any).statusCode;
    if (typeof status === 'number' && status >= 400 && status < 500) return send(status, err.message);
    // Last resort: whatever a request does, it cannot end the process.
    this.opts.logger?.warn({ reqId: req.id }, `unhandled error in a request: ${safeMessage(err)}`);
    return send(500, 'internal error');
  }

  private async readiness(): Promise<[number, unknown]> {
    const margin = this.opts.readyMarginFraction ?? 0.2;
    const roles: Record<string, unknown> = {};
    const vault = this.rt.vaultLogin;
    // Vault refusing logins (expired or wrong secret_id) needs an operator: not ready.
    let ready = this.accepting && vault !== 'login refused';
    for (const [role, lease] of this.rt.leases) {
      const toExpiry = lease.secondsToExpiry;
      const ok = toExpiry > lease.leaseDurationSeconds * margin;
      ready &&= ok;
      roles[role] = {
        secondsToExpiry: Math.round(toExpiry),
        secondsToMaxTtl: lease.secondsToMaxTtl === undefined ? null : Math.round(lease.secondsToMaxTtl),
        credentialsValid: ok,
      };
    }
    let database = 'ok';
    try {
      const pool = this.rt.pool(this.opts.readRole ?? 'readonly');
      await pool.query('SELECT 1', [], { deadline: Date.now() + 2000 });
    } catch {
      database = 'unavailable';
      ready = false;
    }
    return [ready ? 200 : 503, { ready, database, vault, roles }];
  }

  private async listItems(limit: number, deadline: number): Promise<unknown> {
    const r = await this.rt.pool(this.opts.readRole ?? 'readonly').query('SELECT id, name, created_at FROM app.items ORDER BY id DESC LIMIT $1', [limit], { deadline });
    return { items: r.rows.map((row) => ({ id: Number(row.id), name: row.name, createdAt: row.created_at })) };
  }

  private async createItem(name: string, deadline: number): Promise<{ body: unknown; replayed: boolean }> {
    const r = await this.rt.pool(this.opts.writeRole ?? 'readwrite').query('INSERT INTO app.items (name) VALUES ($1) RETURNING id, name, created_at', [name], { deadline });
    const row = r.rows[0];
    return { body: { id: Number(row.id), name: row.name, createdAt: row.created_at }, replayed: false };
  }

  /**
   * POST /items with an Idempotency-Key: the item and the key are written by one statement, so
   * either both are or neither is. A key used within 24 h answers the first answer and writes
   * nothing; used for another body, 409 (a schema-valid request that conflicts with what the key is bound to). A key in use by a request still running waits for it
   * (Postgres's unique index), within the deadline.
   */
  private async createItemOnce(name: string, key: string, deadline: number): Promise<{ body: unknown; replayed: boolean }> {
    const pool = this.rt.pool(this.opts.writeRole ?? 'readwrite');
    const digest = createHash('sha256').update(name).digest('hex');
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const r = await pool.query(INSERT_ITEM_WITH_KEY, [name, key, digest], { deadline });
        return { body: r.rows[0].response, replayed: false };
      } catch (e) {
        if (!(e instanceof DatabaseError && e.sqlState === '23505')) throw e;
        const prior = await pool.query(
          `SELECT request_sha256, response, created_at < now() - interval '${IDEMPOTENCY_KEY_HOURS} hours' AS expired FROM app.idempotency_keys WHERE key = $1`,
          [key],
          { deadline },
        );
        // The unique violation was not the key's (it is not there): the error stands.
        if (prior.rowCount === 0 && attempt === 0) throw e;
        const row = prior.rows[0];
        if (row && !row.expired) {
          if (row.request_sha256 !== digest) {
            throw new HttpError(409, `header Idempotency-Key ${JSON.stringify(key)} was used within ${IDEMPOTENCY_KEY_HOURS} h for a request with another body; expected a new key for a new request (the same key only to retry the same request)`);
          }
          return { body: row.response, replayed: true };
        }
        // Expired: the key is free again.
        await pool.query(`DELETE FROM app.idempotency_keys WHERE key = $1 AND created_at < now() - interval '${IDEMPOTENCY_KEY_HOURS} hours'`, [key], { deadline });
      }
    }
    throw new HttpError(503, `header Idempotency-Key ${JSON.stringify(key)} expired and was taken again while this request ran; nothing was written by it; try again`);
  }

  /** Deletes idempotency keys older than 24 h (a bounded batch per call); returns how many. */
  async removeExpiredIdempotencyKeys(): Promise<number> {
    const r = await this.rt.pool(this.opts.writeRole ?? 'readwrite').query(
      `DELETE FROM app.idempotency_keys WHERE key IN (SELECT key FROM app.idempotency_keys WHERE created_at < now() - interval '${IDEMPOTENCY_KEY_HOURS} hours' LIMIT 10000)`,
      [],
      { deadline: Date.now() + this.requestTimeoutMillis },
    );
    return r.rowCount ?? 0;
  }

  /**
   * 504 for a write that was sent and not answered, or answered with an error that may follow
   * its COMMIT (`failure` says which): it may have been written.
   */
  private unknownOutcome(failure?: string): HttpError {
    const what = failure ?? `no answer from the database within ${this.requestTimeoutMillis / 1000} s`;
    return new HttpError(
      504,
      `${what}; the item may or may not have been created: retry with the same Idempotency-Key header (the item is then written at most once), or check GET /items before sending it again`,
      { outcome: 'unknown' },
    );
  }
}
