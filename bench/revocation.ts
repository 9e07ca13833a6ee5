/**
 * Mass revocation, measured in one run against two references on the same Postgres:
 *  - Vault's own floor: the same revoke-prefix on a second mount (`bench-floor`) whose role makes
 *    users with the same creation statements and revokes them with a bare DROP ROLE. What Vault
 *    costs per lease is in that floor; our revocation statements cost the difference.
 *  - the physical limit: a plain DROP ROLE of N roles made the same way, over as many connections
 *    as Vault's connection has (maxOpenConnections).
 * The floor's Postgres role and mount are the bench's own (marked, and removed at the end).
 */
import { randomBytes } from 'node:crypto';
import { Client } from 'pg';
import type { EnvironmentConfig } from '../stacks/config';
import { postgresSsl } from '../ops/postgres/db-bootstrap';
import { readSecretFile, vaultFetch } from '../ops';
import { mapBounded, perLease, ratio } from './stats';

export const FLOOR_MOUNT = 'bench-floor';
const FLOOR_CONNECTION = 'pg';
export const FLOOR_ROLE = 'floor';
/** Bound of a call whose work grows with N: a base plus per lease. */
const callMillis = (n: number) => 120_000 + n * 100;

export interface Bench {
  readonly env: EnvironmentConfig;
  readonly admin: string;
  readonly vault: string;
  readonly role: string;
}

export function vault(b: Bench, method: string, path: string, body?: unknown, timeoutMillis = 30_000): Promise<any> {
  return vaultFetch(b.env, `${b.vault}/v1/${path}`, b.admin, method, body, timeoutMillis);
}

export async function superuser(env: EnvironmentConfig, as?: { user: string; password: string }): Promise<Client> {
  const c = new Client({
    host: env.postgres.clientHost,
    port: env.postgres.clientPort,
    database: env.postgres.database,
    user: as?.user ?? env.postgres.adminUser,
    password: as?.password ?? readSecretFile(env.postgres.adminPasswordFile, 'admin password'),
    ssl: postgresSsl(env),
    connectionTimeoutMillis: 10_000,
  });
  await c.connect();
  return c;
}

const q = (id: string) => `"${id.replace(/"/g, '""')}"`;

/** The floor's Postgres role: CREATEROLE, ADMIN on the read group (as Vault's role has), nothing else. */
export interface Floor {
  readonly user: string;
  readonly password: string;
  readonly creationStatements: string[];
  readonly connectionUrl: string;
}

/** Creates (or refreshes) the floor's role and mount; idempotent. */
export async function setUpFloor(b: Bench): Promise<Floor> {
  const env = b.env;
  const { user, password, creationStatements } = await floorRole(b);
  const conn = await vault(b, 'GET', `${env.secretsEngine.mountPath}/config/${env.secretsEngine.connectionName}`);
  await vault(b, 'POST', `sys/mounts/${FLOOR_MOUNT}`, { type: 'database' }).catch((e) => {
    if (!/already in use/.test(e.message)) throw e;
  });
  const connectionUrl: string = conn.data.connection_details.connection_url;
  await vault(b, 'POST', `${FLOOR_MOUNT}/config/${FLOOR_CONNECTION}`, {
    plugin_name: 'postgresql-database-plugin',
    connection_url: connectionUrl,
    username: user,
    password,
    allowed_roles: [FLOOR_ROLE],
    max_open_connections: env.secretsEngine.maxOpenConnections,
    max_connection_lifetime: conn.data.connection_details.max_connection_lifetime,
  });
  await vault(b, 'POST', `${FLOOR_MOUNT}/roles/${FLOOR_ROLE}`, {
    db_name: FLOOR_CONNECTION,
    creation_statements: creationStatements,
    revocation_statements: ['DROP ROLE "{{name}}";'],
    default_ttl: 3600,
    max_ttl: 86400,
  });
  return { user, password, creationStatements, connectionUrl };
}

