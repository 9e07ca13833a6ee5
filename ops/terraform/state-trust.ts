/**
 * What the deploy and the destroy check before they act on what they read back: Terraform
 * state (a hook's input, a resource list) and Docker. Whoever can write the state is trusted
 * only this far: a value from it never reaches a shell or an argument parser, a hook whose
 * input differs from the configuration is refused, and an unreadable state is an error, never
 * "nothing deployed". Every refusal says what was found, that nothing ran, and how to recover.
 */
/** A check refused to go on; nothing was run or deleted. `code` is stable. */
export class StateTrustError extends Error {
  public readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'StateTrustError';
    this.code = code;
  }
}

/** A local state file, or the state Terraform pulled from the pg backend, is not a state. */
export function stateUnreadable(envName: string, stackId: string, where: string, why: string, backup?: string): StateTrustError {
  return new StateTrustError(
    'STATE_UNREADABLE',
    `the state of ${stackId} (${where}) cannot be read: ${why}. Nothing was run or deleted: a truncated or half-written state ` +
      "does not mean that nothing is deployed, and Terraform may still manage resources it no longer lists. If a deploy is running, wait for it. " +
      (backup ? `Otherwise restore the state: Terraform's previous copy is ${backup} (check it, then copy it over ${where}), or use your own backup. ` : 'Otherwise restore the state from your backup. ') +
      `Then run the deploy or destroy again ('npm run destroy -- ${envName}').`,
  );
}

/** A hook's input in the state differs from the configuration's literal. */
export function hookStateTampered(envName: string, command: string, stackId: string, address: string, field: string, inState: unknown, configured: unknown, where: string): StateTrustError {
  return new StateTrustError(
    'STATE_HOOK_TAMPERED',
    `the state of ${stackId} (${where}) was changed outside Terraform: the hook ${address} has ${field} ${JSON.stringify(inState)} there, ` +
      `but the configuration says ${JSON.stringify(configured)}. The ${command} of ${envName} refused to start; nothing ran and nothing was changed. ` +
      'Whoever can write this state can try to make a deploy run commands (docs/security.md, "Who can write the state"): find out who changed it. ' +
      `Once the rest of the state is checked, drop the hook from it: 'terraform -chdir=cdktf.out/stacks/${stackId} state rm ${address}' ` +
      `(this runs nothing; the next deploy creates the hook again from the configuration), then run 'npm run ${command} -- ${envName}' again.`,
  );
}

/** The hook script was started with an input (from the state) that is not its own. */
export function hookInputRefused(action: string, environment: string, why: string): StateTrustError {
  return new StateTrustError(
    'HOOK_INPUT_REFUSED',
    `hook ${action} for ${JSON.stringify(environment)} refused: ${why}. Nothing ran. ` +
      'The state was changed outside Terraform, or the hook was not started by the synthesized configuration; ' +
      'see docs/security.md, "Who can write the state", and remove the hook from the state (terraform state rm) once the rest is checked.',
  );
}

export interface DockerObjects {
  readonly containers: readonly string[];
  readonly volumes: readonly string[];
  readonly networks: readonly string[];
}

const listed = (o: DockerObjects) =>
  [['containers', o.containers], ['volumes', o.volumes], ['networks', o.networks]]
    .filter(([, names]) => names.length)
    .map(([kind, names]) => `${kind} ${(names as string[]).join(', ')}`)
    .join('; ');

/** `.local/<env>` would be deleted while Docker still holds objects of the environment. */
export function dockerObjectsRemain(envName: string, localDir: string, objects: DockerObjects, why: string): StateTrustError {
  const rm = [
    objects.containers.length ? `docker rm -f ${objects.containers.join(' ')}` : '',
    objects.volumes.length ? `docker volume rm ${objects.volumes.join(' ')}` : '',
    objects.networks.length ? `docker network rm ${objects.networks.join(' ')}` : '',
  ].filter(Boolean);
  return new StateTrustError(
    'DESTROY_DOCKER_LEFT',
    `${why}, but Docker still has ${listed(objects)} of ${envName}. ${localDir} was kept, with the state, the passwords and keys ` +
      '(for a Vault cluster the seal key and recovery keys, without which its Raft data can never be unsealed). ' +
      `If the state was lost or damaged, restore it (${localDir}/state/*.tfstate.backup is Terraform's previous copy) and run 'npm run destroy -- ${envName}' again. ` +
      `If these objects are leftovers you do not need, remove them (${rm.join('; ')}), then run the destroy again.`,
  );
}

