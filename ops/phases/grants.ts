/**
 * up: every deploy brings the group roles' grants back to the environment's file, whether or
 *     not Terraform reran the bootstrap (ops/postgres/db-bootstrap.ts).
 * down: nothing; the secrets stack's teardown hook removes the group roles.
 */
import { convergeGrants } from '../postgres/db-bootstrap';
import { Phase } from './phase';

export const grants: Phase = {
  name: 'grants',
  midway: true,
  up: async ({ env }) => {
    await convergeGrants(env);
  },
};
