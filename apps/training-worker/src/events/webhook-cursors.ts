/**
 * Per-subscription delivery cursors, `trainingWebhookCursors`: the position
 * each subscription has been delivered up to, and which worker delivers it.
 *
 * One deliverer per subscription, by lease: a worker takes the cursor when it
 * is free or its lease expired, renews it while delivering, and moves the
 * position only while it still owns it. FerretDB v1 applies a conditional
 * update as read-then-write, so two workers can briefly both believe they own
 * a cursor after a takeover race; the loser sees it on its next renewal. The
 * cost is a duplicate delivery with the same event id (at-least-once), never a
 * lost event: the position only moves after a receiver accepted the event
 * (or set it aside as a dead letter).
 *
 * A cursor is keyed `${environment}:${subscriptionId}`: dev and prod workers
 * share the collection, and each environment's subscription has its own
 * position. The cursor remembers a hash of its URL; a worker configured with
 * the same id but another URL refuses the subscription (WebhookCursorConflictError)
 * instead of moving a position that belongs to another receiver.
 */
import type { Collection, Db, Filter } from 'mongodb';
import { isDuplicateKeyError } from '@stationthis/common';
import type { TrainingEnvironment } from '@stationthis/db';

export const WEBHOOK_CURSORS_COLLECTION = 'trainingWebhookCursors';

/** The cursor of one subscription in one environment. */
export function cursorKey(environment: TrainingEnvironment, subscriptionId: string): string {
  return `${environment}:${subscriptionId}`;
}

/** What the cursor is for: its key and the URL (by hash) it delivers to. */
export interface CursorTarget {
  key: string;
  /** The subscription id alone: the key of a cursor written before keys had an environment (its position is adopted once). */
  legacyKey: string;
  urlHash: string;
  /** A log-safe form of the URL (origin), for the conflict message. */
  safeUrl: string;
}

export class WebhookCursorConflictError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WebhookCursorConflictError';
  }
}

export interface WebhookCursorDoc {
  _id: string;
  /** sha256 (16 hex) of the subscription URL this cursor delivers to. */
  urlHash?: string;
  position: number;
  owner: string | null;
  leaseExpiresAt: Date;
  updatedAt: Date;
  lastDeliveredAt?: Date;
  lastError?: string | null;
  consecutiveFailures?: number;
}

export class WebhookCursors {
  private readonly cursors: Collection<WebhookCursorDoc>;

  constructor(
    db: Db,
    private readonly workerId: string,
    readonly leaseMs: number,
  ) {
    this.cursors = db.collection<WebhookCursorDoc>(WEBHOOK_CURSORS_COLLECTION);
  }

  /**
   * Take or renew the lease of a cursor. Returns its position when this
   * worker delivers it now, null when another worker does. A new cursor
   * starts where the cursor of the same subscription id before environments
   * were keyed stood, or else at `startPosition`. Throws
   * WebhookCursorConflictError when the cursor belongs to another URL.
   */
  async acquire(target: CursorTarget, startPosition: () => Promise<number>): Promise<number | null> {
    const now = new Date();
    const expires = new Date(now.getTime() + this.leaseMs);
    const existing = await this.cursors.findOne({ _id: target.key });
    if (!existing) {
      try {
        const legacy = await this.cursors.findOne({ _id: target.legacyKey });
        const position = typeof legacy?.position === 'number' ? legacy.position : await startPosition();
        await this.cursors.insertOne({ _id: target.key, urlHash: target.urlHash, position, owner: this.workerId, leaseExpiresAt: expires, updatedAt: now, consecutiveFailures: 0 });
        return position;
      } catch (err) {
        if (!isDuplicateKeyError(err)) throw err;
        return null; // another worker created it first; it delivers until its lease lapses
      }
    }
    if (existing.urlHash && existing.urlHash !== target.urlHash) {
      throw new WebhookCursorConflictError(
        `webhook cursor "${target.key}" belongs to another URL than this worker's (${target.safeUrl}): two workers configure subscription id "${target.key.split(':').slice(1).join(':')}" with different URLs. ` +
          'This worker does not deliver it (it would move the other receiver\'s position). Give one of them another id, or the same URL.',
      );
    }
    if (existing.owner !== this.workerId && existing.owner !== null && existing.leaseExpiresAt > now) return null;
    // Ours with more than half the lease left: no renewal write this round.
    if (existing.owner === this.workerId && existing.urlHash && existing.leaseExpiresAt.getTime() - now.getTime() > this.leaseMs / 2) return existing.position;
    const r = await this.cursors.updateOne(
      { _id: target.key, owner: existing.owner, leaseExpiresAt: existing.leaseExpiresAt } as Filter<WebhookCursorDoc>,
      { $set: { owner: this.workerId, leaseExpiresAt: expires, updatedAt: now, urlHash: target.urlHash } },
    );
    if (r.matchedCount !== 1) return null;
    const mine = await this.cursors.findOne({ _id: target.key });
    return mine?.owner === this.workerId ? mine.position : null;
  }

  /**
   * Before each delivery: how long this worker still owns the cursor (ms),
   * renewing the lease when less than half of it, or less than `needMs`, is
   * left. Null: another worker owns it.
   */
  async holdLease(key: string, needMs = 0): Promise<number | null> {
    const now = Date.now();
    const cursor = await this.cursors.findOne({ _id: key });
    if (!cursor || cursor.owner !== this.workerId) return null;
    const left = cursor.leaseExpiresAt.getTime() - now;
    if (left > Math.max(this.leaseMs / 2, needMs)) return left;
    const expires = new Date(now + this.leaseMs);
    const r = await this.cursors.updateOne({ _id: key, owner: this.workerId } as Filter<WebhookCursorDoc>, { $set: { leaseExpiresAt: expires, updatedAt: new Date(now) } });
    if (r.matchedCount !== 1) return null;
    // FerretDB v1 applies the conditional update as read-then-write: read back who owns it now.
    const mine = await this.cursors.findOne({ _id: key });
    return mine?.owner === this.workerId ? mine.leaseExpiresAt.getTime() - Date.now() : null;
  }

  /** Move the position forward (only while this worker owns the cursor). False: the lease is lost. */
  async advance(key: string, position: number, delivered: boolean, extra: Partial<WebhookCursorDoc> = {}): Promise<boolean> {
    const now = new Date();
    const set: Partial<WebhookCursorDoc> = { ...extra, position, updatedAt: now };
    if (delivered) Object.assign(set, { lastDeliveredAt: now, lastError: null, consecutiveFailures: 0 });
    const r = await this.cursors.updateOne({ _id: key, owner: this.workerId } as Filter<WebhookCursorDoc>, { $set: set });
    return r.matchedCount === 1;
  }

  async recordFailure(key: string, error: string, failures: number): Promise<void> {
    await this.cursors.updateOne({ _id: key, owner: this.workerId } as Filter<WebhookCursorDoc>, {
      $set: { lastError: error.slice(0, 500), consecutiveFailures: failures, updatedAt: new Date() },
    });
  }

  /** Let another worker take over at once (graceful stop). */
  async release(key: string): Promise<void> {
    await this.cursors.updateOne({ _id: key, owner: this.workerId } as Filter<WebhookCursorDoc>, { $set: { owner: null, leaseExpiresAt: new Date(0) } });
  }

  async find(key: string): Promise<WebhookCursorDoc | null> {
    return this.cursors.findOne({ _id: key });
  }
}
