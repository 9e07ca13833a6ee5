/**
 * Deploy and destroy one environment: the stack runner, with the recovery of an interrupted
 * teardown. Secrets cross into Terraform only as files (mode 0600) and TF_VAR_* at apply
 * time; nothing here prints one.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { EnvironmentConfig, loadEnvironment, localDir } from '../stacks/config';
import { stateFile } from '../stacks/state-location';
import { log } from './toolchain-env';
import { prepareLocalSecrets, readSecretFile, securePermissions } from './local-secrets';
import { outputsFile, writeOutputsFile } from './outputs';
import { mountState, vaultAdmin } from './vault-admin';
import { checkPostgresDataVolume } from './preflight';
import { initializeCluster, prepareClusterFiles, preparePostgresFiles } from './vault-cluster';
import { LOCK_CONFLICT, StateLockedError, holdingStateLock, readState, stateBackendEnv, stateLocked, stateResources, stateWhere } from './state-backend';
import { Sink, StackCommand, StackRunError, SynthesizedStack, runStacks, stackOutputs, synthesize } from './terraform-runner';
import { StateTrustError, checkHookState, dockerObjectsRemain } from './state-trust';
import { environmentDockerObjects, isEmpty } from './docker-objects';
import { convergeGrants } from './db-bootstrap';

export { log, loadToolchainEnv } from './toolchain-env';
export { readSecretFile, prepareLocalSecrets } from './local-secrets';
export { outputsFile } from './outputs';
export { vaultFetch, vaultAdmin, issueSecretId } from './vault-admin';

export function stackIds(env: EnvironmentConfig): string[] {
  return env.infrastructure === 'docker' ? [`${env.name}-infra`, `${env.name}-secrets`] : [`${env.name}-secrets`];
}

/** Whether the stack's state (local file or shared database) holds anything to destroy. */
async function hasResources(env: EnvironmentConfig, stackId: string): Promise<boolean> {
  return (await stateResources(env, stackId)).length > 0;
}

/**
 * Refuses to run Terraform on a stack whose state holds a hook input that differs from the
 * synthesized configuration (see scripts/state-trust.ts): nothing runs, nothing changes.
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
 * Synthesizes the environment and runs Terraform on the chosen stacks (scripts/terraform-runner.ts);
 * returns each deployed stack's outputs. Files the synth and Terraform write are private
 * whatever the caller's umask.
 */
