import { Construct } from 'constructs';
import { DataResource } from 'cdktf/lib/terraform-data-resource';

export interface DatabaseBootstrapProps {
  /** The environment whose Postgres is bootstrapped. */
  readonly environment: string;
  /** Absolute path of the compiled bootstrap script (scripts/db-bootstrap.js). */
  readonly script: string;
  /** Directories the script resolves the environment from, so a destroy finds the same files. */
  readonly environmentsDir: string;
  readonly localDir: string;
  /** Values whose change re-runs the bootstrap (the setup password version, the role names). */
  readonly triggers: Record<string, string | number>;
}

/**
 * Prepares Postgres for Vault, as its superuser, outside Terraform's state:
 * the dedicated role Vault connects as, the NOLOGIN group roles, and the app
 * schema. On destroy it removes them again. The superuser password is read
 * by the script from a file, so it never passes through Terraform.
 */
export class DatabaseBootstrap extends Construct {
  public readonly resource: DataResource;

  constructor(scope: Construct, id: string, props: DatabaseBootstrapProps) {
    super(scope, id);
    const env = {
      PGVAULT_ENVIRONMENTS_DIR: '${self.input.environments_dir}',
      PGVAULT_LOCAL_DIR: '${self.input.local_dir}',
    };
    this.resource = new DataResource(this, 'run', {
      input: {
        environment: props.environment,
        script: props.script,
        environments_dir: props.environmentsDir,
        local_dir: props.localDir,
      },
      triggersReplace: props.triggers,
      provisioners: [
        { type: 'local-exec', command: 'node "${self.input.script}" up "${self.input.environment}"', environment: env },
        { type: 'local-exec', when: 'destroy', command: 'node "${self.input.script}" down "${self.input.environment}"', environment: env },
      ],
    });
  }
}
