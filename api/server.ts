import * as http from 'node:http';
import { AppError, CredentialRuntime, DatabaseError, RuntimeMetrics, safeMessage } from '@pgvault/runtime';

export interface ApiServerOptions {
  readonly runtime: CredentialRuntime;
  /** The role GET /items reads through. @default "readonly" */
  readonly readRole?: string;
  /** The role POST /items writes through. @default "readwrite" */
  readonly writeRole?: string;
  /** Not ready when any lease has less than this fraction of its TTL left. @default 0.2 */
  readonly readyMarginFraction?: number;
  /** Largest accepted request body. @default 4096 */
  readonly maxBodyBytes?: number;
  /** Every request answers within this time; past it, 503. @default 5000 */
  readonly requestTimeoutMillis?: number;
  readonly log?: (line: string) => void;
}

class HttpError extends Error {
  constructor(public readonly status: number, message: string) {
    super(message);
  }
}

const MAX_NAME = 200;
const ROUTES = ['GET /healthz', 'GET /readyz', 'GET /items', 'POST /items', 'GET /metrics'];

/**
 * The request target as a URL, or a 400. Origin-form (/path?query) and absolute-form
 * (http://host/path) are accepted; anything else (`*`, `//x`, garbage) is not a resource here.
 */
function parseTarget(target: string): URL {
  const shown = JSON.stringify(target.length > 80 ? `${target.slice(0, 80)}...` : target);
  const bad = () => new HttpError(400, `request target ${shown} is not a path; expected one like /items?limit=5`);
  if (!(target.startsWith('/') && !target.startsWith('//')) && !/^https?:\/\/[^/]/i.test(target)) throw bad();
  try {
    return new URL(target, 'http://localhost');
  } catch {
    throw bad();
  }
}

/**
 * The REST API: /healthz, /readyz, GET and POST /items, /metrics. Database errors
 * answer 503 with no connection detail; bad input answers 400 with what to fix.
 */
export class ApiServer {
  public readonly server: http.Server;
  public readonly metrics: RuntimeMetrics;
  private readonly opts: ApiServerOptions;
  private readonly rt: CredentialRuntime;
  private readonly requestTimeoutMillis: number;
  private accepting = true;