/** The floor's Postgres role alone (CREATEROLE, ADMIN on the role's group, as Vault's role has), and the role's creation statements. */
export async function floorRole(b: Bench): Promise<{ user: string; password: string; creationStatements: string[] }> {
  const env = b.env;
  const user = `${env.database.retiredRole.replace(/_retired$/, '')}_bench_floor`;
  const mark = `${env.database.mark} bench`;
  const password = randomBytes(18).toString('base64url');
  const ours = await vault(b, 'GET', `${env.secretsEngine.mountPath}/roles/${b.role}`);
  const group = env.roles.find((r) => r.name === b.role)?.groupRole ?? env.database.groupRoles.read;
  const su = await superuser(env);
  try {
    const existing = await su.query(`SELECT pg_catalog.shobj_description(oid, 'pg_authid') AS c FROM pg_catalog.pg_roles WHERE rolname = $1`, [user]);
    if (existing.rowCount && existing.rows[0].c !== mark) throw new Error(`role ${user} exists and is not the bench's (comment "${mark}"); the bench will not alter it`);
    if (!existing.rowCount) await su.query(`CREATE ROLE ${q(user)} LOGIN CREATEROLE`);
    await su.query(`ALTER ROLE ${q(user)} PASSWORD '${password}'`);
    await su.query(`COMMENT ON ROLE ${q(user)} IS '${mark}'`);
    const v16 = Number((await su.query('SHOW server_version_num')).rows[0].server_version_num) >= 160000;
    await su.query(`GRANT ${q(group)} TO ${q(user)} WITH ADMIN OPTION${v16 ? ', INHERIT FALSE, SET FALSE' : ''}`);
    await su.query(`GRANT CONNECT ON DATABASE ${q(env.postgres.database)} TO ${q(user)}`);
  } finally {
    await su.end();
  }
  return { user, password, creationStatements: ours.data.creation_statements };
}

/** Removes the floor's mount (Vault revokes its leases) and its Postgres role. */
export async function tearDownFloor(b: Bench, floor: { user: string }): Promise<void> {
  await vault(b, 'DELETE', `sys/mounts/${FLOOR_MOUNT}`, undefined, callMillis(10_000)).catch((e) => console.error(`bench: unmount ${FLOOR_MOUNT}: ${e.message}`));
  await dropFloorRole(b, floor);
}

/** The floor's Postgres role, unless roles it made are left. */
export async function dropFloorRole(b: Bench, floor: { user: string }): Promise<void> {
  const su = await superuser(b.env);
  try {
    const left = await su.query(`SELECT count(*)::int AS n FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles r ON r.oid = m.member WHERE m.roleid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1) AND r.rolname <> $1`, [floor.user]);
    if (left.rows[0].n > 0) console.error(`bench: ${left.rows[0].n} roles made by ${floor.user} are left; its role is kept`);
    else {
      await su.query(`REVOKE CONNECT ON DATABASE ${q(b.env.postgres.database)} FROM ${q(floor.user)}`);
      await su.query(`DROP ROLE IF EXISTS ${q(floor.user)}`);
    }
  } finally {
    await su.end();
  }
}

/** Issues n leases on mount/role with the admin token, `workers` at a time; returns the user names. */
export async function issueLeases(b: Bench, mount: string, role: string, n: number, workers: number): Promise<string[]> {
  return mapBounded(n, workers, async () => (await vault(b, 'GET', `${mount}/creds/${role}`)).data.username as string);
}

/** How many of `users` still exist. */
async function remaining(su: Client, users: string[]): Promise<number> {
  return (await su.query('SELECT count(*)::int AS n FROM pg_catalog.pg_roles WHERE rolname = ANY ($1)', [users])).rows[0].n;
}

