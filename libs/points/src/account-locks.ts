import { isDuplicateKeyError } from '@stationthis/common';
import { randomUUID } from 'node:crypto';
import type { Collection, Db } from 'mongodb';
import { MovementBusyError } from './errors';

/** Short-lived per-account locks for charges. */
export const LOCKS_COLLECTION = 'training_points_locks';

interface LockDoc {
  _id: string;
  token: string;
  until: Date;
}
export type HeldLock = Pick<LockDoc, '_id' | 'token'>;

/**
 * Insert-based locks: a unique `_id` insert is the one write FerretDB v1
 * makes atomic. Taken in sorted order (no deadlock); an expired lock (its
 * holder died) is deleted by token and the insert retried.
 */
export class AccountLocks {
  private readonly locks: Collection<LockDoc>;

  constructor(
    db: Db,
    private readonly timing: { lockMs: number; lockWaitMs: number },
  ) {
    this.locks = db.collection<LockDoc>(LOCKS_COLLECTION);
  }

  async acquire(names: string[]): Promise<HeldLock[]> {
    const held: HeldLock[] = [];
    try {
      for (const name of [...new Set(names)].sort()) held.push(await this.acquireOne(name));
      return held;
    } catch (err) {
      await this.release(held).catch(() => undefined);
      throw err;
    }
  }

  /** Before each write to a ledger entry: extend our locks, or stop if one was taken over. */
  async renew(held: HeldLock[]): Promise<void> {
    for (const lock of held) {
      const r = await this.locks.updateOne(lock, { $set: { until: new Date(Date.now() + this.timing.lockMs) } });
      if (r.matchedCount === 0) throw new MovementBusyError(lock._id);
    }
  }

  async release(held: HeldLock[]): Promise<void> {
    for (const lock of held) await this.locks.deleteOne(lock);
  }

  private async acquireOne(name: string): Promise<HeldLock> {
    const _id = `lock:${name}`;
    const token = randomUUID();
    const deadline = Date.now() + Math.max(this.timing.lockWaitMs, this.timing.lockMs);
    for (;;) {
      try {
        await this.locks.insertOne({ _id, token, until: new Date(Date.now() + this.timing.lockMs) });
        return { _id, token };
      } catch (err) {
        if (!isDuplicateKeyError(err)) throw err;
      }
      const current = await this.locks.findOne({ _id });
      if (current && current.until.getTime() < Date.now()) {
        await this.locks.deleteOne({ _id, token: current.token });
        continue;
      }
      if (Date.now() > deadline) throw new MovementBusyError(name);
      await sleep(5 + Math.random() * 20);
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
