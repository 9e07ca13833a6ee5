import * as path from 'node:path';
import { EnvironmentConfig, localDir } from './config';

// Where each stack's state lives. Kept apart from common.ts so that the deploy path reads it
// without loading cdktf.

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
