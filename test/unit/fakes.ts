/**
 * Small fakes for unit tests of pure timing logic. The real Vault and Postgres are
 * exercised by test/faults.
 */
import { VaultRequestError, type LeaseSession, type DatabaseCredentials } from '@pgvault/runtime';

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
  async revoke(leaseId: string): Promise<void> {
    this.revoked.push(leaseId);
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
