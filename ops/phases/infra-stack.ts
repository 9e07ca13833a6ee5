/**
 * The `<env>-infra` stack (docker environments): the Postgres and Vault containers, their
 * network and volumes (stacks/infra-stack.ts). up: Terraform deploys it; down: destroys it.
 */
import { Phase } from './phase';

export const infraStack: Phase = {
  name: 'infra-stack',
  appliesTo: (env) => env.infrastructure === 'docker',
  stack: 'infra',
};
