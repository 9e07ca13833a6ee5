/**
 * The SQL that Vault runs for each dynamic user, and the reaper's. Pure functions, so they can
 * be unit-tested and read in one place.
 *
 * Every statement quotes "{{name}}" as an identifier and '{{password}}' /
 * '{{expiration}}' as literals. Vault's generated names and passwords never
 * contain quotes, and Vault runs these statements as its dedicated role.
 */

/** Postgres identifiers and bounds that the statements reference; validated by the config schema. */
export interface RoleStatementsProps {
  /** The NOLOGIN group role whose privileges the dynamic user inherits. */
  readonly groupRole: string;
  /**
   * The role that takes over anything a write user owns when it is revoked. It must hold
   * no privilege: a SECURITY DEFINER function or a view runs with its owner's rights.
   */
  readonly retiredRole: string;
  /**
   * The environment's mark, `pgvault:<env>`: each user is commented `<mark> user …` (its bounds,
   * which the reaper reads: a user cannot comment on itself), and a user whose role cannot be
   * dropped at revocation is left commented `<mark> disarmed <access>`.
   */
  readonly mark: string;
  /**
   * read: at revocation everything the user owns (large objects included) is dropped.
   * write: it is handed to the retired role (the app's tables a writer made are kept).
   */
  readonly access: 'read' | 'write';
  /**
   * `access: migrate`: the owner role the user may SET ROLE to (and starts its sessions as), without
   * inheriting it, so that whatever it creates is owned by that role, never by the short-lived user.
   * @default none: the user only inherits its group role
   */
  readonly setRole?: string;
  /** CONNECTION LIMIT of each login role. @default 20 (the runtime's pool of 10, a draining pool's probes and a psql) */
  readonly connectionLimit?: number;
  /** A statement running longer is ended by the reaper; also the role's statement_timeout default. @default 300 */
  readonly statementTimeoutSeconds?: number;
  /** A transaction idle longer is ended by the reaper; also the role's idle_in_transaction_session_timeout default. @default 60 */
  readonly idleInTransactionTimeoutSeconds?: number;
}

export const DEFAULT_CONNECTION_LIMIT = 20;
export const DEFAULT_STATEMENT_TIMEOUT_SECONDS = 300;
export const DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS = 60;

const IDENT = /^[a-z_][a-z0-9_]{0,62}$/;
const MARK = /^pgvault:[a-z][a-z0-9-]{0,31}$/;

function ident(kind: string, value: string): string {
  if (!IDENT.test(value)) {
    throw new Error(`${kind} "${value}" is not a safe Postgres identifier; expected ${IDENT}`);
  }
  return value;
}

function mark(value: string): string {
  if (!MARK.test(value)) throw new Error(`mark "${value}" is not an environment's mark; expected ${MARK}`);
  return value;
}

function bound(kind: string, value: number | undefined, fallback: number, max: number): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < 1 || v > max) throw new Error(`${kind} is ${v}; expected an integer from 1 to ${max}`);
  return v;
}

/**
 * The comment on a disarmed role: its revocation could not drop it (an object elsewhere holds it,
 * or a lock stopped the hand-over). It records the access the role had, which its lost membership
 * no longer shows: the superuser's clean-up hands a writer's objects over rather than dropping them.
 * Without an access, the mark that every disarmed comment starts with.
 */
export function disarmedComment(envMark: string, access?: 'read' | 'write'): string {
  return `${mark(envMark)} disarmed${access ? ` ${access}` : ''}`;
}

/** SQL: whether the comment `column` is one of the environment's disarmed comments (with or without the access). */
export function isDisarmedSql(column: string, envMark: string): string {
  const d = disarmedComment(envMark);
  return `(${column} = '${d}' OR pg_catalog.starts_with(${column}, '${d} '))`;
}

