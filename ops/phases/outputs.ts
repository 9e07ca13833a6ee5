/**
 * up: `.local/<env>/outputs.json`, from the secrets stack's outputs. The stack's hook writes it
 *     only where Terraform applied a change: with shared state, a deploy from another clone
 *     that changed nothing would leave this machine without it, or with a stale one.
 * down: nothing of its own; the file goes with the other generated files (local-files).
 */
import { writeOutputsFile } from '../local/outputs';
import { Phase } from './phase';

export const outputs: Phase = {
  name: 'outputs',
  up: ({ env, outputs: byStack }) => writeOutputsFile(env, byStack[`${env.name}-secrets`] ?? {}),
};
