/** Pure helpers of the benchmark: percentiles, ratios, bounded concurrency, per-window rates. */

/** The p-th percentile (0-100) of ascending `sorted`, nearest rank; NaN when empty. */
export function percentile(sorted: readonly number[], p: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/** The median of values in any order; NaN when empty. */
export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  if (!s.length) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** `a / b` printed as a ratio ("1.23x"); "n/a" when b is not a positive number. */
export function ratio(a: number, b: number, digits = 2): string {
  return b > 0 && Number.isFinite(a) ? `${(a / b).toFixed(digits)}x` : 'n/a';
}

/**
 * Runs `fn(i, worker)` for i in 0..total-1 with at most `concurrency` calls in flight; resolves with the
 * results in order. The first failure stops new calls and rejects once those in flight are done.
 */
export async function mapBounded<T>(total: number, concurrency: number, fn: (i: number, worker: number) => Promise<T>): Promise<T[]> {
  const out = new Array<T>(total);
  let next = 0;
  let failure: { error: unknown } | undefined;
  await Promise.all(
    Array.from({ length: Math.max(1, Math.min(concurrency, total)) }, async (_, worker) => {
      while (!failure && next < total) {
        const i = next++;
        try {
          out[i] = await fn(i, worker);
        } catch (error) {
          failure ??= { error };
        }
      }
    }),
  );
  if (failure) throw failure.error;
  return out;
}

/**
 * Queries per second around events: for each event time, the completions in the window of
 * `windowMillis` centred on it, per second; and the steady rate, over every whole window that
 * overlaps no event's window. Times are ms on one clock; completions need not be sorted.
 */
export function ratesAroundEvents(
  completions: readonly number[],
  events: readonly number[],
  fromMillis: number,
  toMillis: number,
  windowMillis = 1000,
): { around: number[]; steady: number } {
  const perSecond = (n: number) => n / (windowMillis / 1000);
  const count = (a: number, b: number) => completions.reduce((n, t) => n + (t >= a && t < b ? 1 : 0), 0);
  const half = windowMillis / 2;
  const around = events.map((e) => perSecond(count(e - half, e + half)));
  const steadyWindows: number[] = [];
  for (let a = fromMillis; a + windowMillis <= toMillis; a += windowMillis) {
    if (events.some((e) => e + half > a && e - half < a + windowMillis)) continue;
    steadyWindows.push(perSecond(count(a, a + windowMillis)));
  }
  return { around, steady: median(steadyWindows) };
}

/** Revocations per second, and ms per lease, for `n` leases gone in `seconds`. */
export function perLease(n: number, seconds: number): { perSecond: number; msPerLease: number } {
  return { perSecond: seconds > 0 ? n / seconds : NaN, msPerLease: n > 0 ? (seconds * 1000) / n : NaN };
}