/** Polls until none of `users` exists; returns when that was first seen (ms since epoch). */
async function untilGone(su: Client, users: string[], deadline: number): Promise<number> {
  for (;;) {
    const n = await remaining(su, users);
    if (n === 0) return Date.now();
    if (Date.now() > deadline) throw new Error(`${n} of ${users.length} users still exist at the deadline`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface RevokeFigure {
  readonly label: string;
  readonly n: number;
  readonly callSeconds: number;
  readonly goneSeconds: number;
}

/** revoke-prefix of every lease under mount/creds/role; the call's time and the time until the last user is gone. */
export async function revokePrefix(b: Bench, mount: string, role: string, users: string[], sync: boolean, label: string): Promise<RevokeFigure> {
  const su = await superuser(b.env);
  try {
    const t0 = Date.now();
    const deadline = t0 + callMillis(users.length);
    await vault(b, 'PUT', `sys/leases/revoke-prefix/${mount}/creds/${role}`, { sync }, callMillis(users.length));
    const callSeconds = (Date.now() - t0) / 1000;
    const goneSeconds = ((await untilGone(su, users, deadline)) - t0) / 1000;
    const f = { label, n: users.length, callSeconds, goneSeconds };
    const { perSecond, msPerLease } = perLease(f.n, goneSeconds);
    console.log(`${label.padEnd(40)} n=${f.n}  call ${callSeconds.toFixed(2)} s  last user gone ${goneSeconds.toFixed(2)} s  ${perSecond.toFixed(0)}/s  ${msPerLease.toFixed(2)} ms/lease`);
    return f;
  } finally {
    await su.end();
  }
}

/** Plain DROP ROLE of n roles made with the floor's creation statements, over `connections` connections as the floor's role. */
export async function plainDrop(b: Bench, floor: Floor, n: number, connections: number): Promise<RevokeFigure> {
  const clients = await Promise.all(Array.from({ length: connections }, () => superuser(b.env, { user: floor.user, password: floor.password })));
  const tag = randomBytes(4).toString('hex');
  const names = Array.from({ length: n }, (_, i) => `bench-drop-${tag}-${i}`);
  const expiration = new Date(Date.now() + 3_600_000).toISOString();
  try {
    const fill = (s: string, name: string) => s.replace(/\{\{name\}\}/g, name).replace(/\{\{password\}\}/g, randomBytes(12).toString('hex')).replace(/\{\{expiration\}\}/g, expiration);
    await mapBounded(n, connections, async (i, w) => {
      const client = clients[w];
      for (const s of floor.creationStatements) await client.query(fill(s, names[i]));
    });
    const t0 = Date.now();
    await mapBounded(n, connections, async (i, w) => void (await clients[w].query(`DROP ROLE ${q(names[i])}`)));
    const seconds = (Date.now() - t0) / 1000;
    const { perSecond, msPerLease } = perLease(n, seconds);
    const label = `plain DROP ROLE (${connections} connections)`;
    console.log(`${label.padEnd(40)} n=${n}  ${seconds.toFixed(2)} s  ${perSecond.toFixed(0)}/s  ${msPerLease.toFixed(2)} ms/role`);
    return { label, n, callSeconds: seconds, goneSeconds: seconds };
  } finally {
    const su = await superuser(b.env);
    try {
      for (const name of names) await su.query(`DROP ROLE IF EXISTS ${q(name)}`);
    } finally {
      await su.end();
    }
    await Promise.all(clients.map((client) => client.end()));
  }
}

/**
 * The phase: for each N, with sync=true and sync=false, ours and the floor in alternating order,
 * then the plain DROP ROLE; prints the ratios. Our role's and the floor's leases are issued with
 * the admin token, `workers` at a time, just before each revoke-prefix.
 */
export async function massRevocation(b: Bench, sizes: number[], workers: number): Promise<void> {
  const env = b.env;
  const mount = env.secretsEngine.mountPath;
  const connections = env.secretsEngine.maxOpenConnections;
  console.log(`\nmass revocation: role ${b.role}, N = ${sizes.join(', ')}, leases issued ${workers} at a time, Vault's connection has ${connections} connections; load ${loadavg()}`);
  await vault(b, 'PUT', `sys/leases/revoke-prefix/${mount}/creds/${b.role}`, { sync: true }, callMillis(10_000));
  const floor = await setUpFloor(b);
  try {
    for (const n of sizes) {
      const figures: Record<string, RevokeFigure> = {};
      for (const sync of [true, false]) {
        const order = sync ? ['ours', 'floor'] : ['floor', 'ours'];
        for (const which of order) {
          const [m, r] = which === 'ours' ? [mount, b.role] : [FLOOR_MOUNT, FLOOR_ROLE];
          const users = await issueLeases(b, m, r, n, workers);
          const label = `revoke-prefix ${which === 'ours' ? `${mount}/${b.role}` : 'floor (DROP ROLE)'} sync=${sync}`;
          figures[`${which} ${sync}`] = await revokePrefix(b, m, r, users, sync, label);
        }
      }
      const plain = await plainDrop(b, floor, n, connections);
      for (const sync of [true, false]) {
        const ours = figures[`ours ${sync}`];
        const fl = figures[`floor ${sync}`];
        console.log(
          `N=${n} sync=${sync}: ours/floor ${ratio(ours.goneSeconds, fl.goneSeconds)}, ours/plain DROP ROLE ${ratio(ours.goneSeconds, plain.goneSeconds)}, ` +
            `floor/plain ${ratio(fl.goneSeconds, plain.goneSeconds)}; extra over the floor ${(((ours.goneSeconds - fl.goneSeconds) * 1000) / n).toFixed(2)} ms/lease`,
        );
      }
      console.log(`load ${loadavg()}`);
    }
  } finally {
    await tearDownFloor(b, floor);
  }
}

export function loadavg(): string {
  try {
    return require('node:fs').readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  } catch {
    return 'n/a';
  }
}
