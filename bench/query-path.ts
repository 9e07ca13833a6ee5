/**
 * The query path: the same workload through a plain pg.Pool on static credentials (a role the
 * bench makes, in the same group), the runtime's pg.Pool face, RotatingPool.query, and Kysely on
 * the face; in alternating rounds in one run, 8 concurrent clients, equal pool sizes. Then
 * rotation under load: queries per second in the second around each forced rotation against
 * steady state, and every failure counted.
 */
import { randomBytes } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Kysely, PostgresDialect, sql } from 'kysely';
import { Pool } from 'pg';
import type { CredentialRuntime } from '@pgvault/runtime';
import type { EnvironmentConfig } from '../stacks/config';
import { postgresSsl } from '../ops/postgres/db-bootstrap';
import { loadavg, superuser } from './revocation';
import { median, percentile, ratesAroundEvents, ratio } from './stats';

const q = (id: string) => `"${id.replace(/"/g, '""')}"`;

interface Path {
  readonly name: string;
  readonly select1: () => Promise<unknown>;
  readonly row: (id: number) => Promise<unknown>;
}

interface RoundFigure {
  readonly queries: number;
  readonly failed: number;
  readonly seconds: number;
  readonly latencies: number[];
  /** This process's CPU time (user + system) over the round, in µs. */
  readonly cpuMicros: number;
}

/** A full garbage collection, so that one path's garbage is not collected on the next one's time. */
const collectGarbage: () => void = (() => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as unknown;
  return typeof gc === 'function' ? (gc as () => void) : () => undefined;
})();

/** `clients` loops calling `fn` for `seconds`; per-call latencies in ms, and completion times. */
export async function closedLoop(clients: number, seconds: number, fn: () => Promise<unknown>, completions?: number[]): Promise<RoundFigure> {
  const latencies: number[] = [];
  let failed = 0;
  const end = Date.now() + seconds * 1000;
  const t0 = process.hrtime.bigint();
  const cpu0 = process.cpuUsage();
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (Date.now() < end) {
        const s = process.hrtime.bigint();
        try {
          await fn();
          latencies.push(Number(process.hrtime.bigint() - s) / 1e6);
          completions?.push(Date.now());
        } catch {
          failed++;
        }
      }
    }),
  );
  const cpu = process.cpuUsage(cpu0);
  return { queries: latencies.length, failed, seconds: Number(process.hrtime.bigint() - t0) / 1e9, latencies, cpuMicros: cpu.user + cpu.system };
}

/** The static role of the plain pg.Pool: a login in the role's group, the bench's own, dropped at the end. */
async function staticRole(env: EnvironmentConfig, group: string): Promise<{ user: string; password: string; drop: () => Promise<void> }> {
  const user = `${env.database.retiredRole.replace(/_retired$/, '')}_bench_static`;
  const mark = `${env.database.mark} bench`;
  const password = randomBytes(18).toString('base64url');
  const su = await superuser(env);
  try {
    const existing = await su.query(`SELECT pg_catalog.shobj_description(oid, 'pg_authid') AS c FROM pg_catalog.pg_roles WHERE rolname = $1`, [user]);
    if (existing.rowCount && existing.rows[0].c !== mark) throw new Error(`role ${user} exists and is not the bench's (comment "${mark}"); the bench will not alter it`);
    if (!existing.rowCount) await su.query(`CREATE ROLE ${q(user)} LOGIN IN ROLE ${q(group)}`);
    await su.query(`ALTER ROLE ${q(user)} PASSWORD '${password}'`);
    await su.query(`COMMENT ON ROLE ${q(user)} IS '${mark}'`);
  } finally {
    await su.end();
  }
  return {
    user,
    password,
    drop: async () => {
      const c = await superuser(env);
      try {
        await c.query(`SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = $1`, [user]);
        await c.query(`DROP ROLE IF EXISTS ${q(user)}`);
      } finally {
        await c.end();
      }
    },
  };
}

