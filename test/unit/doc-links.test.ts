/**
 * Every relative link and anchor in README.md, docs/*.md and app/README.md resolves: the file
 * exists, and an `#anchor` is a heading's anchor as GitHub computes it. External links are not
 * checked (no network).
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO_ROOT } from '../../stacks/config';
import { anchors, checkLinks, formatProblems, githubSlug, links, type FileReader } from '../markdown-links';

const T = { timeout: 10_000 };

/** The documents a newcomer reads: the README, every page under docs/, the library's README. */
function documents(): string[] {
  const docs = fs.readdirSync(path.join(REPO_ROOT, 'docs')).filter((f) => f.endsWith('.md')).sort();
  return ['README.md', ...docs.map((f) => `docs/${f}`), 'app/README.md'];
}

const repoReader: FileReader = {
  exists: (p) => fs.existsSync(p),
  read: (p) => fs.readFileSync(p, 'utf8'),
};

/** A small in-memory repository (a fake named as such): path → text. */
function fakeReader(root: string, files: Record<string, string>): FileReader {
  const abs = new Map(Object.entries(files).map(([k, v]) => [path.join(root, k), v]));
  const dirs = new Set([...abs.keys()].flatMap((k) => { const d: string[] = []; for (let p = path.dirname(k); p.length >= root.length; p = path.dirname(p)) { d.push(p); if (p === root) break; } return d; }));
  return {
    exists: (p) => abs.has(p) || dirs.has(p),
    read: (p) => {
      const text = abs.get(p);
      if (text === undefined) throw new Error(`fake reader: no file ${p}`);
      return text;
    },
  };
}

test('githubSlug follows GitHub: lowercase, punctuation gone except - and _, spaces to -, code marks dropped', T, () => {
  assert.equal(githubSlug('Quick start'), 'quick-start');
  assert.equal(githubSlug('Roles: `access`, `grants` and `migrate`'), 'roles-access-grants-and-migrate');
  assert.equal(githubSlug('`access: migrate`'), 'access-migrate');
  assert.equal(githubSlug('Secret zero: JWT login, wrapped secret_ids, one-use secret_ids'), 'secret-zero-jwt-login-wrapped-secret_ids-one-use-secret_ids');
  assert.equal(githubSlug('Attacks tried (`test/e2e/10-hostile`)'), 'attacks-tried-teste2e10-hostile');
  assert.equal(githubSlug('Deadlines, `504` and `Idempotency-Key`'), 'deadlines-504-and-idempotency-key');
  assert.equal(githubSlug('How `npm run deploy` runs the stacks'), 'how-npm-run-deploy-runs-the-stacks');
  assert.equal(githubSlug('A — B'), 'a--b', 'a dash other than - goes, and each space stays a -');
  assert.equal(githubSlug('Use [the API](api.md) *now*'), 'use-the-api-now');
  assert.equal(githubSlug('Ünïcode Straße 2'), 'ünïcode-straße-2');
  assert.equal(githubSlug('Closing hashes ##'), 'closing-hashes');
  assert.equal(githubSlug('Tom &amp; Jerry &#233;t&#xE9;'), 'tom--jerry-été');
});

test('anchors number duplicate headings -1, -2 and ignore headings inside code fences', T, () => {
  const md = ['# Setup', '## Setup', '```sh', '# Setup', '```', '### Setup', '## Setup-1', '<a id="custom"></a>'].join('\n');
  assert.deepEqual([...anchors(md)].sort(), ['custom', 'setup', 'setup-1', 'setup-1-1', 'setup-2'].sort());
});

test('links finds inline links, images and reference definitions, not those in code', T, () => {
  const md = ['See [a](a.md#x) and ![i](img.png "title").', '`[not](a link)`', '```', '[no](inside.md)', '```', '[ref]: docs/b.md', '[c](<with space.md>)'].join('\n');
  assert.deepEqual(links(md), [
    { line: 1, target: 'a.md#x' },
    { line: 1, target: 'img.png' },
    { line: 6, target: 'docs/b.md' },
    { line: 7, target: 'with space.md' },
  ]);
});

test('fails when a link names a missing file or anchor: the message names the file, the line and the link', T, () => {
  const root = path.join(path.sep, 'repo');
  const reader = fakeReader(root, {
    'README.md': '# Top\n\nSee [ok](docs/a.md#one), [dir](docs), [web](https://example.com/x#y),\n[gone](docs/missing.md) and [bad](docs/a.md#two).\n[self](#top) [noself](#nope)\n',
    'docs/a.md': '# One\n\nBack to [the top](../README.md#top), [broken](../README.md#quick-start).\n',
  });
  const problems = checkLinks(root, ['README.md', 'docs/a.md'], reader);
  assert.equal(formatProblems(problems), [
    'README.md:4: link "docs/missing.md": docs/missing.md does not exist',
    'README.md:4: link "docs/a.md#two": no heading of docs/a.md has the anchor "#two"',
    'README.md:5: link "#nope": no heading of README.md has the anchor "#nope"',
    'docs/a.md:3: link "../README.md#quick-start": no heading of README.md has the anchor "#quick-start"',
  ].join('\n'));
});

test("every relative link and anchor in README.md, docs/ and app/README.md resolves", T, () => {
  const files = documents();
  assert.ok(files.length > 3, `expected README.md, the pages under docs/ and app/README.md (found ${files.join(', ')})`);
  const problems = checkLinks(REPO_ROOT, files, repoReader);
  assert.equal(problems.length, 0, `${problems.length} link(s) do not resolve:\n${formatProblems(problems)}`);
});