/** The comment each dynamic user is created with: who made it and the bounds the reaper enforces. */
export function userComment(props: RoleStatementsProps): string {
  const statementMillis = bound('statementTimeoutSeconds', props.statementTimeoutSeconds, DEFAULT_STATEMENT_TIMEOUT_SECONDS, 86_400) * 1000;
  const idleMillis = bound('idleInTransactionTimeoutSeconds', props.idleInTransactionTimeoutSeconds, DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS, 86_400) * 1000;
  return `${mark(props.mark)} user statement-ms=${statementMillis} idle-ms=${idleMillis}`;
}

/**
 * The user's membership of its group role: inherited, never SET (PostgreSQL 16+). A user that could
 * SET ROLE to the group would create objects (tables, SECURITY DEFINER functions, large objects)
 * owned by the group, which its revocation neither drops nor hands over. Before 16 every
 * membership allows SET ROLE: the plain GRANT there is what `CREATE ROLE ... IN ROLE` gives. The
 * server decides when Vault runs it, since the environment file does not say which version it is.
 * Vault's role holds the group WITH ADMIN OPTION, which lets it grant any option.
 */
export function membershipStatement(group: string): string {
  const g = ident('groupRole', group);
  return (
    `DO $$BEGIN IF pg_catalog.current_setting('server_version_num')::int >= 160000 THEN ` +
    `EXECUTE format('GRANT %I TO %I WITH INHERIT TRUE, SET FALSE', '${g}', '{{name}}'); ` +
    `ELSE EXECUTE format('GRANT %I TO %I', '${g}', '{{name}}'); END IF; END$$;`
  );
}

/**
 * A login role that expires with the lease, inherits the group's privileges (without SET ROLE to
 * it), may hold a bounded number of connections, and starts its sessions with statement and
 * idle-in-transaction timeouts. The user can SET those away; the reaper enforces the same bounds
 * from the comment.
 */
export function creationStatements(props: RoleStatementsProps): string[] {
  const group = ident('groupRole', props.groupRole);
  const limit = bound('connectionLimit', props.connectionLimit, DEFAULT_CONNECTION_LIMIT, 10_000);
  const statement = bound('statementTimeoutSeconds', props.statementTimeoutSeconds, DEFAULT_STATEMENT_TIMEOUT_SECONDS, 86_400);
  const idle = bound('idleInTransactionTimeoutSeconds', props.idleInTransactionTimeoutSeconds, DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS, 86_400);
  // A migrator holds the owner role without inheriting it (PostgreSQL 16+): it acts as the owner
  // only through the session's role, so its tables are the owner's and revocation reassigns nothing.
  const owner = props.setRole === undefined ? undefined : ident('setRole', props.setRole);
  return [
    `CREATE ROLE "{{name}}" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT CONNECTION LIMIT ${limit} PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`,
    membershipStatement(group),
    ...(owner ? [`GRANT ${owner} TO "{{name}}" WITH INHERIT FALSE, SET TRUE;`, `ALTER ROLE "{{name}}" SET role = '${owner}';`] : []),
    `ALTER ROLE "{{name}}" SET statement_timeout = '${statement}s';`,
    `ALTER ROLE "{{name}}" SET idle_in_transaction_session_timeout = '${idle}s';`,
    `COMMENT ON ROLE "{{name}}" IS '${userComment(props)}';`,
  ];
}

/** Extends the role's validity when Vault renews the lease. */
export function renewStatements(): string[] {
  return [`ALTER ROLE "{{name}}" VALID UNTIL '{{expiration}}';`];
}

/** Undoes a half-finished creation. */
export function rollbackStatements(): string[] {
  return [`DROP ROLE IF EXISTS "{{name}}";`];
}