/** Docker did not say, in time, what objects of the environment exist. */
export function dockerUnanswered(envName: string, localDir: string, detail: string): StateTrustError {
  return new StateTrustError(
    'DESTROY_DOCKER_UNANSWERED',
    `cannot tell whether Docker still holds containers, volumes or networks of ${envName} (${detail}), so ${localDir} was kept ` +
      `(it holds the keys to them). Start the Docker engine (npm run toolchain) and run 'npm run destroy -- ${envName}' again.`,
  );
}

/**
 * What a hook's `input.script` has ever been: a relative path up from the stack's directory to
 * a .js file. Only the configuration's literal runs; a state value of another shape (an option
 * such as `-e`, shell syntax) was put there by hand. Another plain path is a moved script.
 */
const PLAIN_SCRIPT_PATH = /^(\.\.\/)+[A-Za-z0-9_][A-Za-z0-9._/-]*\.js$/;

/**
 * Checks the input the hook script was started with (PGVAULT_HOOK_INPUT, from the state) against
 * its own arguments (literals of the configuration): the environment must be the same, and the
 * script a plain path. Throws HOOK_INPUT_REFUSED otherwise.
 */
export function checkHookInput(action: string, environment: string, rawInput: string | undefined): void {
  if (rawInput === undefined) throw hookInputRefused(action, environment, "PGVAULT_HOOK_INPUT is not set (this script is run by the stacks' terraform_data hooks only)");
  let input: any;
  try {
    input = JSON.parse(rawInput);
  } catch {
    throw hookInputRefused(action, environment, 'PGVAULT_HOOK_INPUT is not JSON');
  }
  if (input === null || typeof input !== 'object') throw hookInputRefused(action, environment, 'the input in the state is not an object');
  if (input.environment !== environment) {
    throw hookInputRefused(action, environment, `the state's input names the environment ${JSON.stringify(input.environment)}, the configuration ${JSON.stringify(environment)}`);
  }
  if (typeof input.script !== 'string' || !PLAIN_SCRIPT_PATH.test(input.script)) {
    throw hookInputRefused(action, environment, `the state's input names the script ${JSON.stringify(input.script)}, which is not a relative path to a .js file`);
  }
}

/**
 * Compares each terraform_data hook of a stack's state with the synthesized configuration
 * (cdk.tf.json): the input's environment and script are literals there and must be the same in
 * the state, and a hook with a destroy action has no triggers_replace (a change would replace
 * it, and run that action on a live system). Throws STATE_HOOK_TAMPERED on the first difference.
 */
export function checkHookState(envName: string, command: string, stackId: string, config: any, state: any, where: string): void {
  const hooks: Record<string, any> = config?.resource?.terraform_data ?? {};
  for (const r of Array.isArray(state?.resources) ? state.resources : []) {
    if (r?.mode !== 'managed' || r.type !== 'terraform_data' || !Object.prototype.hasOwnProperty.call(hooks, r.name)) continue;
    const configured = hooks[r.name];
    const address = `terraform_data.${r.name}`;
    const hasDestroyAction = (configured.provisioner ?? []).some((p: any) => p?.['local-exec']?.when === 'destroy');
    for (const instance of Array.isArray(r.instances) ? r.instances : []) {
      const attributes = instance?.attributes ?? {};
      const input = attributes.input?.value;
      const expected = configured.input?.environment;
      if (expected !== undefined && input?.environment !== expected) throw hookStateTampered(envName, command, stackId, address, 'input.environment', input?.environment, expected, where);
      // A script moved in the repository is a plain change (the deploy writes the new path, running nothing); another shape is not.
      const script = configured.input?.script;
      if (script !== undefined && input?.script !== script && !(typeof input?.script === 'string' && PLAIN_SCRIPT_PATH.test(input.script))) {
        throw hookStateTampered(envName, command, stackId, address, 'input.script', input?.script, script, where);
      }
      if (hasDestroyAction && attributes.triggers_replace != null) {
        throw hookStateTampered(envName, command, stackId, address, 'triggers_replace', attributes.triggers_replace?.value ?? attributes.triggers_replace, null, where);
      }
    }
  }
}

/**
 * The names among `names` that belong to the environment: `pgvault-<env>` itself or
 * `pgvault-<env>-...`, but not those of another environment whose name extends it
 * (`pgvault-<env>-b-...` when `<env>-b` is an environment too).
 */
export function environmentNames(envName: string, names: readonly string[], otherEnvironments: readonly string[]): string[] {
  const mine = (n: string, e: string) => n === `pgvault-${e}` || n.startsWith(`pgvault-${e}-`);
  const longer = otherEnvironments.filter((o) => o !== envName && o.startsWith(`${envName}-`));
  return names.filter((n) => mine(n, envName) && !longer.some((o) => mine(n, o))).sort();
}
