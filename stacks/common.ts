import { LocalBackend, PgBackend, PgBackendConfig, TerraformStack } from 'cdktf';
import { EnvironmentConfig } from './config';
import { pgBackendAttributes, stateFile } from './state-location';

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

export { stateFile, stateSchema, pgBackendAttributes } from './state-location';

/** The stack's backend, from the environment's "state" setting. */
export function stateBackend(stack: TerraformStack, env: EnvironmentConfig, stackId: string): void {
  if (env.state.backend === 'local') {
    new LocalBackend(stack, { path: stateFile(env, stackId) });
  } else {
    // connStr is left out on purpose (PgBackendConfig requires it): a literal would put the credentials in cdk.tf.json.
    new PgBackend(stack, { schemaName: pgBackendAttributes(env.state.schemaPrefix, stackId).schema_name } as PgBackendConfig);
  }
}