  constructor(opts: ApiServerOptions) {
    this.opts = opts;
    this.rt = opts.runtime;
    this.requestTimeoutMillis = opts.requestTimeoutMillis ?? 5000;
    this.metrics = new RuntimeMetrics(this.rt);
    this.server = http.createServer((req, res) => {
      // Last resort: whatever a request does, it cannot end the process.
      this.handle(req, res).catch((e) => {
        this.opts.log?.(`unhandled error in a request: ${safeMessage(e)}`);
        if (!res.headersSent) this.send(res, 500, { error: 'internal error' });
        else res.destroy();
      });
    });
    this.server.keepAliveTimeout = 5000;
    // Slow clients cannot hold a connection (and a shutdown) for Node's default 300 s.
    this.server.headersTimeout = 10_000;
    this.server.requestTimeout = 15_000;
    // A request line or header the parser rejects (NUL byte, too long, bad syntax): 400 or 431, and close.
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
      if (!socket.writable || (err as any).code === 'ECONNRESET') return void socket.destroy();
      const tooLarge = (err as any).code === 'HPE_HEADER_OVERFLOW';
      const body = JSON.stringify({ error: tooLarge ? 'the request line or headers are too large' : 'malformed HTTP request' });
      socket.end(`HTTP/1.1 ${tooLarge ? '431 Request Header Fields Too Large' : '400 Bad Request'}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    });
  }

  listen(port: number, host = '127.0.0.1'): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => resolve((this.server.address() as any).port));
    });
  }

  /**
   * Stops taking new requests and waits for those in flight, which answer within the
   * request deadline; connections still open after `graceMillis` (default: the request
   * deadline plus 1 s) are closed.
   */
  async stop(graceMillis = this.requestTimeoutMillis + 1000): Promise<void> {
    this.accepting = false;
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => this.server.closeAllConnections(), graceMillis);
      this.server.close(() => {
        clearTimeout(t);
        resolve();
      });
      this.server.closeIdleConnections();
    });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let route = `${req.method} ?`;
    let status = 500;
    let timer: NodeJS.Timeout | undefined;
    try {
      const url = parseTarget(req.url ?? '');
      route = `${req.method} ${url.pathname}`;
      if (!this.accepting) throw new HttpError(503, 'shutting down');
      const deadline = Date.now() + this.requestTimeoutMillis;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new HttpError(503, `no answer within ${this.requestTimeoutMillis / 1000} s (credentials or the database are unavailable); try again`)), this.requestTimeoutMillis);
      });
      const work = this.route(route, url, req, res, deadline);
      work.catch(() => undefined);
      const answer = await Promise.race([work, late]);
      if (!answer) {
        status = 200;
        return;
      }
      [status] = answer;
      this.send(res, status, answer[1]);
    } catch (e) {
      if (e instanceof HttpError) {
        status = e.status;
        this.send(res, status, { error: e.message });
      } else if (e instanceof AppError) {
        // Postgres down, credentials unavailable (Vault down), a deadline passed: temporary.
        status = 503;
        this.opts.log?.(`${route}: ${safeMessage(e)}`);
        this.send(res, status, { error: e instanceof DatabaseError ? 'the database is unavailable; try again' : 'credentials are unavailable; try again' });
      } else {
        status = 500;
        this.opts.log?.(`${route}: ${safeMessage(e)}`);
        this.send(res, status, { error: 'internal error' });
      }
    } finally {
      clearTimeout(timer);
      this.metrics.httpRequests.inc({ route: ROUTES.includes(route) ? route : 'other', status: String(status) });
    }
  }

  /** Answers [status, body], or undefined when it wrote the response itself. */
  private async route(route: string, url: URL, req: http.IncomingMessage, res: http.ServerResponse, deadline: number): Promise<[number, unknown] | undefined> {
    let status: number;
    let body: unknown;
    switch (route) {
      case 'GET /healthz':
        [status, body] = [200, { status: 'ok' }];
        break;
      case 'GET /readyz':
        [status, body] = await this.readiness();
        break;
      case 'GET /items':
        [status, body] = [200, await this.listItems(url, deadline)];
        break;
      case 'POST /items':
        [status, body] = [201, await this.createItem(req, deadline)];
        break;
      case 'GET /metrics': {
        const text = await this.metrics.registry.metrics();
        if (res.headersSent) return undefined;
        res.writeHead(200, { 'Content-Type': this.metrics.registry.contentType });
        res.end(text);
        return undefined;
      }
      default:
        throw new HttpError(404, `no route ${JSON.stringify(route.slice(0, 100))}; routes: ${ROUTES.join(', ')}`);
    }
    return [status, body];
  }

  private send(res: http.ServerResponse, status: number, body: unknown): void {
    if (res.headersSent || res.destroyed) return;
    // While shutting down, keep-alive connections are closed after this answer.
    res.writeHead(status, { 'Content-Type': 'application/json', ...(this.accepting ? {} : { Connection: 'close' }) });
    res.end(JSON.stringify(body));
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

  private async listItems(url: URL, deadline: number): Promise<unknown> {
    const raw = url.searchParams.get('limit');
    const limit = raw === null ? 20 : Number(raw);
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) {
      throw new HttpError(400, `query parameter "limit" is ${JSON.stringify(raw)}; expected a whole number from 1 to 100`);
    }
    const r = await this.rt.pool(this.opts.readRole ?? 'readonly').query('SELECT id, name, created_at FROM app.items ORDER BY id DESC LIMIT $1', [limit], { deadline });
    return { items: r.rows.map((row) => ({ id: Number(row.id), name: row.name, createdAt: row.created_at })) };
  }

  private async createItem(req: http.IncomingMessage, deadline: number): Promise<unknown> {
    const type = req.headers['content-type'] ?? '';
    if (!/^application\/json\b/.test(type)) throw new HttpError(400, `Content-Type is "${type}"; expected application/json`);
    const text = await readBody(req, this.opts.maxBodyBytes ?? 4096);
    let doc: any;
    try {
      doc = JSON.parse(text);
    } catch {
      throw new HttpError(400, 'the body is not valid JSON; expected {"name": "<1 to 200 characters>"}');
    }
    if (!doc || typeof doc !== 'object' || Array.isArray(doc)) throw new HttpError(400, 'the body must be a JSON object: {"name": "..."}');
    const extra = Object.keys(doc).filter((k) => k !== 'name');
    if (extra.length) throw new HttpError(400, `unknown field(s) ${extra.map((k) => JSON.stringify(k)).join(', ')}; only "name" is accepted`);
    if (typeof doc.name !== 'string' || doc.name.trim().length === 0 || doc.name.length > MAX_NAME) {
      throw new HttpError(400, `field "name" must be a string of 1 to ${MAX_NAME} characters`);
    }
    const r = await this.rt.pool(this.opts.writeRole ?? 'readwrite').query('INSERT INTO app.items (name) VALUES ($1) RETURNING id, name, created_at', [doc.name], { deadline });
    const row = r.rows[0];
    return { id: Number(row.id), name: row.name, createdAt: row.created_at };
  }
}

function readBody(req: http.IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > limit) {
        reject(new HttpError(400, `the body is larger than ${limit} bytes`));
        req.resume();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', (e) => reject(new AppError('HTTP_BODY', e.message)));
  });
}
