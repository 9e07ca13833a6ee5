/**
 * The SQL that Vault runs for each dynamic user. Pure functions, so they can be
 * unit-tested and read in one place.
 *
 * Every statement quotes "{{name}}" as an identifier and '{{password}}' /
 * '{{expiration}}' as literals. Vault's generated names and passwords never
 * contain quotes, and Vault runs these statements as its dedicated role.
 */

/** Postgres identifiers that the statements reference; validated by the config schema. */
export interface RoleStatementsProps {
  /** The NOLOGIN group role whose privileges the dynamic user inherits. */
  readonly groupRole: string;
  /**
   * The role that takes over anything a dynamic user owns when it is revoked. It must hold
   * no privilege: a SECURITY DEFINER function or a view runs with its owner's rights.
   */
  readonly retiredRole: string;
}

const IDENT = /^[a-z_][a-z0-9_]{0,62}$/;

function ident(kind: string, value: string): string {
  if (!IDENT.test(value)) {
    throw new Error(`${kind} "${value}" is not a safe Postgres identifier; expected ${IDENT}`);
  }
  return value;
}

/** One statement: a login role that expires with the lease and inherits the group's privileges. */
export function creationStatements(props: RoleStatementsProps): string[] {
  const group = ident('groupRole', props.groupRole);
  return [
    `CREATE ROLE "{{name}}" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE ${group};`,
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
 * Revocation that always succeeds: it terminates the user's sessions, takes EXECUTE on
 * the user's functions away from PUBLIC, hands anything the user owns to the retired
 * role (which holds no privilege), drops what is left (privileges), then drops the role.
 * A role that is already gone is not an error.
 *
 * The DO block is dollar-quoted, so Vault runs it whole rather than splitting it on ';'.
 */
export function revocationStatements(props: RoleStatementsProps): string[] {
  const retired = ident('retiredRole', props.retiredRole);
  return [
    [
      'DO $$',
      'DECLARE f regprocedure;',
      'BEGIN',
      `  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{{name}}') THEN`,
      `    EXECUTE format('GRANT %I TO %I', '{{name}}', current_user);`,
      `    PERFORM pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = '{{name}}' AND pid <> pg_catalog.pg_backend_pid();`,
      `    FOR f IN SELECT p.oid FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_roles r ON r.oid = p.proowner WHERE r.rolname = '{{name}}' LOOP`,
      `      EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', f);`,
      '    END LOOP;',
      `    EXECUTE format('REASSIGN OWNED BY %I TO ${retired}', '{{name}}');`,
      `    EXECUTE format('DROP OWNED BY %I', '{{name}}');`,
      '  END IF;',
      'END',
      '$$;',
    ].join('\n'),
    `DROP ROLE IF EXISTS "{{name}}";`,
  ];
}

/** The connection URL template Vault fills with its own username and password. */
export function connectionUrl(host: string, port: number | string, database: string, sslmode: string, sslrootcert?: string): string {
  // sslrootcert is a path where Vault runs: the CA that verify-ca/verify-full check Postgres with.
  const ca = sslrootcert ? `&sslrootcert=${encodeURIComponent(sslrootcert).replace(/%2F/g, '/')}` : '';
  return `postgresql://{{username}}:{{password}}@${host}:${port}/${ident('database', database)}?sslmode=${sslmode}${ca}`;
}
