/** `.local/<env>/outputs.json`: what the app needs from a deploy, written by the deploy itself. */
import * as path from 'node:path';
import { localDir } from '../stacks/config';

export function outputsFile(envName: string): string {
  return path.join(localDir(envName), 'outputs.json');
}
