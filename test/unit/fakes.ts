/**
 * Small fakes for unit tests of pure timing logic. The real Vault and Postgres are
 * exercised by test/faults.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { VaultRequestError, type AppConfig, type LeaseSession, type DatabaseCredentials } from '@pgvault/runtime';

/** A fake of the calls the lease manager makes (LeaseSession): it counts them and answers as told. */
export class FakeVaultSession implements LeaseSession {
  issued = 0;
  renewals: string[] = [];
  revoked: string[] = [];
  relogins = 0;
  tokenGeneration = 1;
  /** What renew answers: a lease duration, or an error to throw. */
  renewAnswer: (leaseId: string) => number = () => this.ttl;
  /** How long issue takes (ms), and an optional error it throws. */
  issueDelayMillis = 0;
  issueError?: () => Error;
  reloginError?: () => Error;
  constructor(public ttl: number) {}
  async issue(_mount: string, role: string): Promise<DatabaseCredentials> {
    const tokenGeneration = this.tokenGeneration;
    const issuedAt = Date.now();
    if (this.issueDelayMillis) await new Promise((r) => setTimeout(r, this.issueDelayMillis));
    if (this.issueError) throw this.issueError();
    this.issued++;
    const creds = { role, leaseId: `database/creds/${role}/${this.issued}`, leaseDurationSeconds: this.ttl, renewable: true, username: `v-${role}-${this.issued}`, issuedAt, tokenGeneration } as DatabaseCredentials;
    Object.defineProperty(creds, 'password', { value: 'fake', enumerable: false });
    return creds;
  }
  async renew(leaseId: string): Promise<number> {
    this.renewals.push(leaseId);
    return this.renewAnswer(leaseId);
  }
  /** Revocations asked for, including failed ones; `revokeError` makes one fail. */
  revokeAttempts: string[] = [];
  revokeError?: (leaseId: string) => Error | undefined;
  /** What a check of the token itself says (lookup-self): refused, as when the token was revoked. */
  tokenRefused = true;
  tokenChecks = 0;
  async revoke(leaseId: string): Promise<void> {
    this.revokeAttempts.push(leaseId);
    const e = this.revokeError?.(leaseId);
    if (e) throw e;
    this.revoked.push(leaseId);
  }
  async reloginIfTokenRefused(failedGeneration: number): Promise<boolean> {
    if (this.tokenGeneration > failedGeneration) return true;
    this.tokenChecks++;
    if (!this.tokenRefused) return false;
    await this.reloginNow(failedGeneration);
    return true;
  }
  async reloginNow(failedGeneration: number): Promise<void> {
    if (this.tokenGeneration > failedGeneration) return;
    if (this.reloginError) throw this.reloginError();
    this.relogins++;
    this.tokenGeneration++;
  }
}

export const vaultError = (status: number | undefined, text: string, path = 'x') =>
  new VaultRequestError(status === 403 ? 'VAULT_FORBIDDEN' : status ? 'VAULT_HTTP' : 'VAULT_UNREACHABLE', `Vault ${path} failed (${status ? `HTTP ${status}` : 'ECONNREFUSED'}: ${text})`, path, status);

/**
 * A fake of node-vault's client (write/read), to test VaultSession's own logic: token
 * renewal, re-login and its backoff. `answer` decides each call.
 */
export class FakeVaultClient {
  token?: string;
  calls: { path: string; at: number }[] = [];
  logins = 0;
  constructor(public answer: (path: string, body: any) => any) {}
  async write(path: string, body: any): Promise<any> {
    this.calls.push({ path, at: Date.now() });
    const r = this.answer(path, body);
    if (r instanceof Error) {
      const e: any = new Error(r.message);
      if ((r as any).statusCode) e.response = { statusCode: (r as any).statusCode };
      if ((r as any).code) e.code = (r as any).code;
      throw e;
    }
    if (path.endsWith('/login')) this.logins++;
    return r;
  }
  async read(path: string): Promise<any> {
    return this.write(path, undefined);
  }
}

/** An error as node-vault throws it for an HTTP status. */
export function httpError(statusCode: number, message: string): Error {
  return Object.assign(new Error(message), { statusCode });
}

/** What FakeVaultServer answers for one request: a status and body, or `hang` (accept and never answer). */
export type FakeVaultAnswer = { status: number; body?: unknown; delayMillis?: number } | 'hang';