/**
 * Revocation, in the one transaction Vault runs it in. First the fast path, which is most
 * revocations of a mass revocation:
 *  0. when the user has no session (anywhere), DROP ROLE at once, in a block of its own under a
 *     short lock_timeout. It succeeds only when nothing in any database holds the role (an owned
 *     object, a large object, a privilege, a default privilege: pg_shdepend covers them all), so
 *     the role is simply gone, with its memberships. That is stronger than disarmed, and atomic:
 *     when the drop fails, its block rolls back and nothing has changed. It costs one
 *     role-membership check, as a bare DROP ROLE does; each later step below costs another, and
 *     with thousands of live users (all of which Vault's role administers since PostgreSQL 16)
 *     each check after a membership change walks all of them.
 * Otherwise (a session, or anything the role holds) the full path, which always disarms:
 *  1. disarm: take every group membership away (before the user is granted to Vault's role, so
 *     that role never inherits a group's privileges through the user), NOLOGIN, no password, an
 *     expired VALID UNTIL, the disarmed mark with the access (`<mark> disarmed write`);
 *  2. with a 2 s lock_timeout from here on (a wait past Vault's request timeout would roll the
 *     disarm back), in a block of its own: grant the user to Vault's role (terminating its sessions
 *     and taking over its objects need the user's privileges), terminate its sessions, then wait
 *     (up to 2 s in all) for those to exit: a dying session's temporary tables would otherwise stop
 *     REASSIGN OWNED ("cannot alter temporary tables of other sessions"). Skipped, with a warning,
 *     when a membership survived the revoke (another grantor's, which PostgreSQL 16+ only warns
 *     about). A login that lands after (NOLOGIN commits with the transaction) is the reaper's;
 *  3. only when 2 succeeded, clean up in this database: take EXECUTE on its routines away from
 *     PUBLIC (each on its own); a write user's objects go to the retired role (which holds no
 *     privilege; Vault's role holds it only for that statement, on PostgreSQL 16+); a read user's
 *     are dropped, large objects included; DROP OWNED takes what is left
 *     (privileges, default privileges). In a block of its own: whatever fails here (a lock held past
 *     the timeout), the disarm above commits;
 *  4. DROP ROLE in a block of its own: when an object (here, or in another database) holds the
 *     role, the drop fails, and the role stays disarmed and marked, for the bootstrap or the
 *     teardown (as the superuser, the only one that reaches other databases) to clean up: a
 *     writer's objects are handed over there too, never dropped. Vault's role gives up its
 *     membership of the role (granted in 2). The revocation succeeds;
 *  5. other disarmed roles of the environment are tried again (a few): one whose blocking object
 *     is gone is dropped. Only on the full path: on the fast one it would scan every role's
 *     comment, and try drops that fail, for each of thousands of revocations.
 * A role that is already gone is not an error. A login that lands between the session check and
 * the commit is the reaper's, as on the full path.
 *
 * The DO block is dollar-quoted, so Vault runs it whole rather than splitting it on ';'.
 */
