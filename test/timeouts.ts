/**
 * Preloaded by test/run.ts (`node --require`) into every test process: each before/after hook
 * that sets no `timeout` of its own gets PGVAULT_TEST_TIMEOUT_MS. On Node 22 and later,
 * node's --test-timeout (which test/run.ts passes) bounds every test and hook by itself; on
 * Node 20 it bounds a whole file instead, so there the hooks get theirs from here and the
 * tests from the runner's per-file deadline. Tests are not wrapped: node would then report
 * this file as their location.
 */
type Fn = (...args: any[]) => any;

// The module object itself (an import would copy it): the test files call through it.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const mod: Record<string, Fn> = require('node:test');

const timeoutMs = Number(process.env.PGVAULT_TEST_TIMEOUT_MS);

if (Number.isFinite(timeoutMs) && timeoutMs > 0) {
  for (const name of ['before', 'after', 'beforeEach', 'afterEach']) {
    const original = mod[name];
    mod[name] = (fn: Fn, options?: { timeout?: number }) => original(fn, { ...(options ?? {}), timeout: options?.timeout ?? timeoutMs });
  }
}
