/**
 * One write at a time per job document, within this process.
 *
 * FerretDB v1 applies an update as a read followed by a write of the whole
 * document, with nothing in between to stop a second update of the same
 * document: of two concurrent updates one can be lost. Measured on this
 * project's FerretDB 1.24.2: a heartbeat (`$set lease.expiresAt`) racing the
 * COMPLETED write lost the COMPLETED in 83 of 200 tries, leaving the job
 * FINALIZING until its lease expired. MongoDB applies each update atomically
 * to the document and never loses one, so this costs nothing there.
 *
 * The worker's own writes to a job (heartbeat, progress, transitions, the
 * terminal write, settlement fields) all pass through here, so they can no
 * longer overwrite each other. Writes by other processes (the platform's
 * Cancel and Retry) are outside its reach: ADR 0002 lists what the worker and
 * the settlement sweep do about those.
 */
export class KeyedWriteSerializer {
  private readonly tails = new Map<string, Promise<unknown>>();

  /** Runs `write` after every earlier write queued under `key` has settled (fulfilled or rejected). */
  run<T>(key: string, write: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    const result = previous.then(write, write);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(key, tail);
    // Forget the key once nothing is queued behind this write (the map stays as small as the writes in flight).
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return result;
  }

  /** Keys with a write queued or in flight (for tests and metrics). */
  get pendingKeys(): number {
    return this.tails.size;
  }
}

/**
 * Process-wide: every TrainingJobRepository instance on the same database
 * shares it (a worker and a CLI in one process, or tests with two
 * repositories), keyed by database name and job id.
 */
export const JOB_WRITES = new KeyedWriteSerializer();
