import * as path from 'node:path';
import { LocalBackend, PgBackend, PgBackendConfig, TerraformStack } from 'cdktf';
import { EnvironmentConfig, localDir } from './config';

/**
 * The provider versions this project is built and tested with. The prebuilt
 * bindings pin docker "~> 3.0"; the offline toolchain builds docker 4.6.0 (the
 * version the Go module proxy serves here), whose resources we use unchanged,
 * so the constraint is widened to take either.
 */
export const PROVIDER_CONSTRAINTS = {
  vault: { source: 'hashicorp/vault', version: '~> 5.0' },
  docker: { source: 'kreuzwerker/docker', version: '>= 3.6.2, < 5.0.0' },
} as const;

export function pinProviders(stack: TerraformStack): void {
  for (const [name, req] of Object.entries(PROVIDER_CONSTRAINTS)) {
    if (stack.node.tryFindChild(name)) {
      stack.addOverride(`terraform.required_providers.${name}`, req);
    }
  }
}

/** Local state lives with the environment's other local files, never in the repository. */
export function stateFile(env: EnvironmentConfig, stackId: string): string {
  return path.join(localDir(env.name), 'state', `${stackId}.tfstate`);
}

/** The pg backend's schema for one stack: `<schemaPrefix>_<stack id>`, dashes as underscores. */
export function stateSchema(schemaPrefix: string, stackId: string): string {
  return `${schemaPrefix}_${stackId.replace(/-/g, '_')}`;
}

/**
 * The pg backend block of a stack, the same for the stack and for the deploy's look at its state.
 * No conn_str: Terraform reads PG_CONN_STR, which the deploy sets from the connection file.
 */
export function pgBackendAttributes(schemaPrefix: string, stackId: string): { schema_name: string } {
  return { schema_name: stateSchema(schemaPrefix, stackId) };
}

/** The stack's backend, from the environment's "state" setting. */
export function stateBackend(stack: TerraformStack, env: EnvironmentConfig, stackId: string): void {
  if (env.state.backend === 'local') {
    new LocalBackend(stack, { path: stateFile(env, stackId) });
  } else {
    // connStr is left out on purpose (PgBackendConfig requires it): a literal would put the credentials in cdk.tf.json.
    new PgBackend(stack, { schemaName: pgBackendAttributes(env.state.schemaPrefix, stackId).schema_name } as PgBackendConfig);
  }
}
