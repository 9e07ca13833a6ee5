import { Client } from 'pg';
import type { RoleAccess } from '../stacks/config';
import type { TableGrant } from '../stacks/statements';
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
/** A statement the role may run, and one an SQL injection through it would try, which Postgres must refuse. */
export interface Containment {
  readonly permitted?: { readonly label: string; readonly sql: string };
  readonly injected: { readonly label: string; readonly sql: string };
}

/**
 * The containment the demo shows for a role: the injected text rides on a harmless statement, as
 * it would through a query built by string concatenation (several statements in one simple query).
 */
export function containment(access: RoleAccess, grants: readonly TableGrant[] = []): Containment {
  const covers = (privilege: string, schema: string, table: string) => grants.some((g) => g.privilege === privilege && g.schema === schema && (g.table === table || g.table === '*') && !g.columns);
  const mayDelete = access === 'write' || access === 'migrate' || covers('DELETE', 'app', 'items');
  const injected =
    access === 'migrate'
      ? { label: '; CREATE ROLE … SUPERUSER', sql: "SELECT 1 WHERE 'x' = 'x'; CREATE ROLE pgvault_verify_probe SUPERUSER" }
      : mayDelete
        ? { label: '; DROP TABLE app.items', sql: "SELECT 1 WHERE 'x' = 'x'; DROP TABLE app.items" }
        : { label: '; DELETE FROM app.items', sql: "SELECT 1 WHERE 'x' = 'x'; DELETE FROM app.items" };
  if (access === 'read' || access === 'write') return { permitted: { label: 'SELECT FROM app.items', sql: 'SELECT count(*) FROM app.items' }, injected };
  if (access === 'migrate') return { permitted: { label: 'CREATE TABLE (as the owner role)', sql: 'CREATE TABLE app.pgvault_verify_probe (id int)' }, injected };
  const read = grants.find((g) => g.privilege === 'SELECT');
  if (!read) return { injected };
  const from = read.table === '*' ? `${read.schema}.items` : `${read.schema}.${read.table}`;
  if (read.table === '*' && read.schema !== 'app') return { injected };
  const columns = read.columns ? read.columns.join(', ') : 'count(*)';
  return { permitted: { label: `SELECT ${columns} FROM ${from}`, sql: `SELECT ${columns} FROM ${from}${read.columns ? ' LIMIT 1' : ''}` }, injected };
}

export async function verifyRole(session: VaultSession, cfg: AppConfig, role: string, access: RoleAccess, grants: readonly TableGrant[] = []): Promise<RoleReport> {
  const creds = await session.issue(cfg.mountPath, role);
  const checks: CheckResult[] = [];
  const check = (name: string, ok: boolean, detail: string) => checks.push({ name, ok, detail });
  try {
    const client = await connectWith(cfg, creds);
    check('login with issued credentials', true, `connected as ${creds.username}`);
    try {
      // session_user: a migrator's sessions run as the owner role (current_user).
      const who = await client.query('SELECT rolvaliduntil AS v FROM pg_roles WHERE rolname = session_user');
      const validUntil: Date | null = who.rows[0]?.v ?? null;
      const expected = creds.issuedAt + creds.leaseDurationSeconds * 1000;
      const driftSeconds = validUntil ? Math.abs(validUntil.getTime() - expected) / 1000 : Infinity;
      check('VALID UNTIL matches the lease', driftSeconds < 60, validUntil ? `valid until ${validUntil.toISOString()} (${driftSeconds.toFixed(0)}s from lease expiry)` : 'no expiry set');
      await client.query('BEGIN');
      const want = access === 'write';
      // The table-by-table shapes (grants) and the migrator are shown by the containment probes below.
      const probes: [string, string, boolean][] = access === 'grants' || access === 'migrate' ? [] : [
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
      const shown = containment(access, grants);
      if (shown.permitted) {
        const r = await attempt(client, shown.permitted.sql);
        check(`permitted: ${shown.permitted.label}`, r.ok, r.detail);
      }
      const r = await attempt(client, shown.injected.sql);
      check(`injection: ${shown.injected.label}`, !r.ok, r.ok ? 'ALLOWED' : r.detail);
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
