/**
 * The `<env>-secrets` stack: the database secrets engine, its roles, the apps' AppRoles and
 * policies (stacks/secrets-stack.ts). up: Terraform deploys it, and its hooks bootstrap
 * Postgres and write the outputs; down: destroys it, and its hooks revoke the leases and
 * tear down what the bootstrap created (ops/hooks.ts).
 */
import { Phase } from './phase';

export const secretsStack: Phase = {
  name: 'secrets-stack',
  stack: 'secrets',
};
