import { Construct } from 'constructs';
import { ITerraformDependable } from 'cdktf';
import { DataResource } from 'cdktf/lib/terraform-data-resource';

export interface ScriptHookProps {
  /**
   * Path of the compiled hooks script (scripts/hooks.js), relative to the directory Terraform
   * runs the stack in, so that nothing of one machine's layout lands in state.
   */
  readonly script: string;
  /**
   * The environment the hook acts on. The script finds its file the way the deploy did:
   * PGVAULT_ENVIRONMENTS_DIR and PGVAULT_LOCAL_DIR come from Terraform's own environment.
   */
  readonly environment: string;
  /** The hook's action when the resource is created (or replaced). @default none */
  readonly onCreate?: string;
  /** The hook's action when the resource is destroyed (not when it is replaced: see `triggers`). @default none */
  readonly onDestroy?: string;
  /** More input for the script, passed as PGVAULT_HOOK_<NAME> variables; may hold references. */
  readonly values?: Record<string, unknown>;
  /**
   * Values whose change replaces the resource, so `onCreate` runs again. A hook with
   * `onDestroy` takes none: a replacement would run its destroy action on a live system.
   * @default none
   */
  readonly triggers?: Record<string, unknown>;
  readonly dependsOn?: ITerraformDependable[];
}

/**
 * A `terraform_data` resource that runs one of the project's scripts at create or at
 * destroy time, so that a plain `cdktf deploy` / `cdktf destroy` does what `npm run
 * deploy` / `destroy` do. The scripts read secrets from the environment's files, never
 * from Terraform.
 */
export class ScriptHook extends Construct {
  public readonly resource: DataResource;

  constructor(scope: Construct, id: string, props: ScriptHookProps) {
    super(scope, id);
    if (props.onDestroy && props.triggers) {
      throw new Error(`ScriptHook ${id}: a hook with onDestroy ("${props.onDestroy}") must not have triggers; every replacement would run it`);
    }
    const values = props.values ?? {};
    const env: Record<string, string> = {};
    for (const k of Object.keys(values)) env[`PGVAULT_HOOK_${k.toUpperCase()}`] = `\${jsonencode(self.input.values.${k})}`;
    const command = (action: string) => `node "\${self.input.script}" ${action} "\${self.input.environment}"`;
    this.resource = new DataResource(this, 'run', {
      input: {
        environment: props.environment,
        script: props.script,
        values,
      },
      triggersReplace: props.triggers,
      dependsOn: props.dependsOn,
      provisioners: [
        ...(props.onCreate ? [{ type: 'local-exec' as const, command: command(props.onCreate), environment: Object.keys(env).length ? env : undefined }] : []),
        ...(props.onDestroy ? [{ type: 'local-exec' as const, when: 'destroy' as const, command: command(props.onDestroy), environment: Object.keys(env).length ? env : undefined }] : []),
      ],
    });
  }
}
