import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Server } from 'node:http';
import Fastify, { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import Ajv2020, { ErrorObject } from 'ajv/dist/2020';
import { AppError, CredentialRuntime, DatabaseError, RuntimeMetrics, safeMessage } from '@pgvault/runtime';

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
  /** Every request answers within this time; past it, 503. @default 5000 */
  readonly requestTimeoutMillis?: number;
  /** One line per request (with its request id) and the warnings. @default nothing is logged */
  readonly logger?: ApiLogger;
}

class HttpError extends Error {
  constructor(public readonly status: number, message: string) {
    super(message);
  }
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
function describeError(part: 'body' | 'querystring', e: ErrorObject, data: unknown): string {
  const field = (p: string) => (part === 'body' ? `body field ${JSON.stringify(p)}` : `query parameter ${JSON.stringify(p)}`);
  const name = e.instancePath.split('/').slice(1).join('.');
  const where = name ? field(name) : part === 'body' ? 'the body' : 'the query';
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
      const why = text.includes('\u0000') ? 'it holds a NUL character' : text.trim() === '' ? 'only white space' : `it does not match ${(e.params as any).pattern}`;
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

    // Validation from the document, in its own dialect: JSON Schema 2020-12 (Fastify's built-in Ajv is draft-07).
    // Query strings are text, so their values are coerced to the schema's types; a JSON body never is.
    const ajv = {
      querystring: new Ajv2020({ coerceTypes: true, useDefaults: true, strict: true, verbose: true }),
      body: new Ajv2020({ coerceTypes: false, useDefaults: true, strict: true, verbose: true }),
    };
    this.app.setValidatorCompiler(({ schema, httpPart }) => {
      const part = httpPart === 'body' ? 'body' : 'querystring';
      const validate = ajv[part].compile(schema);
      return (data: unknown) => (validate(data) ? true : { error: new HttpError(400, describeError(part, validate.errors![0], data)) });
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
        const body = op.requestBody ? deref(doc, op.requestBody.content['application/json'].schema) : undefined;
        const handle = this.handler(`${method.toUpperCase()} ${p}`);
        this.app.route({
          method: method.toUpperCase() as any,
          url: p,
          schema: { ...(querystring && { querystring }), ...(body && { body }) },
          handler: (req, reply) => this.within(handle(req, reply)),
        });
      }
    }
  }

  listen(port: number, host = '127.0.0.1'): Promise<number> {
    return this.app.listen({ port, host }).then(() => (this.server.address() as any).port);
  }

  /**
   * Stops taking new requests and waits for those in flight, which answer within the
   * request deadline; connections still open after `graceMillis` (default: the request
   * deadline plus 1 s) are closed.
   */
  async stop(graceMillis = this.requestTimeoutMillis + 1000): Promise<void> {
    this.accepting = false;
    const t = setTimeout(() => this.server.closeAllConnections(), graceMillis);
    try {
      await this.app.close();
    } finally {
      clearTimeout(t);
    }
  }

  /** The answer of `work`, or a 503 once the request deadline has passed. */
  private async within<T>(work: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new HttpError(503, `no answer within ${this.requestTimeoutMillis / 1000} s (credentials or the database are unavailable); try again`)), this.requestTimeoutMillis);
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
          reply.code(201);
          return this.createItem((req.body as { name: string }).name, deadline());
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
    if (err instanceof HttpError) return send(err.status, err.message);
    switch (err.code) {
      case 'FST_ERR_CTP_BODY_TOO_LARGE':
        return send(413, `the body is larger than ${this.maxBodyBytes} bytes; expected a JSON object of at most ${this.maxBodyBytes} bytes`);
      case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
        return send(415, `Content-Type is ${JSON.stringify(req.headers['content-type'] ?? '')}; expected application/json`);
      case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
        return send(400, `${err.message}; expected a Content-Length that is the body's size`);
    }
    if (err instanceof AppError) {
      // Postgres down, credentials unavailable (Vault down), a deadline passed: temporary.
      this.opts.logger?.warn({ reqId: req.id, code: err.code }, `${req.method} ${req.routeOptions.url}: ${safeMessage(err)}`);
      return send(503, err instanceof DatabaseError ? 'the database is unavailable; try again' : 'credentials are unavailable; try again');
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

  private async createItem(name: string, deadline: number): Promise<unknown> {
    const r = await this.rt.pool(this.opts.writeRole ?? 'readwrite').query('INSERT INTO app.items (name) VALUES ($1) RETURNING id, name, created_at', [name], { deadline });
    const row = r.rows[0];
    return { id: Number(row.id), name: row.name, createdAt: row.created_at };
  }
}