/** An id of app.items to read (one row is written through the writer's pool when there is none). */
async function rowId(rt: CredentialRuntime, env: EnvironmentConfig, writer: string | undefined): Promise<number> {
  const table = `${q(env.database.schema)}.items`;
  const su = await superuser(env);
  try {
    const r = await su.query(`SELECT min(id)::int AS id FROM ${table}`);
    if (r.rows[0].id !== null) return r.rows[0].id;
  } finally {
    await su.end();
  }
  if (!writer) throw new Error(`${table} is empty and no write role is held to add a row`);
  return (await rt.pool(writer).query(`INSERT INTO ${table} (name) VALUES ('bench') RETURNING id`)).rows[0].id;
}

export async function queryPath(rt: CredentialRuntime, env: EnvironmentConfig, role: string, opts: { clients: number; poolSize: number; seconds: number; rounds: number; writer?: string }): Promise<void> {
  const table = `${q(env.database.schema)}.items`;
  const group = env.roles.find((r) => r.name === role)?.groupRole ?? env.database.groupRoles.read;
  const id = await rowId(rt, env, opts.writer);
  const stat = await staticRole(env, group);
  const plain = new Pool({
    host: env.postgres.clientHost,
    port: env.postgres.clientPort,
    database: env.postgres.database,
    user: stat.user,
    password: stat.password,
    ssl: postgresSsl(env),
    max: opts.poolSize,
  });
  const face = rt.pgPool(role);
  const pool = rt.pool(role);
  const db = new Kysely<any>({ dialect: new PostgresDialect({ pool: face }) });
  // Kysely's own cost (building and compiling each query) is the same on either pool: this shows it.
  const plainDb = new Kysely<any>({ dialect: new PostgresDialect({ pool: plain }) });
  const items = `${env.database.schema}.items`;
  const rowSql = `SELECT id, name FROM ${table} WHERE id = $1`;
  const paths: Path[] = [
    { name: 'plain pg.Pool (static)', select1: () => plain.query('SELECT 1'), row: (i) => plain.query(rowSql, [i]) },
    { name: 'rt.pgPool(role)', select1: () => face.query('SELECT 1'), row: (i) => face.query(rowSql, [i]) },
    { name: 'rt.pool(role).query', select1: () => pool.query('SELECT 1'), row: (i) => pool.query(rowSql, [i]) },
    { name: 'Kysely on plain pg.Pool', select1: () => sql`SELECT 1`.execute(plainDb), row: (i) => plainDb.selectFrom(items).select(['id', 'name']).where('id', '=', i).execute() },
    { name: 'Kysely on the face', select1: () => sql`SELECT 1`.execute(db), row: (i) => db.selectFrom(items).select(['id', 'name']).where('id', '=', i).execute() },
  ];
  try {
    console.log(
      `\nquery path: role ${role}, ${opts.clients} clients, pools of ${opts.poolSize}, ${opts.rounds} alternating rounds of ${opts.seconds} s per path and workload; load ${loadavg()}`,
    );
    for (const p of paths) await closedLoop(opts.clients, 0.5, p.select1); // warm-up: every pool full
    for (const [workload, call] of [['SELECT 1', (p: Path) => p.select1()], ['indexed row', (p: Path) => p.row(id)]] as const) {
      const results = new Map<string, { qps: number[]; cpu: number[]; latencies: number[]; failed: number }>(paths.map((p) => [p.name, { qps: [], cpu: [], latencies: [], failed: 0 }]));
      for (let r = 0; r < opts.rounds; r++) {
        // A different order each round, so that no path always runs first; backwards every other
        // round, so that no path always runs after the same one (whose garbage it would collect).
        const order = paths.map((_, i) => paths[(i + r) % paths.length]);
        if (r % 2 === 1) order.reverse();
        for (const p of order) {
          // Each path starts with an empty heap: the previous path's garbage is not collected on its time.
          collectGarbage();
          const f = await closedLoop(opts.clients, opts.seconds, () => call(p));
          const acc = results.get(p.name)!;
          acc.qps.push(f.queries / f.seconds);
          acc.cpu.push(f.queries ? f.cpuMicros / f.queries : NaN);
          for (const l of f.latencies) acc.latencies.push(l);
          acc.failed += f.failed;
        }
      }
      const base = results.get(paths[0].name)!;
      const baseP50 = percentile([...base.latencies].sort((a, b) => a - b), 50);
      // The load of a shared machine drifts within a run: each round's ratio to plain pg.Pool in
      // that same round, then their median, is steadier than a ratio of medians.
      const roundRatios = (name: string, to: string) => results.get(name)!.qps.map((x, r) => x / results.get(to)!.qps[r]);
      const roundRatio = (name: string, to: string) => median(roundRatios(name, to));
      // How much the rounds scatter: a gap smaller than this is the machine, not the path.
      const spread = (name: string, to: string) => {
        const sorted = roundRatios(name, to).sort((a, b) => a - b);
        return `middle half ${percentile(sorted, 25).toFixed(3)}-${percentile(sorted, 75).toFixed(3)}`;
      };
      for (const p of paths) {
        const acc = results.get(p.name)!;
        const sorted = [...acc.latencies].sort((a, b) => a - b);
        const p50 = percentile(sorted, 50);
        const qps = median(acc.qps);
        console.log(
          `${workload.padEnd(12)} ${p.name.padEnd(24)} ${qps.toFixed(0).padStart(6)} q/s (median of ${acc.qps.length})  p50 ${p50.toFixed(3)} ms  p99 ${percentile(sorted, 99).toFixed(3)} ms` +
            (p === paths[0] ? '' : `  ->  ${roundRatio(p.name, paths[0].name).toFixed(3)}x of plain (median of per-round ratios; ${spread(p.name, paths[0].name)}), p50 ${p50 - baseP50 >= 0 ? '+' : ''}${(p50 - baseP50).toFixed(3)} ms`) +
            (p.name === 'Kysely on the face' ? ` (${roundRatio(p.name, 'Kysely on plain pg.Pool').toFixed(3)}x of Kysely on plain)` : '') +
            // The runtime's own cost, without the machine's noise: this process's CPU per query.
            `; cpu ${median(acc.cpu).toFixed(1)} µs/query` +
            (p === paths[0] ? '' : ` (${(median(acc.cpu) - median(base.cpu) >= 0 ? '+' : '')}${(median(acc.cpu) - median(base.cpu)).toFixed(1)})`) +
            (acc.failed ? `  FAILED ${acc.failed}` : ''),
        );
      }
    }
    console.log(`load ${loadavg()}`);
  } finally {
    await plain.end();
    await stat.drop();
  }
}

