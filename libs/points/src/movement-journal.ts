import { ensureNamedIndexes, isDuplicateKeyError } from '@stationthis/common';
import type { Collection, Db, Filter, ObjectId } from 'mongodb';
import type { CreditKind, MovementKind, SettleOutcome } from './types';

export const MOVEMENTS_COLLECTION = 'training_points_movements';

export type MovementState = 'pending' | 'applied' | 'rolling_back';

/** One movement's journal document: `_id` is its idempotency key. */
export interface MovementDoc {
  _id: string;
  jobId: string;
  /** Missing on rows written before attempts were keyed: read as 0. */
  platformAttempt?: number;
  kind: MovementKind;
  creditKind?: CreditKind;
  accountId: string;
  walletAddress?: string | null;
  points: number;
  reason: string;
  state: MovementState;
  /** Charges: the credit_ledger entries to spend, fixed before the first spend. */
  plan?: Array<{ entryId: ObjectId; points: number }>;
  usedPoints?: number;
  chargedPoints?: number;
  outcome?: SettleOutcome;
  ledgerEntryId?: ObjectId | null;
  createdAt: Date;
  updatedAt: Date;
  appliedAt?: Date;
}

/**
 * Told after each write of a movement, by step name (`charge:journal`,
 * `settle:ledger`, `credit:applied`, …). Lets a test stop the process between
 * any two writes; production uses NO_MOVEMENT_PROBE.
 */
export interface MovementProbe {
  after(step: string): void | Promise<void>;
}

export const NO_MOVEMENT_PROBE: MovementProbe = Object.freeze({ after: () => undefined });

/** Step names use the call's name: a refund is written by `settle`. */
const STEP_PREFIX: Record<MovementKind, string> = { charge: 'charge', refund: 'settle', credit: 'credit' };

/**
 * The journal every movement goes through (the 2PC pattern, with only
 * single-document writes): (1) insert the journal document, pending, under the
 * movement's key; (2) apply its effect to credit_ledger with idempotent
 * writes; (3) mark it applied. A call that finds its journal pending (its
 * caller died between two writes) finishes it instead of starting again.
 */
export class MovementJournal {
  private readonly movements: Collection<MovementDoc>;

  constructor(
    db: Db,
    private readonly probe: MovementProbe,
  ) {
    this.movements = db.collection<MovementDoc>(MOVEMENTS_COLLECTION);
  }

  async ensureIndexes(): Promise<void> {
    await ensureNamedIndexes(this.movements, [
      { key: { jobId: 1, createdAt: 1 }, name: 'st_job' },
      { key: { accountId: 1, createdAt: 1 }, name: 'st_account' },
      { key: { state: 1, updatedAt: 1 }, name: 'st_state' },
    ]);
  }

  find(key: string): Promise<MovementDoc | null> {
    return this.movements.findOne({ _id: key });
  }

  async exists(key: string): Promise<boolean> {
    return Boolean(await this.movements.findOne({ _id: key }, { projection: { _id: 1 } }));
  }

  /**
   * Step (1): insert the journal document. If another caller (or an earlier
   * run) inserted it first, that one wins and is returned with `created: false`.
   */
  async open(doc: MovementDoc): Promise<{ journal: MovementDoc; created: boolean }> {
    try {
      await this.movements.insertOne(doc);
    } catch (err) {
      if (!isDuplicateKeyError(err)) throw err;
      const winner = await this.find(doc._id);
      if (winner) return { journal: winner, created: false };
      throw new Error(`Points journal ${doc._id} reported a duplicate but cannot be read back; retry the call.`, { cause: err });
    }
    await this.step(`${STEP_PREFIX[doc.kind]}:journal`);
    return { journal: doc, created: true };
  }

  /**
   * The whole pattern for a movement with one effect (a refund or credit
   * entry): open the journal unless it exists, apply while pending, mark
   * applied. `replay` is true when this call found the movement already done.
   */
  async record(doc: MovementDoc, apply: (journal: MovementDoc) => Promise<void>): Promise<{ journal: MovementDoc; replay: boolean }> {
    let journal = await this.find(doc._id);
    let replay = true;
    if (!journal) {
      const opened = await this.open(doc);
      journal = opened.journal;
      replay = !opened.created;
    }
    if (journal.state === 'pending') {
      replay = false;
      await apply(journal);
      await this.step(`${STEP_PREFIX[journal.kind]}:ledger`);
      await this.markApplied(journal);
    }
    return { journal, replay };
  }

  /** Step (3). Only a pending journal moves: a rolled-back charge never becomes applied. */
  async markApplied(journal: Pick<MovementDoc, '_id' | 'kind'>): Promise<void> {
    const now = new Date();
    await this.movements.updateOne({ _id: journal._id, state: 'pending' }, { $set: { state: 'applied', appliedAt: now, updatedAt: now } });
    await this.step(`${STEP_PREFIX[journal.kind]}:applied`);
  }

  /** A charge whose plan went stale: from here on every caller undoes it. */
  async markRollingBack(key: string): Promise<void> {
    await this.movements.updateOne({ _id: key, state: 'pending' }, { $set: { state: 'rolling_back', updatedAt: new Date() } });
    await this.step('charge:stale-plan');
  }

  /** The last write of a rollback: as if the movement never happened. */
  async removeRolledBack(key: string): Promise<void> {
    await this.movements.deleteOne({ _id: key, state: 'rolling_back' });
    await this.step('charge:rolled-back');
  }

  /** Every movement matching `filter`, oldest first. */
  list(filter: Filter<MovementDoc>): Promise<MovementDoc[]> {
    return this.movements.find(filter).sort({ createdAt: 1, _id: 1 }).toArray();
  }

  /** Movements whose caller died: not applied, untouched since `cutoff`. */
  stuck(cutoff: Date, limit: number): Promise<MovementDoc[]> {
    return this.movements
      .find({ state: { $in: ['pending', 'rolling_back'] }, updatedAt: { $lt: cutoff } })
      .sort({ updatedAt: 1, _id: 1 })
      .limit(limit)
      .toArray();
  }

  /** Tell the probe a write is done (named `charge:spend:0` etc. by the caller). */
  step(name: string): void | Promise<void> {
    return this.probe.after(name);
  }
}
