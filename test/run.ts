/**
 * Runs the test files with node's test runner, one file at a time:
 * unit (synth, config, statements) first, then end to end against the real toolchain.
 *   node dist/test/run.js          all
 *   node dist/test/run.js unit     unit only
 *   node dist/test/run.js e2e      end to end only
 *   node dist/test/run.js faults   fault tests of the API only
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';

const layers = process.argv[2] ? [process.argv[2]] : ['unit', 'e2e', 'faults'];
const files: string[] = [];
for (const layer of layers) {
  const dir = path.join(__dirname, layer);
  if (!fs.existsSync(dir)) {
    console.error(`no test layer "${layer}" (expected ${dir})`);
    process.exit(2);
  }
  files.push(...fs.readdirSync(dir).filter((f) => f.endsWith('.test.js')).sort().map((f) => path.join(dir, f)));
}
// cdktf's own output goes to a log file; a failing deploy shows its tail.
const logDir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'pgvault-test-'));
process.env.PGVAULT_CDKTF_LOG ??= path.join(logDir, 'cdktf.log');
console.log(`cdktf output: ${process.env.PGVAULT_CDKTF_LOG}`);
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', '--test-reporter=spec', ...files], { stdio: 'inherit' });
process.exit(r.status ?? 1);
