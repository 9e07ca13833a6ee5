/**
 * The deploy and the destroy of one environment, as the list of their phases. `npm run deploy`
 * runs each phase's `up` from the top; `npm run destroy` runs each phase's `down` from the
 * bottom. Each phase is a file of ops/phases/ that says what its `up` and `down` do; how a
 * list runs (stack phases side by side share one Terraform run) is ops/phases/phase.ts.
 */
import { loadEnvironment } from '../stacks/config';
import { log } from './local/toolchain-env';
import { outputsFile } from './local/outputs';
import { PipelineRun, Phase, runPhases } from './phases/phase';
import { deployedStacks, stackIds } from './terraform/stacks';
import { localFiles } from './phases/local-files';
import { clusterFiles } from './phases/cluster-files';
import { infraStack } from './phases/infra-stack';
import { clusterInit } from './phases/cluster-init';
import { secretsStack } from './phases/secrets-stack';
import { grants } from './phases/grants';
import { outputs } from './phases/outputs';

/**
 * phase          up (deploy, top down)                            down (destroy, bottom up)
 * local-files    .local/<env>: secrets; the data volume checked   the generated files, once Docker holds nothing
 * cluster-files  ha: nodes' and Postgres's TLS and seal files     -
 * infra-stack    <env>-infra: containers, network, volumes        destroyed
 * cluster-init   ha: the Vault cluster initialized, nodes joined  -
 * secrets-stack  <env>-secrets: mount, roles, apps; its hooks     destroyed; its hooks revoke the leases
 *                bootstrap Postgres                               and tear down what the bootstrap made
 * grants         the group roles' grants converge to the file     -
 * outputs        .local/<env>/outputs.json                        -
 */
export const PHASES: readonly Phase[] = [localFiles, clusterFiles, infraStack, clusterInit, secretsStack, grants, outputs];

/** Deploys the environment; returns the stacks' outputs, and `.local/<env>/outputs.json` holds them. */
export async function deploy(name: string): Promise<Record<string, unknown>> {
  const env = loadEnvironment(name);
  const started = Date.now();
  const run: PipelineRun = { env, command: 'deploy', outputs: {}, deployed: [] };
  await runPhases(run, PHASES);
  const flat: Record<string, unknown> = {};
  for (const id of stackIds(env)) Object.assign(flat, run.outputs[id] ?? {});
  log(`deployed ${env.name} in ${((Date.now() - started) / 1000).toFixed(1)}s; outputs: ${outputsFile(env.name)}`);
  return flat;
}

/**
 * Destroys the environment, whatever leases are live. Harmless when nothing is deployed. Fails
 * closed: every state is read before anything is deleted (ops/terraform/stacks.ts).
 */
export async function destroy(name: string): Promise<void> {
  const env = loadEnvironment(name);
  const run: PipelineRun = { env, command: 'destroy', outputs: {}, deployed: await deployedStacks(env) };
  const started = Date.now();
  if (run.deployed.length === 0) log(`nothing deployed for ${env.name}; nothing to destroy`);
  await runPhases(run, [...PHASES].reverse());
  log(`destroyed ${env.name} in ${((Date.now() - started) / 1000).toFixed(1)}s`);
}
