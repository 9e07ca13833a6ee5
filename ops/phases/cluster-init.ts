/**
 * up (a Vault cluster): between its containers and its configuration, the cluster is
 *     initialized and its nodes joined, its root token and recovery keys kept in
 *     `.local/<env>` (ops/vault/vault-cluster.ts), so that the secrets stack can configure it.
 * down: nothing; the cluster goes with its containers (infra-stack).
 */
import { initializeCluster } from '../vault/vault-cluster';
import { Phase } from './phase';

export const clusterInit: Phase = {
  name: 'cluster-init',
  appliesTo: (env) => Boolean(env.docker?.vaultNodes),
  midway: true,
  up: async ({ env }) => {
    await initializeCluster(env);
  },
};
