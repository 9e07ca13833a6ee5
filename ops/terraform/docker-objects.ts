/**
 * What Docker holds of one environment, asked of Docker itself (not of the state): the destroy
 * deletes `.local/<env>` only when this is empty.
 */
import { spawnSync } from 'node:child_process';
import { EnvironmentConfig, listEnvironments, localDir } from '../../stacks/config';
import { DockerObjects, dockerUnanswered, environmentNames } from './state-trust';

/** How long one `docker ... ls` may take before the answer counts as "unknown". */
export const DOCKER_LIST_TIMEOUT_MS = 15_000;

function list(env: EnvironmentConfig, args: string[], timeoutMs: number): string[] {
  const r = spawnSync('docker', [...args, '--filter', `name=pgvault-${env.name}`, '--format', args[0] === 'ps' ? '{{.Names}}' : '{{.Name}}'], {
    encoding: 'utf8',
    timeout: timeoutMs,
    killSignal: 'SIGKILL',
  });
  const what = `docker ${args.join(' ')}`;
  if (r.error) {
    const why = (r.error as NodeJS.ErrnoException).code === 'ETIMEDOUT' ? `no answer within ${timeoutMs / 1000}s` : r.error.message;
    throw dockerUnanswered(env.name, localDir(env.name), `${what}: ${why}`);
  }
  if (r.status !== 0) throw dockerUnanswered(env.name, localDir(env.name), `${what} exited with ${r.status}: ${(r.stderr ?? '').trim().slice(0, 300)}`);
  return r.stdout.split('\n').map((l) => l.trim()).filter(Boolean);
}

/**
 * The environment's containers (running or not), volumes and networks. Throws
 * DESTROY_DOCKER_UNANSWERED when Docker does not answer in time: unknown is not "none".
 */
export function environmentDockerObjects(env: EnvironmentConfig, timeoutMs = DOCKER_LIST_TIMEOUT_MS): DockerObjects {
  let others: string[] = [];
  try {
    others = listEnvironments();
  } catch {
    // no environments directory to list: every pgvault-<env>-* name counts as the environment's
  }
  return {
    containers: environmentNames(env.name, list(env, ['ps', '-a'], timeoutMs), others),
    volumes: environmentNames(env.name, list(env, ['volume', 'ls'], timeoutMs), others),
    networks: environmentNames(env.name, list(env, ['network', 'ls'], timeoutMs), others),
  };
}

export const isEmpty = (o: DockerObjects): boolean => !o.containers.length && !o.volumes.length && !o.networks.length;
