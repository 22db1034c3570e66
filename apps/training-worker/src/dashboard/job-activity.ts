/**
 * What this worker saw of its jobs while they ran, kept in memory for the
 * dashboard's live log tail: a bounded ring buffer of lines per job, and a
 * bounded number of jobs (the least recently written is forgotten first).
 * Nothing here is durable; a finished job's log is read from storage.
 */
export interface LogTail {
  /** Lines ever added for the job: a client that saw `seq` asks only for newer lines. */
  seq: number;
  lines: string[];
}

export class JobActivity {
  private readonly logs = new Map<string, { seq: number; lines: string[] }>();

  constructor(
    readonly maxLinesPerJob = 500,
    readonly maxJobs = 64,
  ) {}

  addLines(jobId: string, lines: readonly string[]): void {
    if (lines.length === 0) return;
    let log = this.logs.get(jobId);
    if (log) this.logs.delete(jobId); // re-inserted below: Map order is the eviction order
    else log = { seq: 0, lines: [] };
    log.lines.push(...lines);
    if (log.lines.length > this.maxLinesPerJob) log.lines.splice(0, log.lines.length - this.maxLinesPerJob);
    log.seq += lines.length;
    this.logs.set(jobId, log);
    while (this.logs.size > this.maxJobs) this.logs.delete(this.logs.keys().next().value as string);
  }

  /** The job's buffered lines (newer than `since` when given), or null when this worker holds none. */
  tail(jobId: string, since?: number): LogTail | null {
    const log = this.logs.get(jobId);
    if (!log) return null;
    const newer = since === undefined ? log.lines.length : Math.max(0, Math.min(log.lines.length, log.seq - since));
    return { seq: log.seq, lines: log.lines.slice(log.lines.length - newer) };
  }
}
