/**
 * What a phase of the deploy is, and how a list of them runs (the list is ops/pipeline.ts; the
 * phases are the other files of this folder).
 * A deploy runs each phase's `up` in the list's order, a destroy each `down` in the reverse.
 */
import { EnvironmentConfig, localDir } from '../../stacks/config';
import { StackCommand } from '../terraform/runner';
import { StateLockedError, holdingStateLock } from '../terraform/state-backend';
import { StateTrustError } from '../terraform/state-trust';
import { stackIds, terraformStacks } from '../terraform/stacks';
import { recoverInterruptedTeardown } from '../terraform/interrupted-teardown';

/** One deploy or destroy of one environment, as its phases see it. */
export interface PipelineRun {
  readonly env: EnvironmentConfig;
  readonly command: StackCommand;
  /** Each stack's outputs once Terraform deployed it, by stack id. */
  readonly outputs: Record<string, Record<string, unknown>>;
  /** The stacks whose state holds resources, read before a destroy deletes anything. */
  readonly deployed: readonly string[];
}

export interface Phase {
  /** Names the phase's file under ops/phases/. */
  readonly name: string;
  /** Whether the environment goes through this phase. @default every environment */
  readonly appliesTo?: (env: EnvironmentConfig) => boolean;
  /**
   * The stack (`<env>-<stack>`) that Terraform deploys in `up` and destroys in `down`. Stack
   * phases next to each other in the run's order share one synth and one Terraform run, their
   * stacks in dependency order (independent ones at the same time).
   */
  readonly stack?: 'infra' | 'secrets';
  /** What the deploy does. @default nothing */
  readonly up?: (run: PipelineRun) => Promise<void> | void;
  /** What the destroy does. @default nothing */
  readonly down?: (run: PipelineRun) => Promise<void> | void;
  /**
   * A failure here may leave the environment partly deployed (or destroyed); the error then says
   * how to go on. Always so for a stack phase. @default false
   */
  readonly midway?: boolean;
}

/** One step of a run: a phase's own `up` or `down`, or one Terraform run over stacks side by side. */
export type Step = { readonly phase: Phase } | { readonly phase: Phase; readonly stacks: readonly string[] };

/**
 * The steps of a run through the phases in the order given: those the environment goes through
 * that have something to do, stack phases side by side merged into one Terraform run (in the
 * order of stackIds). A destroy tears down only what is deployed: a half-deployed environment
 * may have only its -infra stack.
 */
export function steps(env: EnvironmentConfig, command: StackCommand, phases: readonly Phase[], deployed: readonly string[]): Step[] {
  const step = command === 'deploy' ? 'up' : 'down';
  const todo = phases.filter((p) => (p.appliesTo?.(env) ?? true) && (p.stack !== undefined || p[step] !== undefined));
  const out: Step[] = [];
  for (let i = 0; i < todo.length; ) {
    if (todo[i].stack === undefined) {
      out.push({ phase: todo[i++] });
      continue;
    }
    const first = todo[i];
    const group: string[] = [];
    while (i < todo.length && todo[i].stack !== undefined) group.push(`${env.name}-${todo[i++].stack}`);
    const stacks = stackIds(env).filter((id) => group.includes(id) && (command === 'deploy' || deployed.includes(id)));
    if (stacks.length) out.push({ phase: first, stacks });
  }
  return out;
}

/**
 * Runs the phases in the order given, `up` to deploy and `down` to destroy. Before the first
 * Terraform run, an interrupted teardown is finished under the state lock
 * (ops/terraform/interrupted-teardown.ts): a held lock fails there at once rather than after the
 * synth, and a repair of Vault never runs beside another machine's deploy.
 */
export async function runPhases(run: PipelineRun, phases: readonly Phase[]): Promise<void> {
  const { env, command } = run;
  let recovered = false;
  for (const s of steps(env, command, phases, run.deployed)) {
    try {
      if (!('stacks' in s)) {
        await s.phase[command === 'deploy' ? 'up' : 'down']!(run);
        continue;
      }
      if (!recovered) {
        await holdingStateLock(env, `${env.name}-secrets`, command, () => recoverInterruptedTeardown(env, command === 'deploy'));
        recovered = true;
      }
      Object.assign(run.outputs, await terraformStacks(env, command, [...s.stacks]));
    } catch (e: any) {
      if ((!('stacks' in s) && !s.phase.midway) || e instanceof StateLockedError || e instanceof StateTrustError) throw e;
      throw command === 'deploy' ? deployFailed(env, e) : destroyFailed(env, e);
    }
  }
}

function deployFailed(env: EnvironmentConfig, e: Error): Error {
  return new Error(
    `deploy of ${env.name} failed: ${e.message}. The environment may be partly deployed. ` +
      `Fix the cause shown above and run 'npm run deploy -- ${env.name}' again (it picks up where it stopped), ` +
      `or remove what was created with 'npm run destroy -- ${env.name}'.`,
  );
}

function destroyFailed(env: EnvironmentConfig, e: Error): Error {
  return new Error(
    `destroy of ${env.name} failed: ${e.message}. Fix the cause shown above and run 'npm run destroy -- ${env.name}' again. ` +
      (env.infrastructure === 'docker'
        ? `To remove the containers by hand: docker rm -f $(docker ps -aq --filter name=pgvault-${env.name}-); docker volume rm $(docker volume ls -q --filter name=pgvault-${env.name}-); docker network rm pgvault-${env.name}; then delete ${localDir(env.name)}.`
        : ''),
  );
}
