/**
 * Relative links and anchors in Markdown, resolved as GitHub renders them: pure functions over
 * text, with the file system passed in, so the unit test can run them on fixtures too.
 */
import * as path from 'node:path';

/** What GitHub keeps of a heading's text for its anchor: letters, marks, digits, `_`, `-` and spaces. */
const NOT_KEPT = /[^\p{L}\p{M}\p{Nd}\p{Nl}\p{Pc}\- ]/gu;

const NAMED_ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

/** The character an HTML entity renders (named ones of the five XML entities, or numeric). */
function decodeEntity(e: string): string {
  const lower = e.toLowerCase();
  if (lower in NAMED_ENTITIES) return NAMED_ENTITIES[lower];
  return String.fromCodePoint(lower.startsWith('#x') ? parseInt(lower.slice(2), 16) : parseInt(lower.slice(1), 10));
}

/** A heading's text as rendered: links become their text; code, emphasis and HTML marks go. */
export function headingText(raw: string): string {
  return raw
    .replace(/\s+#+\s*$/, '') // the optional closing sequence of an ATX heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1')
    .replace(/<[^>]+>/g, '')
    .replace(/&(amp|lt|gt|quot|apos|#\d+|#x[\da-f]+);/gi, (_, e: string) => decodeEntity(e))
    .replace(/`/g, '')
    .replace(/(^|[^\p{L}\p{N}])_+([^_]+)_+(?=$|[^\p{L}\p{N}])/gu, '$1$2')
    .trim();
}

/** The anchor GitHub gives a heading, before duplicates are numbered. */
export function githubSlug(text: string): string {
  return headingText(text).toLowerCase().replace(NOT_KEPT, '').replace(/ /g, '-');
}

/** The lines outside fenced code blocks, each with its 1-based number. */
function proseLines(markdown: string): { line: number; text: string }[] {
  const out: { line: number; text: string }[] = [];
  let fence: string | undefined;
  markdown.split('\n').forEach((text, i) => {
    const open = /^ {0,3}(`{3,}|~{3,})/.exec(text);
    if (fence) {
      if (open && open[1][0] === fence[0] && open[1].length >= fence.length && text.trim() === open[1]) fence = undefined;
      return;
    }
    if (open) {
      fence = open[1];
      return;
    }
    out.push({ line: i + 1, text });
  });
  return out;
}

/** Every anchor of a document: its headings' slugs, duplicates numbered `-1`, `-2` as GitHub does, and explicit HTML ids. */
export function anchors(markdown: string): Set<string> {
  const seen = new Set<string>();
  const count = new Map<string, number>();
  for (const { text } of proseLines(markdown)) {
    const heading = /^ {0,3}#{1,6}(?:\s+(.*))?$/.exec(text);
    if (heading) {
      const base = githubSlug(heading[1] ?? '');
      let slug = base;
      while (seen.has(slug)) {
        const n = (count.get(base) ?? 0) + 1;
        count.set(base, n);
        slug = `${base}-${n}`;
      }
      seen.add(slug);
      continue;
    }
    for (const m of text.matchAll(/<a\s+(?:name|id)="([^"]+)"/g)) seen.add(m[1]);
  }
  return seen;
}

export interface MarkdownLink {
  readonly line: number;
  readonly target: string;
}

/** The link targets of a document: inline links, images and reference definitions, outside code. */
export function links(markdown: string): MarkdownLink[] {
  const out: MarkdownLink[] = [];
  for (const { line, text } of proseLines(markdown)) {
    const prose = text.replace(/(`+)(?:(?!\1).)+?\1/g, '');
    for (const m of prose.matchAll(/\]\(\s*(?:<([^>]*)>|([^\s)]+))(?:\s+"[^"]*")?\s*\)/g)) out.push({ line, target: m[1] ?? m[2] });
    const def = /^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?/.exec(prose);
    if (def) out.push({ line, target: def[1] });
  }
  return out;
}

/** How the check reads the repository: whether a path exists, and a Markdown file's text. */
export interface FileReader {
  exists(absPath: string): boolean;
  read(absPath: string): string;
}

export interface LinkProblem {
  readonly file: string;
  readonly line: number;
  readonly link: string;
  readonly reason: string;
}

/** A percent-decoded link part, or null when it is not valid percent-encoding. */
function decoded(part: string): string | null {
  try {
    return decodeURIComponent(part);
  } catch {
    return null;
  }
}

const EXTERNAL = /^(?:[a-z][a-z0-9+.-]*:|\/\/)/i;

/**
 * Checks every relative link and anchor of `files` (paths relative to `root`). A link resolves
 * when its file or folder exists, and its `#anchor`, in a Markdown file, is one of that file's
 * anchors. Links with a scheme (http, https, mailto) are not checked.
 */
export function checkLinks(root: string, files: readonly string[], reader: FileReader): LinkProblem[] {
  const problems: LinkProblem[] = [];
  const anchorCache = new Map<string, Set<string>>();
  const anchorsOf = (abs: string) => {
    let a = anchorCache.get(abs);
    if (!a) anchorCache.set(abs, (a = anchors(reader.read(abs))));
    return a;
  };
  for (const file of files) {
    const abs = path.join(root, file);
    for (const { line, target } of links(reader.read(abs))) {
      if (EXTERNAL.test(target)) continue;
      const hash = target.indexOf('#');
      const rawPath = hash < 0 ? target : target.slice(0, hash);
      const problem = (reason: string) => problems.push({ file, line, link: target, reason });
      const fragment = hash < 0 ? undefined : decoded(target.slice(hash + 1));
      const pathPart = decoded(rawPath.split('?')[0]);
      if (fragment === null || pathPart === null) {
        problem('not valid percent-encoding');
        continue;
      }
      const dest = pathPart === '' ? abs : pathPart.startsWith('/') ? path.join(root, pathPart) : path.resolve(path.dirname(abs), pathPart);
      if (!reader.exists(dest)) {
        problem(`${path.relative(root, dest)} does not exist`);
        continue;
      }
      if (fragment === undefined || !dest.endsWith('.md')) continue;
      if (!anchorsOf(dest).has(fragment)) {
        problem(`no heading of ${path.relative(root, dest)} has the anchor "#${fragment}"`);
      }
    }
  }
  return problems;
}

/** One line per problem: `file:line: link "target": reason`. */
export function formatProblems(problems: readonly LinkProblem[]): string {
  return problems.map((p) => `${p.file}:${p.line}: link "${p.link}": ${p.reason}`).join('\n');
}