export function revocationStatements(props: RoleStatementsProps): string[] {
  const retired = ident('retiredRole', props.retiredRole);
  const disarmed = disarmedComment(props.mark, props.access);
  const handOver = props.access === 'write'
    ? [
        // Each on its own: a routine in a schema Vault's role cannot use must not stop the REASSIGN.
        `    FOR f IN SELECT p.oid FROM pg_catalog.pg_proc p WHERE p.proowner = u LOOP`,
        '      BEGIN',
        `        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', f);`,
        '      EXCEPTION WHEN OTHERS THEN',
        `        RAISE WARNING 'pgvault: EXECUTE on % kept for PUBLIC: %', f, SQLERRM;`,
        '      END;',
        '    END LOOP;',
        // Vault's role holds the retired role without its privileges (PostgreSQL 16+), so that it
        // cannot use the tables handed over before; REASSIGN needs them (and SET) on the target:
        // lent to itself for this statement, taken back in the same block (rolled back with it).
        // Only when the user owns something here: the loan writes the one catalog row that every
        // concurrent revocation would otherwise wait on.
        `    IF EXISTS (SELECT 1 FROM pg_catalog.pg_shdepend s WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass AND s.refobjid = u AND s.deptype = 'o'`,
        `               AND s.dbid IN (0, (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()))) THEN`,
        `      IF NOT pg_catalog.pg_has_role(current_user, '${retired}', 'USAGE') THEN`,
        `        EXECUTE format('GRANT %I TO %I WITH INHERIT TRUE, SET TRUE', '${retired}', current_user);`,
        '        lent := true;',
        '      END IF;',
        `      EXECUTE format('REASSIGN OWNED BY %I TO ${retired}', '{{name}}');`,
        `      IF lent THEN EXECUTE format('REVOKE %I FROM %I', '${retired}', current_user); END IF;`,
        '    END IF;',
      ]
    : [];
  return [
    [
      'DO $$',
      // to_regrole is one cache lookup; a scan of pg_roles costs more once thousands of users exist.
      `DECLARE u oid := ${lookUp};`,
      'BEGIN',
      ...fastDrop,
      '  IF u IS NOT NULL THEN',
      // A block is compiled whole before it runs; a nested DO only when it runs: the fast path
      // does not pay for compiling the full one.
      '    DO $full$',
      `    DECLARE u oid := ${lookUp}; g name; f regprocedure; d name; i int; p int[]; granted boolean := false; lent boolean := false;`,
      '    BEGIN',
      ...fullPath(props.mark, disarmed, handOver).map((l) => `    ${l}`),
      '    END',
      '    $full$;',
      '  END IF;',
      'END',
      '$$;',
    ].join('\n'),
  ];
}

const lookUp = `pg_catalog.to_regrole(pg_catalog.quote_ident('{{name}}'))`;

/**
 * Step 0 of the revocation: the whole of it when the user has no session and nothing holds it.
 * Sets `u` to NULL when the role is gone.
 */
const fastDrop = [
  '  IF u IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_get_activity(NULL) a WHERE a.usesysid = u) THEN',
  '    BEGIN',
  // A wait here delays the disarm below: short, and rolled back with the block.
  `      PERFORM pg_catalog.set_config('lock_timeout', '200ms', true);`,
  `      EXECUTE format('DROP ROLE %I', '{{name}}');`,
  '      u := NULL;',
  '    EXCEPTION WHEN OTHERS THEN NULL;',
  '    END;',
  '  END IF;',
];

