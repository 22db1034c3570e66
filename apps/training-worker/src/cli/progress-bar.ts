/**
 * What `cli follow` draws, as pure functions of a job's snapshot (no I/O, no
 * clock): the single live line a terminal redraws, the plain lines a log or a
 * pipe gets, and the result table the demo ends with. Kept apart from the
 * polling so every shape a person sees is unit-tested.
 */

/** The parts of a job and its attempt record that `follow` shows. */
export interface FollowSnapshot {
  status: string;
  step: number | null;
  total: number | null;
  loss: number | null;
  /** The worker's estimate when it wrote `updatedAt`. */
  etaSeconds: number | null;
  updatedAt: Date | null;
  startedAt: Date | null;
  /** Checkpoints stored so far (the attempt record's, else the job's mirror). */
  checkpoints: number;
  failureReason: string | null;
  failureClass: string | null;
}

const TERMINAL = new Set(['COMPLETED', 'FAILED', 'CANCELLED']);

export function isTerminalStatus(status: string): boolean {
  return TERMINAL.has(status);
}

/** The job's own fields, read defensively (any client can write the document). */
export function snapshotOf(job: Record<string, unknown>, attemptCheckpoints?: number): FollowSnapshot {
  const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
  const date = (v: unknown): Date | null => (v instanceof Date ? v : typeof v === 'string' && !Number.isNaN(Date.parse(v)) ? new Date(v) : null);
  const str = (v: unknown): string | null => (typeof v === 'string' && v !== '' ? v : null);
  const mirrored = Array.isArray(job.checkpoints) ? job.checkpoints.length : 0;
  return {
    status: str(job.status) ?? 'UNKNOWN',
    step: num(job.currentStep),
    total: num(job.totalSteps),
    loss: num(job.currentLoss),
    etaSeconds: num(job.etaSeconds),
    updatedAt: date(job.updatedAt),
    startedAt: date(job.startedAt),
    checkpoints: attemptCheckpoints ?? mirrored,
    failureReason: str(job.failureReason),
    failureClass: str(job.failureClass),
  };
}

/** 75 -> "1:15", 3725 -> "1:02:05". */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** The ETA now: the worker's estimate less the time since it was written (writes are throttled), never below 0. */
export function etaNow(s: FollowSnapshot, now: Date): number | null {
  if (s.etaSeconds === null || isTerminalStatus(s.status)) return null;
  const since = s.updatedAt ? Math.max(0, (now.getTime() - s.updatedAt.getTime()) / 1000) : 0;
  return Math.max(0, s.etaSeconds - since);
}

export function formatLoss(loss: number | null): string {
  if (loss === null) return '-';
  return Math.abs(loss) >= 0.001 || loss === 0 ? loss.toFixed(4) : loss.toExponential(2);
}

/** Fraction done in [0, 1], or null when the total is not known yet. */
function fraction(s: FollowSnapshot): number | null {
  if (s.status === 'COMPLETED') return 1;
  if (s.total === null || s.total <= 0) return null;
  return Math.min(1, Math.max(0, (s.step ?? 0) / s.total));
}

const SPINNER = ['|', '/', '-', '\\'];

/**
 * The live line: `RUNNING     [#######.......]  60/100  loss 0.1234  ETA 0:12`,
 * never wider than `width` (the terminal's columns, less one so no terminal
 * wraps it). Parts are dropped from the right when narrow; the bar takes the
 * room that is left. `tick` turns a spinner while the total is unknown.
 */
export function renderLiveLine(s: FollowSnapshot, width: number, now: Date, tick = 0): string {
  const cols = Math.max(10, width - 1);
  const phase = s.status.padEnd(12);
  const f = fraction(s);
  const steps = s.total !== null ? `${s.step ?? 0}/${s.total}` : s.step !== null ? `step ${s.step}` : '';
  const eta = etaNow(s, now);
  const tail = [
    steps,
    s.loss !== null ? `loss ${formatLoss(s.loss)}` : '',
    eta !== null ? `ETA ${formatDuration(eta)}` : '',
    s.checkpoints > 0 ? `ckpt ${s.checkpoints}` : '',
  ].filter(Boolean);
  const barFor = (room: number): string => {
    const inner = Math.min(40, room - 2);
    if (inner < 5) return '';
    if (f === null) {
      const pos = tick % inner;
      return `[${' '.repeat(pos)}${SPINNER[tick % SPINNER.length]}${' '.repeat(inner - pos - 1)}]`;
    }
    const done = Math.round(f * inner);
    return `[${'#'.repeat(done)}${'.'.repeat(inner - done)}]`;
  };
  // Drop trailing parts until the phase, a bar of at least 5 cells and the parts fit.
  for (let n = tail.length; n >= 0; n--) {
    const right = tail.slice(0, n).join('  ');
    const room = cols - phase.length - (right ? right.length + 2 : 0);
    const bar = barFor(room);
    if (bar) return `${phase}${bar}${right ? `  ${right}` : ''}`;
    if (n === 0) return `${phase}${right}`.slice(0, cols);
  }
  return phase.slice(0, cols);
}

