#!/usr/bin/env node
/**
 * The build, skipped when nothing it reads has changed since the last successful one.
 *
 *   node scripts/build.js                           build if needed
 *   node scripts/build.js --then <file.js> [args]   then run <file.js> in this process (one Node start-up)
 *   node scripts/build.js --force                   build whatever the stamp says
 *
 * Plain JavaScript, so that it runs before anything is compiled. It is the one place that
 * knows what the build reads (INPUTS) and how to build (package.json's "build" script, run
 * here without npm's start-up). The decision: every file under INPUTS (SKIP_DIRS left out) is
 * hashed with its path, and the hash of them all is compared with the one in STAMP, written
 * after the last successful build. Any file added, removed or edited rebuilds (a file only
 * touched does not: tsc would emit nothing new); a failed build removes the stamp.
 */
'use strict';
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const ROOT = path.resolve(__dirname, '..');

/** What the build reads, relative to the repository root: files, or directories walked whole. */
const INPUTS = [
  'package.json',
  'package-lock.json',
  // npm rewrites it on every install: a changed node_modules rebuilds too.
  'node_modules/.package-lock.json',
  'tsconfig.json',
  'stacks',
  'app',
  'api',
  'ops',
  'demo',
  'scripts',
  'test',
  'bench',
];

/** Directory names under INPUTS that hold installed packages or build output, not sources. */
const SKIP_DIRS = new Set(['node_modules', 'dist', 'cdktf.out', '.local', '.git']);

/** Build outputs that must exist for a matching stamp to count (a deleted output rebuilds). */
const OUTPUTS = ['dist/scripts/cli.js', 'dist/stacks/main.js', 'dist/ops/hooks.js', 'app/dist/index.js'];

/** Written after a successful build: the hash of the inputs it was made from. */
const STAMP = path.join(ROOT, 'dist', '.build-stamp');

/** Hash of every input file's path and content (about 1 MB in all: a few milliseconds). */
function inputsHash() {
  const lines = [];
  const walk = (rel) => {
    let st;
    try {
      st = fs.statSync(path.join(ROOT, rel));
    } catch {
      lines.push(`${rel} absent`);
      return;
    }
    if (st.isDirectory()) {
      for (const e of fs.readdirSync(path.join(ROOT, rel)).sort()) {
        if (!SKIP_DIRS.has(e)) walk(path.join(rel, e));
      }
    } else {
      lines.push(`${rel} ${crypto.createHash('sha256').update(fs.readFileSync(path.join(ROOT, rel))).digest('hex')}`);
    }
  };
  INPUTS.forEach(walk);
  return crypto.createHash('sha256').update(lines.join('\n')).digest('hex');
}

/** Builds when an input changed (or always, with force). Returns the inputs' hash; exits on a failed build. */
function ensureBuilt(force = false) {
  const hash = inputsHash();
  if (!force && OUTPUTS.every((f) => fs.existsSync(path.join(ROOT, f)))) {
    try {
      if (fs.readFileSync(STAMP, 'utf8').trim() === hash) return hash;
    } catch {
      // no stamp: build
    }
  }
  fs.rmSync(STAMP, { force: true });
  const command = require(path.join(ROOT, 'package.json')).scripts.build;
  const r = spawnSync(command, {
    cwd: ROOT,
    shell: true,
    stdio: 'inherit',
    env: { ...process.env, PATH: `${path.join(ROOT, 'node_modules', '.bin')}${path.delimiter}${process.env.PATH ?? ''}` },
  });
  if (r.status !== 0) {
    console.error(`build failed (${command} exited with ${r.status ?? r.signal}); fix the error above and run it again`);
    process.exit(r.status || 1);
  }
  fs.mkdirSync(path.dirname(STAMP), { recursive: true });
  fs.writeFileSync(`${STAMP}.${process.pid}`, `${hash}\n`);
  fs.renameSync(`${STAMP}.${process.pid}`, STAMP);
  return hash;
}

module.exports = { ensureBuilt, inputsHash, STAMP };

if (require.main === module) {
  const args = process.argv.slice(2);
  const force = args[0] === '--force';
  ensureBuilt(force);
  const then = args.indexOf('--then');
  if (then >= 0) {
    const file = path.resolve(ROOT, args[then + 1]);
    process.argv = [process.argv[0], file, ...args.slice(then + 2)];
    require(file);
  }
}
