import { Client } from 'pg';
import { AppConfig, DatabaseCredentials, DEFAULT_REPLICA_LAG_WINDOW_MILLIS, pgSsl, roleEndpoint, VaultSession } from '@pgvault/runtime';

export interface CheckResult {
  readonly name: string;
  readonly ok: boolean;
  /** What was observed (never a secret). */
  readonly detail: string;
}

export interface RoleReport {
  readonly role: string;
  readonly username: string;
  readonly leaseDurationSeconds: number;
  readonly checks: CheckResult[];
}

/** Opens a pg client with dynamic credentials, at the role's endpoint (the primary or a replica). */
export async function connectWith(cfg: AppConfig, creds: DatabaseCredentials): Promise<Client> {
  const at = roleEndpoint(cfg, creds.role);
  for (let attempt = 0; ; attempt++) {
    const client = new Client({
      host: at.host,
      port: at.port,
      database: at.database ?? cfg.postgres.database,
      user: creds.username,
      password: creds.password,
      ssl: pgSsl(cfg.postgres.sslmode, { ca: cfg.postgres.caCert }),
      connectionTimeoutMillis: 10_000,
      application_name: 'pgvault-verify',
    });
    try {
      await client.connect();
      return client;
    } catch (e: any) {
      await client.end().catch(() => undefined);
      // A replica may not have replayed the new user yet (the app's pool waits the same way).
      if (at.target !== 'replica' || e?.code !== '28P01' || Date.now() - creds.issuedAt > DEFAULT_REPLICA_LAG_WINDOW_MILLIS) throw e;
      await new Promise((r) => setTimeout(r, Math.min(1000, 100 * 2 ** attempt)));
    }
  }
}

async function attempt(client: Client, sql: string): Promise<{ ok: boolean; detail: string }> {
  await client.query('SAVEPOINT probe');
  try {
    await client.query(sql);
    await client.query('RELEASE SAVEPOINT probe');
    return { ok: true, detail: 'allowed' };
  } catch (e: any) {
    await client.query('ROLLBACK TO SAVEPOINT probe');
    return { ok: false, detail: `refused (${e.code ?? 'error'}: ${e.message})` };
  }
}

/**
 * Issues credentials for `role`, connects, and proves what the role may and may not do:
 * read roles SELECT and nothing else; write roles also INSERT, UPDATE, DELETE and CREATE.
 * Writes run in a transaction that is rolled back. The lease is revoked at the end.
 */
export async function verifyRole(session: VaultSession, cfg: AppConfig, role: string, access: 'read' | 'write'): Promise<RoleReport> {
  const creds = await session.issue(cfg.mountPath, role);
  const checks: CheckResult[] = [];
  const check = (name: string, ok: boolean, detail: string) => checks.push({ name, ok, detail });
  try {
    const client = await connectWith(cfg, creds);
    check('login with issued credentials', true, `connected as ${creds.username}`);
    try {
      const who = await client.query('SELECT current_user AS u, rolvaliduntil AS v FROM pg_roles WHERE rolname = current_user');
      const validUntil: Date | null = who.rows[0]?.v ?? null;
      const expected = creds.issuedAt + creds.leaseDurationSeconds * 1000;
      const driftSeconds = validUntil ? Math.abs(validUntil.getTime() - expected) / 1000 : Infinity;
      check('VALID UNTIL matches the lease', driftSeconds < 60, validUntil ? `valid until ${validUntil.toISOString()} (${driftSeconds.toFixed(0)}s from lease expiry)` : 'no expiry set');
      await client.query('BEGIN');
      const want = access === 'write';
      const probes: [string, string, boolean][] = [
        ['SELECT', 'SELECT count(*) FROM app.items', true],
        ['INSERT', "INSERT INTO app.items (name) VALUES ('pgvault-verify')", want],
        ['UPDATE', "UPDATE app.items SET name = name WHERE name = 'pgvault-verify'", want],
        ['DELETE', "DELETE FROM app.items WHERE name = 'pgvault-verify'", want],
        ['CREATE', 'CREATE TABLE app.pgvault_verify_probe (id int)', want],
      ];
      for (const [what, sql, expectAllowed] of probes) {
        const r = await attempt(client, sql);
        check(`${what} ${expectAllowed ? 'allowed' : 'refused'}`, r.ok === expectAllowed, r.detail);
      }
      await client.query('ROLLBACK');
    } finally {
      await client.end();
    }
    if (creds.renewable) {
      const renewed = await session.renew(creds.leaseId);
      check('lease renews', renewed > 0, `renewed for ${renewed}s`);
    }
  } catch (e: any) {
    check('unexpected error', false, `${e.code ?? 'ERROR'}: ${e.message}`);
  } finally {
    await session.revoke(creds.leaseId).then(
      () => check('lease revoked', true, 'Vault dropped the user'),
      (e) => check('lease revoked', false, `${e.code}: ${e.message}`),
    );
  }
  return { role, username: creds.username, leaseDurationSeconds: creds.leaseDurationSeconds, checks };
}
