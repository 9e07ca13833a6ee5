import { Construct } from 'constructs';
import { Mount } from '@cdktf/provider-vault/lib/mount';
import { DatabaseSecretBackendConnection } from '@cdktf/provider-vault/lib/database-secret-backend-connection';
import { GenericEndpoint } from '@cdktf/provider-vault/lib/generic-endpoint';
import { ITerraformDependable, TerraformResource } from 'cdktf';
import { connectionUrl } from '../statements';

export interface DatabaseSecretsEngineProps {
  /** Mount path of the database secrets engine. @default "database" */
  readonly path?: string;
  /** Name of the connection under `<path>/config/`. @default "postgres" */
  readonly connectionName?: string;
  /** Postgres host and port as Vault reaches them. */
  readonly host: string;
  readonly port: number;
  readonly database: string;
  /** @default "disable" */
  readonly sslmode?: string;
  /**
   * The CA file that verify-ca/verify-full check Postgres's certificate with, as a path where
   * Vault runs (not on this machine). @default Vault's system CA store
   */
  readonly sslRootCertOnVault?: string;
  /** The dedicated, non-superuser Postgres role Vault connects as. */
  readonly username: string;
  /**
   * The setup password for `username`, as a Terraform reference to a sensitive variable.
   * It is sent through the write-only `password_wo`, so it is kept in no state.
   */
  readonly setupPassword: string;
  /** Bump to send `setupPassword` again. @default 1 */
  readonly setupPasswordVersion?: number;
  /** Exactly the role names that may use this connection. */
  readonly allowedRoles: readonly string[];
  /** Ceiling for any lease from this mount. */
  readonly maxLeaseTtlSeconds: number;
  /** @default 4 */
  readonly maxOpenConnections?: number;
  /**
   * Rotate the root credential right after the connection is written, so the
   * setup password stops working and only Vault knows the new one.
   * @default true
   */
  readonly rotateRoot?: boolean;
  /**
   * Called with the mount; returns the resource that prepares the Postgres role and resets
   * its password to the setup password. The connection waits for it, and is written again
   * (with the setup password, then rotated) whenever it is replaced.
   * @default nothing prepares Postgres
   */
  readonly bootstrap?: (mount: Mount) => TerraformResource;
  /** Resources the mount is created after, and so destroyed before. @default none */
  readonly after?: ITerraformDependable[];
  /**
   * Connections to more databases of the same server, each with its own Vault role (`username`,
   * sent the same setup password, then rotated) and its own roles. Their construct IDs carry the
   * database's name. @default none: one database
   */
  readonly moreDatabases?: readonly EngineDatabaseProps[];
}

/** One more database the engine connects to. */
export interface EngineDatabaseProps {
  readonly database: string;
  readonly connectionName: string;
  readonly username: string;
  readonly allowedRoles: readonly string[];
}

/** One database's connection and the rotation of its root credential. */
export interface EngineConnection {
  readonly connection: DatabaseSecretBackendConnection;
  readonly rootRotation?: GenericEndpoint;
}

/** The database secrets engine: a mount, its postgresql connection and the root rotation. */
export class DatabaseSecretsEngine extends Construct {
  public readonly mount: Mount;
  public readonly connection: DatabaseSecretBackendConnection;
  /** The resource that prepares Postgres, when there is one. */
  public readonly bootstrap?: TerraformResource;
  /** The one-shot `rotate-root` call, when rotateRoot is on. */
  public readonly rootRotation?: GenericEndpoint;
  /** Mount path, as a reference (use it rather than retyping the string). */
  public readonly path: string;
  /** Connection name, as a reference. */
  public readonly connectionName: string;
  /** Every database's connection, by database name (props.database's first). */
  public readonly connections: ReadonlyMap<string, EngineConnection>;

  constructor(scope: Construct, id: string, props: DatabaseSecretsEngineProps) {
    super(scope, id);
    const path = props.path ?? 'database';
    const connectionName = props.connectionName ?? 'postgres';
    const rotateRoot = props.rotateRoot ?? true;

    this.mount = new Mount(this, 'mount', {
      path,
      type: 'database',
      description: 'Dynamic Postgres credentials',
      maxLeaseTtlSeconds: props.maxLeaseTtlSeconds,
      dependsOn: props.after,
    });
    const bootstrap = props.bootstrap?.(this.mount);
    this.bootstrap = bootstrap;
    const connect = (idSuffix: string, c: EngineDatabaseProps): EngineConnection => {
      const connection = new DatabaseSecretBackendConnection(this, `connection${idSuffix}`, {
        backend: this.mount.path,
        name: c.connectionName,
        pluginName: 'postgresql-database-plugin',
        verifyConnection: true,
        allowedRoles: [...c.allowedRoles],
        postgresql: {
          connectionUrl: connectionUrl(props.host, props.port, c.database, props.sslmode ?? 'disable', props.sslRootCertOnVault),
          username: c.username,
          passwordWo: props.setupPassword,
          passwordWoVersion: props.setupPasswordVersion ?? 1,
          maxOpenConnections: props.maxOpenConnections ?? 4,
          maxIdleConnections: 0,
          maxConnectionLifetime: 300,
        },
        dependsOn: bootstrap ? [bootstrap] : undefined,
        lifecycle: bootstrap ? { replaceTriggeredBy: [address(bootstrap)] } : undefined,
      });
      if (!rotateRoot) return { connection };
      const rootRotation = new GenericEndpoint(this, `rotate-root${idSuffix}`, {
        path: `${this.mount.path}/rotate-root/${connection.name}`,
        dataJson: '{}',
        disableRead: true,
        disableDelete: true,
        // A connection that Terraform creates anew (not only replaces), such as after a dev
        // server lost its memory, comes with a new bootstrap: that triggers the rotation too.
        lifecycle: { replaceTriggeredBy: [address(connection), ...(bootstrap ? [address(bootstrap)] : [])] },
      });
      return { connection, rootRotation };
    };
    const first = connect('', { database: props.database, connectionName, username: props.username, allowedRoles: props.allowedRoles });
    this.connection = first.connection;
    this.rootRotation = first.rootRotation;
    this.path = this.mount.path;
    this.connectionName = this.connection.name;
    this.connections = new Map([[props.database, first], ...(props.moreDatabases ?? []).map((c) => [c.database, connect(`-${c.database}`, c)] as const)]);
  }

  /** What a role of `database` waits for: its connection's root rotation, or the connection. @default the first database's */
  public ready(database?: string): ITerraformDependable {
    const c = database === undefined ? this.connections.values().next().value! : this.connections.get(database);
    if (!c) throw new Error(`DatabaseSecretsEngine: no connection to database "${database}"; expected one of ${[...this.connections.keys()].join(', ')}`);
    return c.rootRotation ?? c.connection;
  }
}

/** In JSON syntax replace_triggered_by takes a bare resource address, not a "${...}" expression. */
function address(r: TerraformResource): string {
  return `${r.terraformResourceType}.${r.friendlyUniqueId}`;
}
