/**
 * `cli follow JOB_ID`: polls the job (and its attempt record, for the
 * checkpoints) until it ends. In a terminal it redraws one live line (phase,
 * bar, step/total, loss, ETA) and leaves one line per finished phase; to a
 * pipe or file it writes plain lines (phase changes, checkpoints, every tenth
 * of the steps); `--json` writes one JSON object per change. Exit 0 when the
 * job COMPLETED, 1 when it FAILED or was CANCELLED (the reason is printed), 3
 * when the worker named by `--worker-pid` exited before the job ended, 4 when
 * the job could not be read for `readRetryMs` (the database is down: the job
 * itself may be fine). A failed read is retried with backoff meanwhile.
 */
import {
  formatDuration,
  isTerminalStatus,
  outcomeOf,
  plainEvery,
  plainUpdates,
  renderLiveLine,
  type FollowSnapshot,
} from './progress-bar';

export interface FollowOutput {
  write(text: string): void;
  /** A terminal: redraw one line with \r. */
  isTTY: boolean;
  /** The terminal's width now (it may be resized while following). */
  columns(): number;
}

export interface FollowOptions {
  jobId: string;
  /** The job's snapshot now; null when the job does not exist. */
  read(): Promise<FollowSnapshot | null>;
  out: FollowOutput;
  json?: boolean;
  intervalMs?: number;
  /** Stop (exit 3) when this process is gone and the job has not ended: the demo's background worker. */
  workerPid?: number;
  now?: () => Date;
  sleep?: (ms: number) => Promise<void>;
  alive?: (pid: number) => boolean;
  /** How long reads may keep failing before giving up with exit 4. @default 60 s */
  readRetryMs?: number;
}

export const WORKER_GONE_EXIT = 3;
export const UNREADABLE_EXIT = 4;

export class JobNotFound extends Error {}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** JSON mode: the fields a script needs, dates as ISO strings. */
function jsonLine(jobId: string, s: FollowSnapshot): string {
  return JSON.stringify({ jobId, status: s.status, step: s.step, total: s.total, loss: s.loss, etaSeconds: s.etaSeconds, checkpoints: s.checkpoints, failureReason: s.failureReason, failureClass: s.failureClass, at: s.updatedAt?.toISOString() ?? null });
}

function changed(a: FollowSnapshot | null, b: FollowSnapshot): boolean {
  return !a || a.status !== b.status || a.step !== b.step || a.loss !== b.loss || a.checkpoints !== b.checkpoints || a.total !== b.total;
}

export async function followJob(o: FollowOptions): Promise<number> {
  const now = o.now ?? (() => new Date());
  const sleep = o.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const alive = o.alive ?? processAlive;
  const interval = o.intervalMs ?? 1000;
  const tty = o.out.isTTY && !o.json;
  let prev: FollowSnapshot | null = null;
  let phaseSince = now();
  let tick = 0;
  let liveShown = false;
  const readRetryMs = o.readRetryMs ?? 60_000;
  let failingSince: Date | null = null;
  let failures = 0;
  const backoff = (n: number) => Math.min(5000, 500 * 2 ** n);
  const clearLive = () => {
    if (liveShown) o.out.write('\r\x1b[2K');
    liveShown = false;
  };
  for (;;) {
    // Read the worker's liveness before the job: a job that ended just before the worker exited is seen ended.
    const workerGone = o.workerPid !== undefined && !alive(o.workerPid);
    let s: FollowSnapshot | null;
    try {
      s = await o.read();
      failingSince = null;
    } catch (err) {
      // A database restart or a network blip is not the job's outcome: say so, and keep trying for a while.
      failingSince ??= now();
      const failingMs = now().getTime() - failingSince.getTime();
      clearLive();
      if (failingMs >= readRetryMs) {
        o.out.write(`cannot read job ${o.jobId} for ${formatDuration(failingMs / 1000)}: ${(err as Error).message}. The job itself may still be running; check the database (MONGO_URL) and run follow again.\n`);
        return UNREADABLE_EXIT;
      }
      o.out.write(`reading job ${o.jobId} failed (${(err as Error).message}); retrying\n`);
      await sleep(Math.min(readRetryMs - failingMs, backoff(failures++)));
      continue;
    }
    failures = 0;
    if (!s) {
      clearLive();
      throw new JobNotFound(`job ${o.jobId} not found (check the id, and MONGO_URL / MONGO_DB_NAME: the job must be in the database this CLI reads)`);
    }
    const t = now();
    if (o.json) {
      if (changed(prev, s)) o.out.write(`${jsonLine(o.jobId, s)}\n`);
    } else if (tty) {
      if (prev && prev.status !== s.status) {
        // A finished phase stays on screen with the time it took (as seen by this poll).
        clearLive();
        o.out.write(`${prev.status.padEnd(12)}  ${formatDuration((t.getTime() - phaseSince.getTime()) / 1000)}\n`);
        phaseSince = t;
      }
      if (!isTerminalStatus(s.status)) {
        o.out.write(`\r\x1b[2K${renderLiveLine(s, o.out.columns(), t, tick++)}`);
        liveShown = true;
      }
    } else {
      for (const line of plainUpdates(prev, s, t, plainEvery(s.total))) o.out.write(`${line}\n`);
    }
    prev = s;
    if (isTerminalStatus(s.status)) {
      clearLive();
      const { code, line } = outcomeOf(s, o.jobId);
      if (!o.json) o.out.write(`${line}\n`);
      return code;
    }
    if (workerGone) {
      clearLive();
      o.out.write(`job ${o.jobId} is still ${s.status} but the worker (pid ${o.workerPid}) has exited; its log says why\n`);
      return WORKER_GONE_EXIT;
    }
    await sleep(interval);
  }
}