/** Steps 1 to 5 of the revocation, for a role `u` that has a session or that something holds. */
function fullPath(envMark: string, disarmed: string, handOver: string[]): string[] {
  return [
    `  FOR g IN SELECT r.rolname FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles r ON r.oid = m.roleid WHERE m.member = u LOOP`,
    '    BEGIN',
    `      EXECUTE format('REVOKE %I FROM %I', g, '{{name}}');`,
    '    EXCEPTION WHEN insufficient_privilege THEN NULL;',
    '    END;',
    '  END LOOP;',
    `  EXECUTE format('ALTER ROLE %I NOLOGIN PASSWORD NULL VALID UNTIL %L', '{{name}}', '1970-01-01 00:00:00+00');`,
    `  EXECUTE format('COMMENT ON ROLE %I IS %L', '{{name}}', '${disarmed}');`,
    // Nothing below may outlast Vault's request: its timeout would roll the disarm back.
    `  PERFORM pg_catalog.set_config('lock_timeout', '2s', true);`,
    '  IF EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m WHERE m.member = u) THEN',
    // A revoke that only warned (another grantor, PostgreSQL 16+): granting the user to Vault's
    // role would let that role inherit the group through it.
    `    RAISE WARNING 'pgvault: role % still holds a membership; it is not granted to %, its objects are left for the superuser', '{{name}}', current_user;`,
    '  ELSE',
    '    BEGIN',
    `      EXECUTE format('GRANT %I TO %I', '{{name}}', current_user);`,
    `      SELECT pg_catalog.array_agg(pid) INTO p FROM pg_catalog.pg_stat_activity WHERE usesysid = u AND pid <> pg_catalog.pg_backend_pid();`,
    '      PERFORM pg_catalog.pg_terminate_backend(x) FROM pg_catalog.unnest(p) x;',
    '      FOR i IN 1..200 LOOP',
    '        PERFORM pg_catalog.pg_stat_clear_snapshot();',
    '        EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = ANY (p));',
    '        PERFORM pg_catalog.pg_sleep(0.01);',
    '      END LOOP;',
    '      granted := true;',
    '    EXCEPTION WHEN OTHERS THEN',
    `      RAISE WARNING 'pgvault: role % not taken over (the reaper ends its sessions): %', '{{name}}', SQLERRM;`,
    '    END;',
    '  END IF;',
    '  IF granted THEN',
    '    BEGIN',
    ...handOver.map((l) => `  ${l}`),
    `      EXECUTE format('DROP OWNED BY %I', '{{name}}');`,
    '    EXCEPTION WHEN OTHERS THEN',
    `      RAISE WARNING 'pgvault: objects of role % left: %', '{{name}}', SQLERRM;`,
    '    END;',
    '  END IF;',
    '  BEGIN',
    `    EXECUTE format('DROP ROLE %I', '{{name}}');`,
    '  EXCEPTION WHEN OTHERS THEN',
    `    RAISE WARNING 'pgvault: role % left disarmed: %', '{{name}}', SQLERRM;`,
    // Vault's role must not stay a member of a role it could not drop (it would keep the owner's rights on what that role still owns).
    '    IF granted THEN',
    '      BEGIN',
    `        EXECUTE format('REVOKE %I FROM %I', '{{name}}', current_user);`,
    '      EXCEPTION WHEN OTHERS THEN',
    `        RAISE WARNING 'pgvault: % is still a member of role %: %', current_user, '{{name}}', SQLERRM;`,
    '      END;',
    '    END IF;',
    '  END;',
    `  FOR d IN SELECT r.rolname FROM pg_catalog.pg_roles r JOIN pg_catalog.pg_shdescription s ON s.objoid = r.oid AND s.classoid = 'pg_catalog.pg_authid'::pg_catalog.regclass`,
    `           WHERE ${isDisarmedSql('s.description', envMark)} AND r.rolname <> '{{name}}' AND NOT r.rolcanlogin LIMIT 3 LOOP`,
    '    BEGIN',
    `      EXECUTE format('DROP ROLE %I', d);`,
    '    EXCEPTION WHEN OTHERS THEN NULL;',
    '    END;',
    '  END LOOP;',
  ];
}

/**
 * One pass of the reaper, as the superuser: terminates client sessions of roles that no longer
 * exist (a login that raced its revocation), of roles the environment disarmed, and of the
 * environment's dynamic users past their statement or idle-in-transaction bound (read from the
 * role's comment, which the user cannot change). Returns the number of sessions ended. Short,
 * and holds no snapshot between passes, so on a hot standby it never holds up replay.
 */
export function reaperStatement(envMark: string): string {
  const m = mark(envMark);
  const ms = (key: string) => `pg_catalog.make_interval(secs => pg_catalog.substring(s.description, '${key}=([0-9]+)')::float8 / 1000)`;
  return (
    'SELECT pg_catalog.count(pg_catalog.pg_terminate_backend(a.pid)) FROM pg_catalog.pg_stat_activity a' +
    ' LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.usesysid' +
    ` LEFT JOIN pg_catalog.pg_shdescription s ON s.objoid = a.usesysid AND s.classoid = 'pg_catalog.pg_authid'::pg_catalog.regclass` +
    " WHERE a.backend_type = 'client backend' AND a.usesysid IS NOT NULL AND a.pid <> pg_catalog.pg_backend_pid() AND (" +
    'r.oid IS NULL' +
    ` OR ${isDisarmedSql('s.description', m)}` +
    ` OR (pg_catalog.starts_with(s.description, '${m} user ') AND (` +
    `(a.state = 'active' AND a.query_start < pg_catalog.clock_timestamp() - ${ms('statement-ms')})` +
    ` OR (a.state IN ('idle in transaction', 'idle in transaction (aborted)') AND a.state_change < pg_catalog.clock_timestamp() - ${ms('idle-ms')}))));`
  );
}

