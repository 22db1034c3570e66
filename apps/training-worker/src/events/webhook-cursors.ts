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
 * lost event: the position only moves after a receiver accepted the event.
 */
import type { Collection, Db, Filter } from 'mongodb';
import { isDuplicateKeyError } from '@stationthis/common';

export const WEBHOOK_CURSORS_COLLECTION = 'trainingWebhookCursors';

export interface WebhookCursorDoc {
  _id: string;
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
    private readonly leaseMs: number,
  ) {
    this.cursors = db.collection<WebhookCursorDoc>(WEBHOOK_CURSORS_COLLECTION);
  }

  /**
   * Take or renew the lease of `subscriptionId`'s cursor. Returns its position
   * when this worker delivers it now, null when another worker does. A new
   * cursor starts at `startPosition`.
   */
  async acquire(subscriptionId: string, startPosition: () => Promise<number>): Promise<number | null> {
    const now = new Date();
    const expires = new Date(now.getTime() + this.leaseMs);
    const existing = await this.cursors.findOne({ _id: subscriptionId });
    if (!existing) {
      try {
        const position = await startPosition();
        await this.cursors.insertOne({ _id: subscriptionId, position, owner: this.workerId, leaseExpiresAt: expires, updatedAt: now, consecutiveFailures: 0 });
        return position;
      } catch (err) {
        if (!isDuplicateKeyError(err)) throw err;
        return null; // another worker created it first; it delivers until its lease lapses
      }
    }
    if (existing.owner !== this.workerId && existing.owner !== null && existing.leaseExpiresAt > now) return null;
    // Ours with more than half the lease left: no renewal write this round.
    if (existing.owner === this.workerId && existing.leaseExpiresAt.getTime() - now.getTime() > this.leaseMs / 2) return existing.position;
    const r = await this.cursors.updateOne(
      { _id: subscriptionId, owner: existing.owner, leaseExpiresAt: existing.leaseExpiresAt } as Filter<WebhookCursorDoc>,
      { $set: { owner: this.workerId, leaseExpiresAt: expires, updatedAt: now } },
    );
    if (r.matchedCount !== 1) return null;
    const mine = await this.cursors.findOne({ _id: subscriptionId });
    return mine?.owner === this.workerId ? mine.position : null;
  }

  /** Move the position forward (only while this worker owns the cursor). False: the lease is lost. */
  async advance(subscriptionId: string, position: number, delivered: boolean): Promise<boolean> {
    const now = new Date();
    const set: Partial<WebhookCursorDoc> = { position, updatedAt: now };
    if (delivered) Object.assign(set, { lastDeliveredAt: now, lastError: null, consecutiveFailures: 0 });
    const r = await this.cursors.updateOne({ _id: subscriptionId, owner: this.workerId } as Filter<WebhookCursorDoc>, { $set: set });
    return r.matchedCount === 1;
  }

  async recordFailure(subscriptionId: string, error: string, failures: number): Promise<void> {
    await this.cursors.updateOne({ _id: subscriptionId, owner: this.workerId } as Filter<WebhookCursorDoc>, {
      $set: { lastError: error.slice(0, 500), consecutiveFailures: failures, updatedAt: new Date() },
    });
  }

  /** Let another worker take over at once (graceful stop). */
  async release(subscriptionId: string): Promise<void> {
    await this.cursors.updateOne({ _id: subscriptionId, owner: this.workerId } as Filter<WebhookCursorDoc>, { $set: { owner: null, leaseExpiresAt: new Date(0) } });
  }

  async find(subscriptionId: string): Promise<WebhookCursorDoc | null> {
    return this.cursors.findOne({ _id: subscriptionId });
  }
}
