/**
 * Checks that run before a deploy changes anything, for what Terraform cannot see:
 * the contents of an existing Docker volume.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { EnvironmentConfig } from '../../stacks/config';

/** A deploy would break something that is already there; nothing was changed. */
export class PreflightError extends Error {
  public readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'PreflightError';
    this.code = code;
  }
}

export function postgresDataVersionMismatch(env: EnvironmentConfig, volume: string, dataMajor: string, image: string, imageMajor: string): PreflightError {
  return new PreflightError(
    'PG_DATA_VERSION',
    `environment "${env.name}": the Postgres data volume ${volume} holds a PostgreSQL ${dataMajor} cluster, but the image ${image} ` +
      `runs PostgreSQL ${imageMajor}, which cannot open it; the deploy stopped before changing anything. ` +
      `Fix: destroy, then deploy: 'npm run destroy -- ${env.name}' then 'npm run deploy -- ${env.name}' ` +
      `(this deletes the volume and its data; to keep the data, dump it first with pg_dumpall from the running container and restore it afterwards). ` +
      `To stay on PostgreSQL ${dataMajor} instead, set "docker.postgresImage" in the environment file (it wins over POSTGRES_IMAGE), or POSTGRES_IMAGE when the file sets none, to a PostgreSQL ${dataMajor} image.`,
  );
}

/** The name of the data volume the infra stack gives the environment's Postgres. */
export function postgresDataVolume(env: EnvironmentConfig): string {
  return `${env.postgres.host}-data`;
}

/**
 * The PostgreSQL major version an image runs: its PG_MAJOR variable (the official image's
 * contract, which the local image follows), else the number its tag starts with
 * (`postgres:17`, `postgres:17.6-bookworm`); undefined when neither says.
 */
export function imagePostgresMajor(image: string, imageEnv: readonly string[] | undefined): string | undefined {
  const fromEnv = imageEnv?.find((e) => e.startsWith('PG_MAJOR='))?.slice('PG_MAJOR='.length);
  if (fromEnv) return fromEnv;
  const tag = image.includes(':') ? image.slice(image.lastIndexOf(':') + 1) : '';
  return tag.match(/^(\d+)(?:[.-]|$)/)?.[1];
}

function docker(...args: string[]): { ok: boolean; out: string } {
  const r = spawnSync('docker', args, { encoding: 'utf8', timeout: 120_000, killSignal: 'SIGKILL' });
  if ((r.error as any)?.code === 'ETIMEDOUT') throw new Error(`docker ${args.join(' ')} did not answer within 120 s and was killed; check the Docker engine (docker info)`);
  return { ok: r.status === 0, out: (r.stdout ?? '').trim() };
}

/** PG_VERSION of the cluster on a volume: read on the host when possible, else through a throwaway container. */
function volumePgVersion(volume: string, mountpoint: string, image: string): string | undefined {
  try {
    return fs.readFileSync(path.join(mountpoint, 'PG_VERSION'), 'utf8').trim() || undefined;
  } catch (e: any) {
    if (e.code === 'ENOENT' && fs.existsSync(mountpoint)) return undefined;
  }
  const r = docker('run', '--rm', '--network', 'none', '--entrypoint', 'sh', '-v', `${volume}:/data:ro`, image, '-c', 'cat /data/PG_VERSION 2>/dev/null || true');
  return r.ok && r.out ? r.out : undefined;
}

/**
 * Fails when the environment's existing Postgres data volume was made by another PostgreSQL
 * major version than its image runs: the new container could not start, and would restart
 * for ever. Harmless when there is no volume yet, or for existing infrastructure.
 */
export function checkPostgresDataVolume(env: EnvironmentConfig): void {
  if (env.infrastructure !== 'docker' || !env.docker) return;
  const volume = postgresDataVolume(env);
  // One call says whether the volume exists and where it is: each docker call costs a deploy ~50 ms.
  const inspectedVolume = docker('volume', 'inspect', '-f', '{{.Mountpoint}}', volume);
  if (!inspectedVolume.ok) return;
  const image = env.docker.postgresImage;
  const inspected = docker('image', 'inspect', '-f', '{{json .Config.Env}}', image);
  const imageMajor = imagePostgresMajor(image, inspected.ok ? JSON.parse(inspected.out) : undefined);
  if (!imageMajor) return;
  const dataMajor = volumePgVersion(volume, inspectedVolume.out, image);
  if (dataMajor && dataMajor !== imageMajor) {
    throw postgresDataVersionMismatch(env, volume, dataMajor, image, imageMajor);
  }
}