/** The connection URL template Vault fills with its own username and password. */
export function connectionUrl(host: string, port: number | string, database: string, sslmode: string, sslrootcert?: string): string {
  // sslrootcert is a path where Vault runs: the CA that verify-ca/verify-full check Postgres with.
  const ca = sslrootcert ? `&sslrootcert=${encodeURIComponent(sslrootcert).replace(/%2F/g, '/')}` : '';
  return `postgresql://{{username}}:{{password}}@${host}:${port}/${ident('database', database)}?sslmode=${sslmode}${ca}`;
}

// --- Roles shaped by `grants` (and the `access` shorthands): the privileges each group role holds ---

/** The table privileges a `grants` declaration may name. */
export const TABLE_PRIVILEGES = ['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER'] as const;
export type TablePrivilege = (typeof TABLE_PRIVILEGES)[number];
/** The privileges a role with `target: replica` may hold: a replica is read-only. */
export const REPLICA_PRIVILEGES: readonly TablePrivilege[] = ['SELECT'];

/** One declared privilege: on a table, or on every table of a schema (`table: '*'`), or on some of its columns. */
export interface TableGrant {
  readonly schema: string;
  /** A table name, or `*`: every table of the schema, present (owned by the owner role) and future (default privileges). */
  readonly table: string;
  readonly privilege: TablePrivilege;
  /** Column privileges on these columns only. @default the whole table */
  readonly columns?: readonly string[];
}

/** What the `access` shorthands mean, as grants on the environment's schema. */
export function accessGrants(access: 'read' | 'write', schema: string): TableGrant[] {
  const privileges: TablePrivilege[] = access === 'read' ? ['SELECT'] : ['SELECT', 'INSERT', 'UPDATE', 'DELETE'];
  return privileges.map((privilege) => ({ schema, table: '*', privilege }));
}

/** A group role's declared privileges, as the bootstrap converges them. */
export interface GroupDeclaration {
  /** The project's NOLOGIN group role. */
  readonly group: string;
  readonly grants: readonly TableGrant[];
  /** Schemas where the group may create objects (`access: write` on the app schema). @default none */
  readonly createIn?: readonly string[];
}

/** What Postgres holds, read from its catalog by the bootstrap. */
export interface CatalogView {
  /** The environment's owner role: `schema.*` covers its tables and its future ones. */
  readonly ownerRole: string;
  /** Schemas the project created (marked): there `schema.*` means the owner role's tables only. */
  readonly ourSchemas: readonly string[];
  /** Tables (and views) of the schemas that the declarations name. */
  readonly tables: readonly { readonly schema: string; readonly table: string; readonly owner: string }[];
  /** The group's privileges on tables, anywhere in the database (`column` set: a column privilege). */
  readonly held: readonly HeldPrivilege[];
  /** The group's privileges on schemas. */
  readonly heldSchemas: readonly { readonly schema: string; readonly privilege: 'USAGE' | 'CREATE' }[];
  /** The owner role's default privileges on tables for the group (`schema` null: the global form). */
  readonly heldDefaults: readonly { readonly schema: string | null; readonly privilege: string }[];
}

export interface HeldPrivilege {
  readonly schema: string;
  readonly table: string;
  readonly column?: string;
  readonly privilege: string;
  readonly grantable: boolean;
  /** Who granted it: a grant someone else made (with grant option) is revoked as that role. */
  readonly grantor: string;
  readonly owner: string;
}

