/**
 * up (a Vault cluster, `docker.vaultNodes`): each node's configuration, TLS and seal files,
 *     and Postgres's TLS and replication files, made outside Terraform so that no key is ever
 *     in state (ops/vault/vault-cluster.ts, from stacks/cluster-files.ts).
 * down: nothing of its own; the files go with `.local/<env>` (local-files).
 */
import { prepareClusterFiles, preparePostgresFiles } from '../vault/vault-cluster';
import { Phase } from './phase';

export const clusterFiles: Phase = {
  name: 'cluster-files',
  appliesTo: (env) => Boolean(env.docker?.vaultNodes),
  midway: true,
  up: ({ env }) => {
    prepareClusterFiles(env);
    preparePostgresFiles(env);
  },
};