/**
 * A fake Vault: an HTTP server on 127.0.0.1 speaking the few endpoints the runtime calls
 * (AppRole login, database creds, lease renew and revoke, token lookup, renew and revoke).
 * It records every call and every lease it handed out; `override` changes one answer.
 * The real Vault is exercised by test/e2e and test/faults.
 */
export class FakeVaultServer {
  readonly calls: { path: string; token?: string }[] = [];
  /** Every lease created (as Vault creates the user before it answers), and whether it was revoked. */
  readonly leases: Map<string, { revoked: boolean }>;
  /** Tokens handed out, and whether each was revoked. */
  readonly tokens: Map<string, { revoked: boolean }>;
  ttlSeconds = 60;
  tokenTtlSeconds = 3600;
  override?: (path: string, token: string | undefined) => FakeVaultAnswer | undefined;
  private server = http.createServer((req, res) => this.handle(req, res));
  private sockets = new Set<import('node:net').Socket>();
  port = 0;

  /** With `cluster`: another node of the same cluster (leases and tokens shared, as Raft does). */
  constructor(cluster?: FakeVaultServer) {
    this.leases = cluster?.leases ?? new Map();
    this.tokens = cluster?.tokens ?? new Map();
  }

  async listen(): Promise<this> {
    // Unref'd: a test that fails before close() does not hold its process open.
    this.server.unref();
    this.server.on('connection', (s) => {
      s.unref();
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    this.port = (this.server.address() as import('node:net').AddressInfo).port;
    return this;
  }

  get address(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  count(pattern: RegExp): number {
    return this.calls.filter((c) => pattern.test(c.path)).length;
  }

  /** Stops listening and cuts open connections (as a dead node). */
  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    let raw = '';
    req.on('data', (d) => (raw += d));
    req.on('end', () => {
      const path = (req.url ?? '').replace(/^\/v1\//, '').replace(/\?.*$/, '');
      const token = req.headers['x-vault-token'] as string | undefined;
      this.calls.push({ path, token });
      const answer = this.override?.(path, token) ?? this.answer(path, token, raw ? JSON.parse(raw) : {});
      if (answer === 'hang') return;
      const send = () => {
        if (res.destroyed) return;
        res.writeHead(answer.status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(answer.body ?? {}));
      };
      if (answer.delayMillis) setTimeout(send, answer.delayMillis);
      else send();
    });
  }

  private answer(path: string, token: string | undefined, body: any): FakeVaultAnswer {
    const live = token !== undefined && this.tokens.get(token)?.revoked === false;
    if (path.endsWith('/login')) {
      const t = `fake-token-${this.tokens.size + 1}`;
      this.tokens.set(t, { revoked: false });
      return { status: 200, body: { auth: { client_token: t, lease_duration: this.tokenTtlSeconds, policies: ['pgvault-app'] } } };
    }
    if (!live) return { status: 403, body: { errors: ['permission denied'] } };
    let m: RegExpMatchArray | null;
    if (path === 'auth/token/lookup-self') return { status: 200, body: { data: { ttl: this.tokenTtlSeconds } } };
    if (path === 'auth/token/renew-self') return { status: 200, body: { auth: { lease_duration: this.tokenTtlSeconds } } };
    if (path === 'auth/token/revoke-self') {
      this.tokens.get(token)!.revoked = true;
      return { status: 204 };
    }
    if ((m = path.match(/^sys\/leases\/(renew|revoke)\/?(.*)$/))) {
      const id = m[2] || body.lease_id;
      const lease = this.leases.get(id);
      if (!lease || lease.revoked) return m[1] === 'revoke' ? { status: 204 } : { status: 400, body: { errors: ['lease not found'] } };
      if (m[1] === 'revoke') lease.revoked = true;
      return m[1] === 'revoke' ? { status: 204 } : { status: 200, body: { lease_id: id, lease_duration: this.ttlSeconds, renewable: true } };
    }
    if ((m = path.match(/^(.+)\/creds\/(.+)$/))) return { status: 200, body: this.newLease(m[1], m[2]) };
    return { status: 404, body: { errors: [] } };
  }

  /** Creates a lease as Vault does (before answering), so a late answer still leaves one. */
  newLease(mount: string, role: string) {
    const n = this.leases.size + 1;
    const id = `${mount}/creds/${role}/fake${n}`;
    this.leases.set(id, { revoked: false });
    return { lease_id: id, lease_duration: this.ttlSeconds, renewable: true, data: { username: `v-${role}-${n}`, password: 'fake-password' } };
  }
}

/** An app configuration for a fake Vault cluster at `addresses`; Postgres at a port nothing listens on (pools are not used). */
export function fakeConfig(addresses: string[], roles: string[]): AppConfig {
  return {
    vaultAddress: addresses[0],
    vaultAddresses: addresses,
    approleMount: 'approle',
    roleId: 'role-id',
    secretId: 'secret-id',
    mountPath: 'database',
    roles,
    postgres: { host: '127.0.0.1', port: 1, database: 'app', sslmode: 'disable' },
  };
}

/** How FakePostgres answers a statement. */
export type FakeStatementMode =
  /** One row, column `x` (rowValue: "1" unless set), at once. */
  | 'answer'
  /** Waits (as on a lock) until a cancel request for its backend comes, then fails with 57014. */
  | 'wait-for-cancel'
  /** Never answers; cancel requests are taken in and never answered either: a paused (docker pause) server. */
  | 'freeze';

/**
 * A fake Postgres server on 127.0.0.1 speaking just enough of the v3 wire protocol for pg's
 * client: startup (no TLS, no password asked), simple and extended queries, cancel requests,
 * and a FATAL 57P01 to the backends of a user (as a revocation's pg_terminate_backend sends it).
 * It records what it saw. For unit tests of the runtime's timing logic; the real Postgres is in
 * test/e2e and test/faults.
 */
export class FakePostgres {
  port = 0;
  /** Logins it accepts; any other gets `refusalCode`: 28P01, as Postgres answers for a dropped or expired user, or 28000 (pg_hba, NOLOGIN). */
  accepts: (user: string) => boolean = () => true;
  refusalCode: '28P01' | '28000' = '28P01';
  mode: FakeStatementMode = 'answer';
  /** In 'answer' mode, the value of column `x` for a statement of `user` (`u => u` stands for `SELECT current_user`). */
  rowValue: (user: string, text: string) => string = () => '1';
  /** In 'answer' mode, how long a statement takes (ms); a cancel request does not stop it. */
  answerDelayMillis = 0;
  /** Logins of these users get FATAL 57P01 right behind ReadyForQuery, in the same write (a revocation that ends the session as it starts). */
  terminatedAtLogin: (user: string) => boolean = () => false;
  readonly startups: Record<string, string>[] = [];
  readonly statements: string[] = [];
  /** Backend ids named by the cancel requests that came. */
  readonly cancelRequests: number[] = [];
  /** Backend ids whose connection the client closed. */
  readonly closedByClient: number[] = [];
  readonly #server = net.createServer((socket) => this.#serve(socket));
  readonly #backends = new Map<number, { socket: net.Socket; user: string; onCancel?: () => void }>();
  readonly #held = new Set<net.Socket>();
  #nextPid = 1000;

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    this.port = (this.#server.address() as net.AddressInfo).port;
    return this;
  }

  /** Connections open now. */
  get openBackends(): number {
    return this.#backends.size;
  }

  /** Ends every session of `user` with FATAL 57P01, as pg_terminate_backend does. */
  terminate(user: string): void {
    for (const [pid, b] of this.#backends) {
      if (b.user !== user) continue;
      b.socket.end(FakePostgres.error('FATAL', '57P01', 'terminating connection due to administrator command'));
      this.#backends.delete(pid);
    }
  }

  /** Drops every connection of `user` without a word, as a host that died or a cut network does. */
  drop(user: string): void {
    for (const [pid, b] of this.#backends) {
      if (b.user !== user) continue;
      b.socket.destroy();
      this.#backends.delete(pid);
    }
  }

  async stop(): Promise<void> {
    for (const b of this.#backends.values()) b.socket.destroy();
    for (const s of this.#held) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  static message(type: string, body: Buffer = Buffer.alloc(0)): Buffer {
    const head = Buffer.alloc(5);
    head.write(type, 0);
    head.writeInt32BE(body.length + 4, 1);
    return Buffer.concat([head, body]);
  }

  static error(severity: string, code: string, text: string): Buffer {
    const fields = [`S${severity}`, `V${severity}`, `C${code}`, `M${text}`].map((f) => Buffer.from(`${f}\0`));
    return FakePostgres.message('E', Buffer.concat([...fields, Buffer.from([0])]));
  }

  #serve(socket: net.Socket): void {
    let buffer = Buffer.alloc(0);
    let pid: number | undefined;
    let parsed = '';
    let user = '';
    const int32 = (n: number) => {
      const b = Buffer.alloc(4);
      b.writeInt32BE(n);
      return b;
    };
    const ready = () => FakePostgres.message('Z', Buffer.from('I'));
    const answer = (extended: boolean, text: string) => {
      const value = Buffer.from(this.rowValue(user, text));
      const row = FakePostgres.message('D', Buffer.concat([Buffer.from([0, 1]), int32(value.length), value]));
      const description = FakePostgres.message('T', Buffer.concat([Buffer.from([0, 1]), Buffer.from('x\0'), int32(0), Buffer.from([0, 0]), int32(25), Buffer.from([0xff, 0xff]), int32(-1), Buffer.from([0, 0])]));
      const head = extended ? [FakePostgres.message('1'), FakePostgres.message('2')] : [];
      return Buffer.concat([...head, description, row, FakePostgres.message('C', Buffer.from('SELECT 1\0')), ready()]);
    };
    const run = (text: string, extended: boolean) => {
      this.statements.push(text);
      if (this.mode === 'freeze') return;
      if (this.mode === 'wait-for-cancel') {
        this.#backends.get(pid!)!.onCancel = () => {
          const head = extended ? [FakePostgres.message('1'), FakePostgres.message('2')] : [];
          socket.write(Buffer.concat([...head, FakePostgres.error('ERROR', '57014', 'canceling statement due to user request'), ready()]));
        };
        return;
      }
      if (this.answerDelayMillis > 0) setTimeout(() => socket.writable && socket.write(answer(extended, text)), this.answerDelayMillis);
      else socket.write(answer(extended, text));
    };
    socket.on('close', () => {
      if (pid !== undefined && this.#backends.has(pid)) {
        this.#backends.delete(pid);
        this.closedByClient.push(pid);
      }
      this.#held.delete(socket);
    });
    socket.on('error', () => undefined);
    socket.on('data', (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      for (;;) {
        if (pid === undefined) {
          if (buffer.length < 8) return;
          const length = buffer.readInt32BE(0);
          if (buffer.length < length) return;
          const code = buffer.readInt32BE(4);
          const body = buffer.subarray(8, length);
          buffer = buffer.subarray(length);
          if (code === 80877103) {
            socket.write('N');
            continue;
          }
          if (code === 80877102) {
            const target = body.readInt32BE(0);
            this.cancelRequests.push(target);
            if (this.mode === 'freeze') {
              this.#held.add(socket);
              return;
            }
            this.#backends.get(target)?.onCancel?.();
            socket.end();
            return;
          }
          const parts = body.toString('utf8').split('\0');
          const params: Record<string, string> = {};
          for (let i = 0; i + 1 < parts.length && parts[i]; i += 2) params[parts[i]] = parts[i + 1];
          this.startups.push(params);
          if (!this.accepts(params.user)) {
            const text = this.refusalCode === '28P01' ? `password authentication failed for user "${params.user}"` : `pg_hba.conf rejects connection for user "${params.user}"`;
            socket.end(FakePostgres.error('FATAL', this.refusalCode, text));
            return;
          }
          pid = this.#nextPid++;
          user = params.user;
          this.#backends.set(pid, { socket, user });
          const welcome = [FakePostgres.message('R', int32(0)), FakePostgres.message('K', Buffer.concat([int32(pid), int32(4242)])), ready()];
          if (this.terminatedAtLogin(params.user)) {
            socket.end(Buffer.concat([...welcome, FakePostgres.error('FATAL', '57P01', 'terminating connection due to administrator command')]));
            this.#backends.delete(pid);
            return;
          }
          socket.write(Buffer.concat(welcome));
          continue;
        }
        if (buffer.length < 5) return;
        const type = String.fromCharCode(buffer[0]);
        const length = buffer.readInt32BE(1);
        if (buffer.length < length + 1) return;
        const body = buffer.subarray(5, length + 1);
        buffer = buffer.subarray(length + 1);
        if (type === 'Q') run(body.toString('utf8').replace(/\0$/, ''), false);
        else if (type === 'P') parsed = body.toString('utf8').split('\0')[1];
        else if (type === 'S') run(parsed, true);
        else if (type === 'X') return void socket.end();
      }
    });
  }
}