/** The SQL that brings a group role's privileges to what is declared: revocations first (they run first), then grants. */
export interface GrantPlan {
  readonly revoke: string[];
  readonly grant: string[];
  /** Named tables that do not exist: reported, not failed (the migration that makes them has not run yet). */
  readonly missing: string[];
}

/** A quoted identifier: names read from the catalog may hold anything. */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

const qualified = (schema: string, table: string) => `${quoteIdent(schema)}.${quoteIdent(table)}`;

/**
 * The pure heart of the role model: what to revoke from and grant to one of the project's group
 * roles so that it holds exactly what the environment file declares, on the tables, schemas and
 * default privileges of the owner role. Only this group's privileges are named. A revoked
 * table-level privilege takes the column privileges of its kind with it (Postgres does so), so
 * declared column privileges of that kind are granted again.
 */
export function grantPlan(decl: GroupDeclaration, catalog: CatalogView): GrantPlan {
  const g = quoteIdent(ident('group', decl.group));
  const owner = quoteIdent(catalog.ownerRole);
  const key = (schema: string, table: string, privilege: string, column?: string) => `${schema}\u0000${table}\u0000${privilege}\u0000${column ?? ''}`;

  // Declared: explicit tables that exist, and `schema.*` over the schema's owner-role tables (every table in a schema not ours).
  const wanted = new Map<string, { schema: string; table: string; privilege: string; column?: string }>();
  const missing = new Set<string>();
  const exists = new Set(catalog.tables.map((t) => `${t.schema}.${t.table}`));
  for (const gr of decl.grants) {
    const tables =
      gr.table === '*'
        ? catalog.tables.filter((t) => t.schema === gr.schema && (t.owner === catalog.ownerRole || !catalog.ourSchemas.includes(t.schema))).map((t) => t.table)
        : exists.has(`${gr.schema}.${gr.table}`)
          ? [gr.table]
          : (missing.add(`${gr.schema}.${gr.table}`), []);
    for (const table of tables) {
      for (const column of gr.columns ?? [undefined]) wanted.set(key(gr.schema, table, gr.privilege, column), { schema: gr.schema, table, privilege: gr.privilege, column });
    }
  }
  // A table-level privilege makes the column privileges of its kind on that table redundant.
  for (const [k, w] of wanted) if (w.column !== undefined && wanted.has(key(w.schema, w.table, w.privilege))) wanted.delete(k);

  const revoke: string[] = [];
  const revokedTableLevel = new Set<string>();
  const held = new Set<string>();
  const asGrantor = (h: HeldPrivilege, stmt: string) => (h.grantor === h.owner ? [stmt] : [`SET ROLE ${quoteIdent(h.grantor)};`, stmt, 'RESET ROLE;']);
  const sorted = [...catalog.held].sort((a, b) => (a.column === undefined ? 0 : 1) - (b.column === undefined ? 0 : 1));
  for (const h of sorted) {
    const on = `${h.column === undefined ? '' : ` (${quoteIdent(h.column)})`} ON ${qualified(h.schema, h.table)}`;
    const k = key(h.schema, h.table, h.privilege, h.column);
    if (h.column !== undefined && revokedTableLevel.has(key(h.schema, h.table, h.privilege))) continue; // gone with the table-level one
    if (!wanted.has(k)) {
      revoke.push(...asGrantor(h, `REVOKE ${h.privilege}${on} FROM ${g};`));
      if (h.column === undefined) revokedTableLevel.add(k);
      continue;
    }
    if (h.grantable) revoke.push(...asGrantor(h, `REVOKE GRANT OPTION FOR ${h.privilege}${on} FROM ${g};`));
    held.add(k);
  }

  const wantedSchemas = new Map<string, Set<string>>();
  const want = (schema: string, p: string) => wantedSchemas.set(schema, (wantedSchemas.get(schema) ?? new Set()).add(p));
  for (const gr of decl.grants) want(gr.schema, 'USAGE');
  for (const s of decl.createIn ?? []) (want(s, 'USAGE'), want(s, 'CREATE'));
  const heldSchemas = new Set<string>();
  for (const h of catalog.heldSchemas) {
    if (wantedSchemas.get(h.schema)?.has(h.privilege)) heldSchemas.add(`${h.schema}\u0000${h.privilege}`);
    else revoke.push(`REVOKE ${h.privilege} ON SCHEMA ${quoteIdent(h.schema)} FROM ${g};`);
  }

  const wantedDefaults = new Set(decl.grants.filter((gr) => gr.table === '*').map((gr) => `${gr.schema}\u0000${gr.privilege}`));
  const heldDefaults = new Set<string>();
  for (const d of catalog.heldDefaults) {
    const k = `${d.schema ?? ''}\u0000${d.privilege}`;
    if (d.schema !== null && wantedDefaults.has(k)) heldDefaults.add(k);
    else revoke.push(`ALTER DEFAULT PRIVILEGES FOR ROLE ${owner}${d.schema === null ? '' : ` IN SCHEMA ${quoteIdent(d.schema)}`} REVOKE ${d.privilege} ON TABLES FROM ${g};`);
  }

  const grant: string[] = [];
  for (const [schema, privileges] of [...wantedSchemas].sort(([a], [b]) => a.localeCompare(b))) {
    const p = [...privileges].filter((x) => !heldSchemas.has(`${schema}\u0000${x}`)).sort().reverse();
    if (p.length) grant.push(`GRANT ${p.join(', ')} ON SCHEMA ${quoteIdent(schema)} TO ${g};`);
  }
  // One statement per table and per column set, in a stable order.
  const byTable = new Map<string, { table: string[]; columns: Map<string, string[]> }>();
  for (const [k, w] of wanted) {
    if (held.has(k)) continue;
    const t = qualified(w.schema, w.table);
    const e = byTable.get(t) ?? { table: [] as string[], columns: new Map<string, string[]>() };
    if (w.column === undefined) e.table.push(w.privilege);
    else e.columns.set(w.privilege, [...(e.columns.get(w.privilege) ?? []), w.column]);
    byTable.set(t, e);
  }
  const order = (ps: string[]) => ps.sort((a, b) => TABLE_PRIVILEGES.indexOf(a as TablePrivilege) - TABLE_PRIVILEGES.indexOf(b as TablePrivilege));
  for (const [t, e] of [...byTable].sort(([a], [b]) => a.localeCompare(b))) {
    if (e.table.length) grant.push(`GRANT ${order(e.table).join(', ')} ON ${t} TO ${g};`);
    const cols = order([...e.columns.keys()]).map((p) => `${p} (${e.columns.get(p)!.map(quoteIdent).join(', ')})`);
    if (cols.length) grant.push(`GRANT ${cols.join(', ')} ON ${t} TO ${g};`);
  }
  const defaults = new Map<string, string[]>();
  for (const gr of decl.grants) {
    if (gr.table !== '*' || heldDefaults.has(`${gr.schema}\u0000${gr.privilege}`)) continue;
    defaults.set(gr.schema, [...new Set([...(defaults.get(gr.schema) ?? []), gr.privilege])]);
  }
  for (const [schema, ps] of [...defaults].sort(([a], [b]) => a.localeCompare(b))) {
    grant.push(`ALTER DEFAULT PRIVILEGES FOR ROLE ${owner} IN SCHEMA ${quoteIdent(schema)} GRANT ${order(ps).join(', ')} ON TABLES TO ${g};`);
  }
  return { revoke, grant, missing: [...missing].sort() };
}

/** A role's SQL, end to end: what Vault runs for each user, and what the bootstrap converges its group role to. */
export function roleSql(props: RoleStatementsProps, decl: GroupDeclaration, catalog: CatalogView): { creation: string[]; revocation: string[] } & GrantPlan {
  return { creation: creationStatements(props), revocation: revocationStatements(props), ...grantPlan(decl, catalog) };
}
