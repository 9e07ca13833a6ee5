import * as http from 'node:http';
import { AppError, DatabaseError, safeMessage } from './errors';
import { RuntimeMetrics } from './metrics';
import { CredentialRuntime } from './runtime';

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
  readonly log?: (line: string) => void;
}

class HttpError extends Error {
  constructor(public readonly status: number, message: string) {
    super(message);
  }
}

const MAX_NAME = 200;

/**
 * The REST API: /healthz, /readyz, GET and POST /items, /metrics. Database errors
 * answer 503 with no connection detail; bad input answers 400 with what to fix.
 */
export class ApiServer {
  public readonly server: http.Server;
  public readonly metrics: RuntimeMetrics;
  private readonly opts: ApiServerOptions;
  private readonly rt: CredentialRuntime;
  private accepting = true;

  constructor(opts: ApiServerOptions) {
    this.opts = opts;
    this.rt = opts.runtime;
    this.metrics = new RuntimeMetrics(this.rt);
    this.server = http.createServer((req, res) => void this.handle(req, res));
    this.server.keepAliveTimeout = 5000;
  }

  listen(port: number, host = '127.0.0.1'): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => resolve((this.server.address() as any).port));
    });
  }

  /** Stops taking new requests and waits for those in flight. */
  async stop(): Promise<void> {
    this.accepting = false;
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeIdleConnections();
    });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const route = `${req.method} ${url.pathname}`;
    let status = 500;
    try {
      if (!this.accepting) throw new HttpError(503, 'shutting down');
      let body: unknown;
      switch (route) {
        case 'GET /healthz':
          [status, body] = [200, { status: 'ok' }];
          break;
        case 'GET /readyz':
          [status, body] = await this.readiness();
          break;
        case 'GET /items':
          [status, body] = [200, await this.listItems(url)];
          break;
        case 'POST /items':
          [status, body] = [201, await this.createItem(req)];
          break;
        case 'GET /metrics': {
          status = 200;
          res.writeHead(200, { 'Content-Type': this.metrics.registry.contentType });
          res.end(await this.metrics.registry.metrics());
          return;
        }
        default:
          throw new HttpError(404, `no route ${route}; routes: GET /healthz, GET /readyz, GET /items, POST /items, GET /metrics`);
      }
      this.send(res, status, body);
    } catch (e) {
      if (e instanceof HttpError) {
        status = e.status;
        this.send(res, status, { error: e.message });
      } else if (e instanceof DatabaseError) {
        status = 503;
        this.opts.log?.(`${route}: ${safeMessage(e)}`);
        this.send(res, status, { error: 'the database is unavailable; try again' });
      } else {
        status = 500;
        this.opts.log?.(`${route}: ${safeMessage(e)}`);
        this.send(res, status, { error: 'internal error' });
      }
    } finally {
      this.metrics.httpRequests.inc({ route: ['GET /healthz', 'GET /readyz', 'GET /items', 'POST /items', 'GET /metrics'].includes(route) ? route : 'other', status: String(status) });
    }
  }

  private send(res: http.ServerResponse, status: number, body: unknown): void {
    if (res.headersSent) return;
    res.writeHead(status, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(body));
  }

  private async readiness(): Promise<[number, unknown]> {
    const margin = this.opts.readyMarginFraction ?? 0.2;
    const roles: Record<string, unknown> = {};
    let ready = this.accepting;
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
      await Promise.race([pool.query('SELECT 1'), new Promise((_, reject) => setTimeout(() => reject(new Error('timeout')), 2000).unref())]);
    } catch {
      database = 'unavailable';
      ready = false;
    }
    return [ready ? 200 : 503, { ready, database, roles }];
  }

  private async listItems(url: URL): Promise<unknown> {
    const raw = url.searchParams.get('limit');
    const limit = raw === null ? 20 : Number(raw);
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) {
      throw new HttpError(400, `query parameter "limit" is ${JSON.stringify(raw)}; expected a whole number from 1 to 100`);
    }
    const r = await this.rt.pool(this.opts.readRole ?? 'readonly').query('SELECT id, name, created_at FROM app.items ORDER BY id DESC LIMIT $1', [limit]);
    return { items: r.rows.map((row) => ({ id: Number(row.id), name: row.name, createdAt: row.created_at })) };
  }

  private async createItem(req: http.IncomingMessage): Promise<unknown> {
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
    const r = await this.rt.pool(this.opts.writeRole ?? 'readwrite').query('INSERT INTO app.items (name) VALUES ($1) RETURNING id, name, created_at', [doc.name]);
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
