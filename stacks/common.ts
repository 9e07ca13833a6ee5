import * as path from 'node:path';
import { TerraformStack } from 'cdktf';
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
