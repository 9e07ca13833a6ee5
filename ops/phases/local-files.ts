/**
 * up: the environment's local secrets in `.local/<env>` (made once, mode 0600), and the check
 *     that the Postgres data volume fits the image, before anything is deployed.
 * down: what the deploy generated goes; operator-provided files (existing environments) stay.
 *     Fails closed: `.local/<env>` (with a cluster's seal and recovery keys) goes only once
 *     Docker itself holds no container, volume or network of the environment.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { localDir } from '../../stacks/config';
import { prepareLocalSecrets } from '../local/local-secrets';
import { outputsFile } from '../local/outputs';
import { checkPostgresDataVolume } from '../local/preflight';
import { environmentDockerObjects, isEmpty } from '../terraform/docker-objects';
import { dockerObjectsRemain } from '../terraform/state-trust';
import { Phase } from './phase';

export const localFiles: Phase = {
  name: 'local-files',
  up: ({ env }) => {
    prepareLocalSecrets(env);
    checkPostgresDataVolume(env);
  },
  down: ({ env, deployed }) => {
    const dir = localDir(env.name);
    if (env.infrastructure === 'docker') {
      const left = environmentDockerObjects(env);
      if (!isEmpty(left)) throw dockerObjectsRemain(env.name, dir, left, deployed.length ? `Terraform destroyed ${deployed.join(' and ')}` : `the state of ${env.name} lists nothing deployed`);
    }
    for (const f of [outputsFile(env.name), env.secretsEngine.setupPasswordFile, path.join(dir, 'state'), path.join(dir, 'app-secret-id')]) {
      fs.rmSync(f, { recursive: true, force: true });
    }
    if (env.infrastructure === 'docker') fs.rmSync(dir, { recursive: true, force: true });
  },
};
