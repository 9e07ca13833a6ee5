import { Construct } from 'constructs';
import { ITerraformDependable } from 'cdktf';
import { DatabaseSecretBackendRole } from '@cdktf/provider-vault/lib/database-secret-backend-role';
import { DatabaseSecretsEngine } from './database-secrets-engine';
import * as sql from '../statements';

export interface DatabaseRoleProps {
  readonly engine: DatabaseSecretsEngine;
  /** The Vault role name: credentials come from `<mount>/creds/<name>`. */
  readonly name: string;
  /** The NOLOGIN group role each dynamic user is granted. */
  readonly groupRole: string;
  /** Takes over objects a revoked write user owned; it holds no privilege. */
  readonly retiredRole: string;
  /** The environment's mark, `pgvault:<env>`: on each user (with its bounds) and on a disarmed one. */
  readonly mark: string;
  /** read: a revoked user's objects are dropped; write: handed to the retired role. */
  readonly access: 'read' | 'write';
  /** `access: migrate`: the owner role each user acts as (SET, not inherited). @default none */
  readonly setRole?: string;
  /** CONNECTION LIMIT of each user. @default 20 */
  readonly connectionLimit?: number;
  /** The users' statement bound (the reaper's, and their statement_timeout). @default 300 */
  readonly statementTimeoutSeconds?: number;
  /** The users' idle-in-transaction bound. @default 60 */
  readonly idleInTransactionTimeoutSeconds?: number;
  readonly defaultTtlSeconds: number;
  readonly maxTtlSeconds: number;
  /** The database its users are created in, through the engine's connection to it. @default the engine's first database */
  readonly database?: string;
  /**
   * More resources the role is created after, and so destroyed before, such as the hook that
   * revokes every lease at destroy: the roles go first so that nothing issues new credentials.
   * @default the engine's root rotation (or its connection)
   */
  readonly after?: ITerraformDependable[];
}

/** A Vault role whose credentials are Postgres users created on demand, with a TTL. */
export class DatabaseRole extends Construct {
  public readonly role: DatabaseSecretBackendRole;
  /** Role name, as a reference. */
  public readonly name: string;
  /** `<mount>/creds/<name>`, as a reference. */
  public readonly credsPath: string;

  constructor(scope: Construct, id: string, props: DatabaseRoleProps) {
    super(scope, id);
    if (props.defaultTtlSeconds > props.maxTtlSeconds) {
      throw new Error(
        `DatabaseRole ${props.name}: defaultTtlSeconds (${props.defaultTtlSeconds}) is greater than maxTtlSeconds (${props.maxTtlSeconds}); lower the default or raise the maximum`,
      );
    }
    const stmts: sql.RoleStatementsProps = {
      groupRole: props.groupRole,
      retiredRole: props.retiredRole,
      mark: props.mark,
      access: props.access,
      setRole: props.setRole,
      connectionLimit: props.connectionLimit,
      statementTimeoutSeconds: props.statementTimeoutSeconds,
      idleInTransactionTimeoutSeconds: props.idleInTransactionTimeoutSeconds,
    };
    this.role = new DatabaseSecretBackendRole(this, 'role', {
      backend: props.engine.path,
      name: props.name,
      dbName: props.database === undefined ? props.engine.connectionName : props.engine.connections.get(props.database)?.connection.name ?? props.engine.connectionName,
      defaultTtl: props.defaultTtlSeconds,
      maxTtl: props.maxTtlSeconds,
      creationStatements: sql.creationStatements(stmts),
      renewStatements: sql.renewStatements(),
      rollbackStatements: sql.rollbackStatements(),
      revocationStatements: sql.revocationStatements(stmts),
      dependsOn: [props.engine.ready(props.database), ...(props.after ?? [])],
    });
    this.name = this.role.name;
    this.credsPath = `${props.engine.path}/creds/${this.role.name}`;
  }
}
