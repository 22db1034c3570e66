import type { ProgressUpdate } from './training-job';

export interface ProgressThrottleOptions {
  /** At most one write per this many ms (default 2000). */
  minIntervalMs?: number;
  /** Log lines kept while waiting; older ones are dropped (default 50). */
  maxPendingLogLines?: number;
  /** Clock, for tests. */
  now?: () => number;
}

/**
 * Coalesces progress updates so a chatty engine (ai-toolkit prints a line per
 * step) cannot flood MongoDB. Pure: it never writes; `offer` returns the merged
 * update when one is due and the caller writes it with
 * TrainingJobRepository.updateProgress. Phase changes and terminal events pass
 * `{ force: true }` (or call `flush`) so they are never held back.
 */
export class ProgressThrottle {
  private pending: ProgressUpdate | null = null;
  private lastWriteAt = Number.NEGATIVE_INFINITY;
  private readonly minIntervalMs: number;
  private readonly maxPendingLogLines: number;
  private readonly now: () => number;

  constructor(options: ProgressThrottleOptions = {}) {
    this.minIntervalMs = options.minIntervalMs ?? 2000;
    this.maxPendingLogLines = options.maxPendingLogLines ?? 50;
    this.now = options.now ?? Date.now;
  }

  /** Merge `update` into the pending one; return what to write now, or null to wait. */
  offer(update: ProgressUpdate, opts: { force?: boolean } = {}): ProgressUpdate | null {
    this.pending = mergeProgress(this.pending, update, this.maxPendingLogLines);
    if (opts.force || this.now() - this.lastWriteAt >= this.minIntervalMs) return this.flush();
    return null;
  }

  /** Whatever is pending (for a timer tick or before a terminal write), or null. */
  flush(): ProgressUpdate | null {
    const out = this.pending;
    this.pending = null;
    if (out) this.lastWriteAt = this.now();
    return out;
  }

  /** Milliseconds until a pending update may be written (0 if due now or nothing pending). */
  dueInMs(): number {
    if (!this.pending) return 0;
    return Math.max(0, this.minIntervalMs - (this.now() - this.lastWriteAt));
  }

  hasPending(): boolean {
    return this.pending !== null;
  }
}

/** Later values win; log lines accumulate (bounded). */
export function mergeProgress(a: ProgressUpdate | null, b: ProgressUpdate, maxLogLines = 50): ProgressUpdate {
  const merged: ProgressUpdate = { ...(a ?? {}) };
  for (const key of ['progress', 'currentStep', 'totalSteps', 'currentLoss', 'etaSeconds'] as const) {
    if (b[key] !== undefined) (merged as Record<string, unknown>)[key] = b[key];
  }
  if (b.logLines && b.logLines.length > 0) {
    merged.logLines = [...(a?.logLines ?? []), ...b.logLines].slice(-maxLogLines);
  }
  return merged;
}
