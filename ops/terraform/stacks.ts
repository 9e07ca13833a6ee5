/**
 * Terraform on one environment's stacks: which stacks it has, which of them are deployed, and
 * one synth plus one Terraform run over a chosen few (the stack phases of ops/pipeline.ts).
 * Secrets cross into Terraform only as files (mode 0600) and TF_VAR_* at apply time; nothing
 * here prints one.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { EnvironmentConfig, localDir } from '../../stacks/config';
import { stateFile } from '../../stacks/state-location';
import { log } from '../local/toolchain-env';
import { readSecretFile, securePermissions } from '../local/local-secrets';
import { environmentDockerObjects, isEmpty } from './docker-objects';
import { LOCK_CONFLICT, readState, stateBackendEnv, stateLocked, stateResources, stateWhere } from './state-backend';
import { Sink, StackCommand, StackRunError, SynthesizedStack, runStacks, stackOutputs, synthesize } from './runner';
import { checkHookState, dockerObjectsRemain } from './state-trust';

export function stackIds(env: EnvironmentConfig): string[] {
  return env.infrastructure === 'docker' ? [`${env.name}-infra`, `${env.name}-secrets`] : [`${env.name}-secrets`];
}

/** Whether the stack's state (local file or shared database) holds anything to destroy. */
export async function hasResources(env: EnvironmentConfig, stackId: string): Promise<boolean> {
  return (await stateResources(env, stackId)).length > 0;
}

/**
 * The stacks a destroy has to tear down. Every state is read before anything is deleted: one
 * unreadable state (STATE_UNREADABLE) stops it all.
 */
export async function deployedStacks(env: EnvironmentConfig): Promise<string[]> {
  const ids = stackIds(env);
  const found = await Promise.all(ids.map((id) => hasResources(env, id)));
  const deployed = ids.filter((_, i) => found[i]);
  if (env.infrastructure === 'docker' && !deployed.includes(`${env.name}-infra`) && deployed.length) {
    // The containers are gone (an interrupted destroy): the Vault and the Postgres that the
    // -secrets state describes went with them, so there is nothing left to tear down there.
    // Docker has to agree: an -infra state that lists nothing is not proof.
    const left = environmentDockerObjects(env);
    if (!isEmpty(left)) throw dockerObjectsRemain(env.name, localDir(env.name), left, `the state of ${env.name}-infra lists nothing, while the state of ${env.name}-secrets does`);
    log(`${env.name}: its containers are gone; forgetting the -secrets state that described them`);
    fs.rmSync(stateFile(env, `${env.name}-secrets`), { force: true }); // docker environments keep local state
    return [];
  }
  return deployed;
}

/**
 * Refuses to run Terraform on a stack whose state holds a hook input that differs from the
 * synthesized configuration (see ops/terraform/state-trust.ts): nothing runs, nothing changes.
 */
async function refuseTamperedHooks(env: EnvironmentConfig, command: StackCommand, stacks: readonly SynthesizedStack[], ids: readonly string[], sink: Sink): Promise<void> {
  for (const s of stacks.filter((x) => ids.includes(x.name))) {
    const config = JSON.parse(fs.readFileSync(path.join(s.dir, 'cdk.tf.json'), 'utf8'));
    if (!config.resource?.terraform_data) continue;
    const started = Date.now();
    const state = await readState(env, s.name);
    if (state) checkHookState(env.name, command, s.name, config, state, stateWhere(env, s.name));
    sink(`${s.name}  [pgvault] hooks in the state checked against the configuration: ${((Date.now() - started) / 1000).toFixed(2)}s\n`, 'stdout');
  }
}

/** The project's own VAULT_* variables (from the toolchain), unlike the Vault client's settings. */
const PROJECT_VARIABLES = new Set(['VAULT_IMAGE', 'VAULT_SERVER_BIN']);

/**
 * The cdktf CLI's environment: the secrets as TF_VAR_* and nothing of the operator's Vault
 * settings (VAULT_ADDR, VAULT_TOKEN, VAULT_SKIP_VERIFY, ...): the stacks configure the provider.
 */
function cdktfEnv(env: EnvironmentConfig, command: string): NodeJS.ProcessEnv {
  const childEnv: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(VAULT|BAO)_/.test(k) || PROJECT_VARIABLES.has(k)) childEnv[k] = v;
  }
  Object.assign(childEnv, {
    PGVAULT_ONLY_ENV: env.name,
    CHECKPOINT_DISABLE: '1',
    CI: process.env.CI ?? 'true',
    FORCE_COLOR: '0',
    TF_VAR_vault_db_setup_password: readSecretFile(env.secretsEngine.setupPasswordFile, 'the Vault setup password'),
    ...stateBackendEnv(env, command),
  });
  if (env.infrastructure === 'docker' && !env.docker?.vaultNodes) {
    childEnv.TF_VAR_vault_dev_root_token = readSecretFile(env.vault.tokenFile, 'the Vault dev root token');
  }
  return childEnv;
}

/**
 * Synthesizes the environment and runs Terraform on the chosen stacks (ops/terraform/runner.ts);
 * returns each deployed stack's outputs. Files the synth and Terraform write are private
 * whatever the caller's umask.
 */
export async function terraformStacks(env: EnvironmentConfig, command: StackCommand, ids: string[]): Promise<Record<string, Record<string, unknown>>> {
  // PGVAULT_CDKTF_LOG=<file>: send the synth's and Terraform's output there instead of the terminal (the tests do).
  const logFile = process.env.PGVAULT_CDKTF_LOG;
  const out = logFile ? fs.openSync(logFile, 'a', 0o600) : undefined;
  const childEnv = cdktfEnv(env, command);
  const umask = process.umask(0o077);
  // The output passes through here so that a lock conflict can be told apart from other failures.
  let tail = '';
  const sink: Sink = (d, stream) => {
    if (out !== undefined) fs.writeSync(out, d);
    else (stream === 'stdout' ? process.stdout : process.stderr).write(d);
    tail = (tail + d).slice(-16_384);
  };
  const outputs: Record<string, Record<string, unknown>> = {};
  let failure: unknown;
  try {
    const stacks = await synthesize(env, childEnv, sink);
    await refuseTamperedHooks(env, command, stacks, ids, sink);
    await runStacks(stacks, ids, command, childEnv, sink);
    if (command === 'deploy') {
      for (const s of stacks.filter((x) => ids.includes(x.name))) outputs[s.name] = await stackOutputs(s, childEnv);
    }
  } catch (e) {
    failure = e;
  } finally {
    process.umask(umask);
    if (out !== undefined) fs.closeSync(out);
  }
  securePermissions(env.name);
  if (failure === undefined) return outputs;
  if (LOCK_CONFLICT.test(tail)) throw stateLocked(env, command);
  if (!(failure instanceof StackRunError)) throw failure;
  const logTail = logFile ? `\n--- last lines of ${logFile} ---\n${fs.readFileSync(logFile, 'utf8').split('\n').slice(-40).join('\n')}\n---` : '';
  throw new Error(`${failure.message}${logTail}`);
}
