/** Bounded exponential backoff with full jitter. Pure; `random` is injectable for tests. */
export interface BackoffOptions {
  /** First delay. @default 250 */
  readonly initialMillis?: number;
  /** Ceiling for any one delay. @default 5000 */
  readonly maxMillis?: number;
  /** @default 2 */
  readonly factor?: number;
}

export function backoffDelay(attempt: number, opts: BackoffOptions = {}, random: () => number = Math.random): number {
  const initial = opts.initialMillis ?? 250;
  const max = opts.maxMillis ?? 5000;
  const factor = opts.factor ?? 2;
  const ceiling = Math.min(max, initial * Math.pow(factor, Math.max(0, attempt)));
  // Half fixed, half random: never zero, never above the ceiling.
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** When to act on a lease of `ttlSeconds`: at `fraction` of it, give or take `jitter` of it. */
export function renewalDelayMillis(ttlSeconds: number, fraction = 2 / 3, jitter = 0.1, random: () => number = Math.random): number {
  const base = ttlSeconds * fraction;
  const spread = ttlSeconds * jitter * (random() * 2 - 1);
  return cappedDelay(Math.max(200, (base + spread) * 1000));
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, cappedDelay(ms)));

/** The longest delay setTimeout honours (2^31-1 ms, about 24.8 days); a longer one fires after 1 ms. */
export const MAX_TIMER_MILLIS = 2 ** 31 - 1;

/** A delay safe for setTimeout: at most MAX_TIMER_MILLIS. A timer that fires early re-checks and sets the next one. */
export function cappedDelay(ms: number): number {
  return Math.min(MAX_TIMER_MILLIS, Math.max(0, Math.round(ms)));
}