/** Queries through the face while rotations are forced every `everySeconds`; qps around each against steady state. */
export async function rotationUnderLoad(rt: CredentialRuntime, role: string, opts: { clients: number; seconds: number; everySeconds: number }): Promise<void> {
  const face = rt.pgPool(role);
  const lease = rt.lease(role);
  const completions: number[] = [];
  const events: number[] = [];
  const rotationsBefore = rt.pool(role).rotations;
  const from = Date.now();
  const rotating: Promise<unknown>[] = [];
  const timer = setInterval(() => {
    events.push(Date.now());
    rotating.push(lease.rotateNow('bench', { force: true }).catch((e) => console.error(`bench: rotation failed: ${e.message}`)));
  }, opts.everySeconds * 1000);
  let f: RoundFigure;
  try {
    f = await closedLoop(opts.clients, opts.seconds, () => face.query('SELECT 1'), completions);
  } finally {
    clearInterval(timer);
    await Promise.all(rotating);
  }
  const to = Date.now();
  const { around, steady } = ratesAroundEvents(completions, events, from, to);
  const rotations = rt.pool(role).rotations - rotationsBefore;
  console.log(
    `\nrotation under load: ${opts.clients} clients on rt.pgPool(${role}), ${events.length} forced rotations (${rotations} done) in ${opts.seconds} s; load ${loadavg()}\n` +
      `  steady ${steady.toFixed(0)} q/s; in the second around each rotation: ${around.map((x) => x.toFixed(0)).join(', ')} q/s ` +
      `(worst ${ratio(Math.min(...around), steady)}, median ${ratio(median(around), steady)} of steady); ${f.queries} queries, ${f.failed} failed`,
  );
}