async function terraformStacks(env: EnvironmentConfig, command: StackCommand, ids: string[]): Promise<Record<string, Record<string, unknown>>> {
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

/**
 * Finds a teardown that was interrupted (the database mount tainted, or its connection gone
 * while leases live) and finishes it, so that deploy and destroy can go on: the leases Vault
 * can no longer revoke are removed from Vault, and their Postgres users are dropped from
 * Postgres's side by the bootstrap (deploy) or the teardown (destroy).
 */
async function recoverInterruptedTeardown(env: EnvironmentConfig, forDeploy: boolean): Promise<void> {
  if (!(await hasResources(env, `${env.name}-secrets`))) return;
  let state;
  try {
    state = await mountState(env);
  } catch {
    return; // Vault does not answer: Terraform will say so.
  }
  if (state === 'absent' || state === 'healthy') return;
  const mount = env.secretsEngine.mountPath;
  const what = state === 'tainted' ? `the mount ${mount}/ is tainted (an unmount was interrupted)` : `the connection ${mount}/config/${env.secretsEngine.connectionName} is gone`;
  log(`${env.name}: ${what}; Vault can no longer revoke the leases under ${mount}/creds/. Recovering:`);
  await vaultAdmin(env, 'PUT', `sys/leases/revoke-force/${mount}`, {}, 120_000);
  log(`  removed the leases under ${mount}/ from Vault (sys/leases/revoke-force/${mount})`);
  if (forDeploy) {
    await vaultAdmin(env, 'DELETE', `sys/mounts/${mount}`, undefined, 120_000);
    log(`  removed the mount ${mount}/ (it holds only configuration); the deploy recreates it, and its bootstrap drops the users Vault could not revoke`);
  } else {
    log('  the destroy goes on; its teardown drops the users Vault could not revoke');
  }
}

/** Deploys the environment's stacks; the deploy itself writes `.local/<env>/outputs.json`. */
export async function deploy(name: string): Promise<Record<string, unknown>> {
  const env = loadEnvironment(name);
  prepareLocalSecrets(env);
  checkPostgresDataVolume(env);
  const started = Date.now();
  let byStack: Record<string, Record<string, unknown>>;
  try {
    // Under the state lock: a repair of Vault never runs beside another machine's deploy, and a
    // held lock fails here at once rather than after the synth.
    await holdingStateLock(env, `${env.name}-secrets`, 'deploy', () => recoverInterruptedTeardown(env, true));
    if (env.docker?.vaultNodes) {
      // A cluster is initialized between its containers and its configuration (scripts/vault-cluster.ts).
      prepareClusterFiles(env);
      preparePostgresFiles(env);
      const [infra, secrets] = stackIds(env);
      const first = await terraformStacks(env, 'deploy', [infra]);
      await initializeCluster(env);
      byStack = { ...first, ...(await terraformStacks(env, 'deploy', [secrets])) };
    } else {
      byStack = await terraformStacks(env, 'deploy', stackIds(env));
    }
    // Every deploy brings the group roles' grants back to the file, whether or not Terraform reran the bootstrap.
    await convergeGrants(env);
  } catch (e: any) {
    if (e instanceof StateLockedError || e instanceof StateTrustError) throw e;
    throw new Error(
      `deploy of ${env.name} failed: ${e.message}. The environment may be partly deployed. ` +
        `Fix the cause shown above and run 'npm run deploy -- ${env.name}' again (it picks up where it stopped), ` +
        `or remove what was created with 'npm run destroy -- ${env.name}'.`,
    );
  }
  const flat: Record<string, unknown> = {};
  for (const id of stackIds(env)) Object.assign(flat, byStack[id] ?? {});
  // The hook writes it only where Terraform applied a change: with shared state, a deploy from
  // another clone that changed nothing would leave this machine without it, or with a stale one.
  writeOutputsFile(env, byStack[`${env.name}-secrets`] ?? {});
  log(`deployed ${env.name} in ${((Date.now() - started) / 1000).toFixed(1)}s; outputs: ${outputsFile(env.name)}`);
  return flat;
}

/**
 * Destroys the environment's stacks, whatever leases are live. Harmless when nothing is deployed.
 * Fails closed: a state that cannot be read stops it before anything is deleted, and
 * `.local/<env>` (with a cluster's seal and recovery keys) goes only once Docker itself holds
 * no container, volume or network of the environment.
 */
export async function destroy(name: string): Promise<void> {
  const env = loadEnvironment(name);
  const ids = stackIds(env);
  // Every state is read before anything is deleted: one unreadable state (STATE_UNREADABLE) stops it all.
  const found = await Promise.all(ids.map((id) => hasResources(env, id)));
  let deployed = ids.filter((_, i) => found[i]);
  const started = Date.now();
  if (env.infrastructure === 'docker' && !deployed.includes(`${env.name}-infra`) && deployed.length) {
    // The containers are gone (an interrupted destroy): the Vault and the Postgres that the
    // -secrets state describes went with them, so there is nothing left to tear down there.
    // Docker has to agree: an -infra state that lists nothing is not proof.
    const left = environmentDockerObjects(env);
    if (!isEmpty(left)) throw dockerObjectsRemain(env.name, localDir(env.name), left, `the state of ${env.name}-infra lists nothing, while the state of ${env.name}-secrets does`);
    log(`${env.name}: its containers are gone; forgetting the -secrets state that described them`);
    fs.rmSync(stateFile(env, `${env.name}-secrets`), { force: true }); // docker environments keep local state
    deployed = [];
  }
  if (deployed.length === 0) {
    log(`nothing deployed for ${env.name}; nothing to destroy`);
  } else {
    try {
      await holdingStateLock(env, `${env.name}-secrets`, 'destroy', () => recoverInterruptedTeardown(env, false));
      // A half-deployed environment may have only its -infra stack in state: only what is deployed is destroyed.
      await terraformStacks(env, 'destroy', deployed);
    } catch (e: any) {
      if (e instanceof StateLockedError || e instanceof StateTrustError) throw e;
      throw new Error(
        `destroy of ${env.name} failed: ${e.message}. Fix the cause shown above and run 'npm run destroy -- ${env.name}' again. ` +
          (env.infrastructure === 'docker'
            ? `To remove the containers by hand: docker rm -f $(docker ps -aq --filter name=pgvault-${env.name}-); docker volume rm $(docker volume ls -q --filter name=pgvault-${env.name}-); docker network rm pgvault-${env.name}; then delete ${localDir(env.name)}.`
            : '')
      );
    }
  }
  // What the deploy generated goes too; operator-provided files (existing environments) stay.
  const dir = localDir(env.name);
  if (env.infrastructure === 'docker') {
    const left = environmentDockerObjects(env);
    if (!isEmpty(left)) throw dockerObjectsRemain(env.name, dir, left, deployed.length ? `Terraform destroyed ${deployed.join(' and ')}` : `the state of ${env.name} lists nothing deployed`);
  }
  for (const f of [outputsFile(env.name), env.secretsEngine.setupPasswordFile, path.join(dir, 'state'), path.join(dir, 'app-secret-id')]) {
    fs.rmSync(f, { recursive: true, force: true });
  }
  if (env.infrastructure === 'docker') fs.rmSync(dir, { recursive: true, force: true });
  log(`destroyed ${env.name} in ${((Date.now() - started) / 1000).toFixed(1)}s`);
}