/** A plain line for logs and pipes: `[+0:42] RUNNING step 60/100 loss 0.1234 ETA 0:12`. */
export function renderPlainLine(s: FollowSnapshot, now: Date, what?: string): string {
  const since = s.startedAt ? `[+${formatDuration((now.getTime() - s.startedAt.getTime()) / 1000)}] ` : '';
  const eta = etaNow(s, now);
  const parts = [
    s.status,
    s.total !== null ? `step ${s.step ?? 0}/${s.total}` : s.step !== null ? `step ${s.step}` : '',
    s.loss !== null ? `loss ${formatLoss(s.loss)}` : '',
    eta !== null ? `ETA ${formatDuration(eta)}` : '',
    what ?? '',
  ].filter(Boolean);
  return `${since}${parts.join(' ')}`;
}

/**
 * The plain lines one poll adds: a phase change, each newly stored
 * checkpoint, and every `everySteps` steps (crossing a multiple of it).
 * `prev` null: the first poll, which always prints one line.
 */
export function plainUpdates(prev: FollowSnapshot | null, next: FollowSnapshot, now: Date, everySteps: number): string[] {
  if (!prev) return [renderPlainLine(next, now)];
  const lines: string[] = [];
  if (next.checkpoints > prev.checkpoints) {
    lines.push(renderPlainLine(next, now, `checkpoint ${next.checkpoints}${next.checkpoints - prev.checkpoints > 1 ? ` (+${next.checkpoints - prev.checkpoints})` : ''} stored`));
  }
  if (next.status !== prev.status) {
    lines.push(renderPlainLine(next, now));
  } else if (lines.length === 0 && everySteps > 0 && next.step !== null && Math.floor(next.step / everySteps) > Math.floor((prev.step ?? 0) / everySteps)) {
    lines.push(renderPlainLine(next, now));
  }
  return lines;
}

/** Steps between plain progress lines: about ten lines for a whole training. */
export function plainEvery(total: number | null): number {
  return total && total > 0 ? Math.max(1, Math.round(total / 10)) : 10;
}

/** How a finished follow ends: the exit code and the line saying why. */
export function outcomeOf(s: FollowSnapshot, jobId: string): { code: number; line: string } {
  if (s.status === 'COMPLETED') return { code: 0, line: `job ${jobId} COMPLETED${s.total !== null ? ` after ${s.step ?? s.total}/${s.total} steps` : ''}${s.loss !== null ? `, final loss ${formatLoss(s.loss)}` : ''}` };
  const why = s.failureReason ?? (s.status === 'CANCELLED' ? 'cancelled (no reason recorded)' : 'no reason recorded');
  return { code: 1, line: `job ${jobId} ${s.status}${s.failureClass ? ` (${s.failureClass})` : ''}: ${why}` };
}

/** What the result table shows; every field may be missing (a job that failed early has no model). */
export interface JobResult {
  jobId: string;
  status: string;
  name: string | null;
  step: number | null;
  total: number | null;
  finalLoss: number | null;
  failureReason: string | null;
  modelUrl: string | null;
  sampleUrls: string[];
  checkpoints: number;
  charged: number;
  refunded: number;
  balance: number | null;
  trainSeconds: number | null;
}

/**
 * The table the demo ends with, at most 14 lines whatever the job: the first
 * two sample URLs are listed and the rest counted, so the whole visible demo
 * stays under 30 lines.
 */
export function renderResultTable(r: JobResult): string[] {
  const row = (label: string, value: string): string => `  ${label.padEnd(12)} ${value}`;
  const lines = ['Result', row('Job', `${r.jobId}${r.name ? `  (${r.name})` : ''}`), row('Status', r.status)];
  if (r.failureReason) lines.push(row('Reason', r.failureReason));
  lines.push(row('Steps', r.total !== null ? `${r.step ?? 0}/${r.total}${r.trainSeconds !== null ? `  in ${formatDuration(r.trainSeconds)}` : ''}` : '-'));
  lines.push(row('Final loss', formatLoss(r.finalLoss)));
  lines.push(row('Model', r.modelUrl ?? '(none)'));
  const shown = r.sampleUrls.slice(0, 2);
  if (shown.length === 0) lines.push(row('Samples', '(none)'));
  shown.forEach((u, i) => lines.push(row(i === 0 ? 'Samples' : '', u)));
  if (r.sampleUrls.length > shown.length) lines.push(row('', `(+${r.sampleUrls.length - shown.length} more: cli show ${r.jobId})`));
  if (r.checkpoints > 0) lines.push(row('Checkpoints', `${r.checkpoints} stored (cli show ${r.jobId})`));
  lines.push(row('Points', `charged ${r.charged}, refunded ${r.refunded}, used ${r.charged - r.refunded}`));
  lines.push(row('Balance', r.balance !== null ? `${r.balance} points` : '-'));
  return lines;
}
