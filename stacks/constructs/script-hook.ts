import { Construct } from 'constructs';
import { ITerraformDependable } from 'cdktf';
import { DataResource } from 'cdktf/lib/terraform-data-resource';

export interface ScriptHookProps {
  /**
   * Path of the compiled hooks script (ops/hooks.js; scripts/hooks.js before it moved, which
   * stays as a shim for older configurations), relative to the directory Terraform
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

/** The variable that hands the hook its input as the state holds it, so that the script can refuse a tampered one. */
export const HOOK_INPUT_VARIABLE = 'PGVAULT_HOOK_INPUT';

/** What may stand in the hook's argument vector: no shell or Terraform syntax, and no option (a leading dash). */
const SAFE_ARGUMENT = /^[A-Za-z0-9._/][A-Za-z0-9._/-]*$/;

/**
 * A `terraform_data` resource that runs one of the project's scripts at create or at
 * destroy time, so that a plain `cdktf deploy` / `cdktf destroy` does what `npm run
 * deploy` / `destroy` do. The scripts read secrets from the environment's files, never
 * from Terraform.
 *
 * Nothing read from state reaches a shell or node's argument parser: the script, the action
 * and the environment are literals of the configuration, run without a shell (`interpreter`),
 * after `--`. A destroy provisioner reads `self` from the state, which whoever can write the
 * state controls; the state's input only reaches the script as data (PGVAULT_HOOK_INPUT),
 * which it compares with its arguments and refuses when they differ (ops/terraform/state-trust.ts).
 */
export class ScriptHook extends Construct {
  public readonly resource: DataResource;

  constructor(scope: Construct, id: string, props: ScriptHookProps) {
    super(scope, id);
    if (props.onDestroy && props.triggers) {
      throw new Error(`ScriptHook ${id}: a hook with onDestroy ("${props.onDestroy}") must not have triggers; every replacement would run it`);
    }
    for (const [prop, value] of [['script', props.script], ['environment', props.environment], ['onCreate', props.onCreate], ['onDestroy', props.onDestroy]] as const) {
      if (value !== undefined && !SAFE_ARGUMENT.test(value)) {
        throw new Error(
          `ScriptHook ${id}: ${prop} is ${JSON.stringify(value)}; expected letters, digits and . _ / - only, not starting with "-" ` +
            '(it is an argument of node, run without a shell). Use a plain relative path or name.',
        );
      }
    }
    const values = props.values ?? {};
    const env: Record<string, string> = { [HOOK_INPUT_VARIABLE]: '${jsonencode(self.input)}' };
    for (const k of Object.keys(values)) env[`PGVAULT_HOOK_${k.toUpperCase()}`] = `\${jsonencode(self.input.values.${k})}`;
    // Terraform runs interpreter + [command] as an argument vector: no shell. `--` ends node's options.
    const run = (action: string) => ({ interpreter: ['node', '--', props.script, action], command: props.environment, environment: env });
    this.resource = new DataResource(this, 'run', {
      input: {
        environment: props.environment,
        script: props.script,
        values,
      },
      triggersReplace: props.triggers,
      dependsOn: props.dependsOn,
      // Whoever edits triggers_replace in the state would otherwise replace the hook at the next deploy, and so run its destroy action on a live system.
      lifecycle: props.onDestroy ? { ignoreChanges: ['triggers_replace'] } : undefined,
      provisioners: [
        ...(props.onCreate ? [{ type: 'local-exec' as const, ...run(props.onCreate) }] : []),
        ...(props.onDestroy ? [{ type: 'local-exec' as const, when: 'destroy' as const, ...run(props.onDestroy) }] : []),
      ],
    });
  }
}
