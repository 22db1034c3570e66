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
 * (or set it aside as a dead letter). A move is also conditional on the
 * position the deliverer read, so an operator who sets the position back to
 * replay events is not overwritten by a batch in flight.
 *
 * A cursor is keyed `${scope}:${subscriptionId}`, the scope being the
 * environments the subscription delivers (WebhookSubscription.cursorScope):
 * the worker's own environment by default, `*`, or a sorted list. Dev and
 * prod workers share the collection; each keeps its own position for its own
 * environment, and both share one position when they deliver the same set
 * (`"*"`), so no event goes out twice.
 *
 * The cursor remembers a hash of its URL (and the URL's origin, for logs).
 * While another worker holds an unexpired lease on it with another URL, the
 * subscription is refused (WebhookCursorConflictError; the deliverer tries
 * again later): two live workers disagree about where the events go. When
 * the lease has lapsed or is this worker's, the URL changed (a token in it
 * was rotated): the worker adopts the cursor, keeps its position and writes
 * the new hash.
 */
import type { Collection, Db, Filter } from 'mongodb';
import { isDuplicateKeyError } from '@stationthis/common';

export const WEBHOOK_CURSORS_COLLECTION = 'trainingWebhookCursors';

/** The cursor of one subscription for one environment scope (`production`, `*`, `development,production`). */
export function cursorKey(scope: string, subscriptionId: string): string {
  return `${scope}:${subscriptionId}`;
}

/** What the cursor is for: its key and the URL (by hash) it delivers to. */
export interface CursorTarget {
  key: string;
  /**
   * The subscription id alone: the key of a cursor written before keys had an
   * environment. Each keyed cursor adopts its position at most once, when it
   * is created (the legacy cursor records who adopted it in `adoptedBy`).
   */
  legacyKey: string;
  urlHash: string;
  /** A log-safe form of the URL (origin), stored for the warning when the URL changes. */
  safeUrl: string;
}

export class WebhookCursorConflictError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WebhookCursorConflictError';
  }
}

/** Events set aside in a row with one HTTP status, no delivery between (the dead-letter circuit breaker). */
export interface DeadLetterStreak {
  status: number;
  events: number;
}

export interface WebhookCursorDoc {
  _id: string;
  /** sha256 (16 hex) of the subscription URL this cursor delivers to. */
  urlHash?: string;
  /** That URL's origin (never its path or query), for the URL-change warning. */
  urlOrigin?: string;
  position: number;
  owner: string | null;
  leaseExpiresAt: Date;
  updatedAt: Date;
  lastDeliveredAt?: Date;
  lastError?: string | null;
  consecutiveFailures?: number;
  /** Reset by each delivery. */
  deadLetterStreak?: DeadLetterStreak | null;
  /** On a legacy (un-keyed) cursor: the keys of the cursors that took its position. */
  adoptedBy?: string[];
}

/** A cursor this worker delivers now. */
export interface AcquiredCursor {
  position: number;
  /** Set when this worker just took the cursor over from another URL: the old URL's origin (if known) and hash. */
  urlChangedFrom?: { origin: string | null; urlHash: string };
  /** True when the cursor was just created at the legacy cursor's position. */
  adoptedLegacy?: boolean;
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
   * starts where the legacy cursor of the same subscription id stood (once
   * per key), or else at `startPosition`. Throws WebhookCursorConflictError
   * while another worker holds the lease with another URL.
   */
  async acquire(target: CursorTarget, startPosition: () => Promise<number>): Promise<AcquiredCursor | null> {
    const now = new Date();
    const expires = new Date(now.getTime() + this.leaseMs);
    const existing = await this.cursors.findOne({ _id: target.key });
    if (!existing) return this.create(target, startPosition, now, expires);
    const otherUrl = existing.urlHash !== undefined && existing.urlHash !== target.urlHash;
    if (existing.owner !== this.workerId && existing.owner !== null && existing.leaseExpiresAt > now) {
      if (otherUrl) {
        throw new WebhookCursorConflictError(
          `webhook cursor "${target.key}" is being delivered by worker ${existing.owner} to another URL than this worker's (${target.safeUrl}), its lease running until ${existing.leaseExpiresAt.toISOString()}. ` +
            'Two live workers configure this subscription id with different URLs. This worker does not deliver it while that lease holds and tries again later; ' +
            'if the URL was changed on purpose, stop or update the other worker (its cursor is then adopted with its position); otherwise give one of them another id.',
        );
      }
      return null;
    }
    // Ours with more than half the lease left and the same URL: no renewal write this round.
    if (!otherUrl && existing.owner === this.workerId && existing.urlHash && existing.leaseExpiresAt.getTime() - now.getTime() > this.leaseMs / 2) return { position: existing.position };
    const r = await this.cursors.updateOne(
      { _id: target.key, owner: existing.owner, leaseExpiresAt: existing.leaseExpiresAt } as Filter<WebhookCursorDoc>,
      { $set: { owner: this.workerId, leaseExpiresAt: expires, updatedAt: now, urlHash: target.urlHash, urlOrigin: target.safeUrl } },
    );
    if (r.matchedCount !== 1) return null;
    const mine = await this.cursors.findOne({ _id: target.key });
    if (mine?.owner !== this.workerId) return null;
    return otherUrl ? { position: mine.position, urlChangedFrom: { origin: existing.urlOrigin ?? null, urlHash: existing.urlHash ?? '' } } : { position: mine.position };
  }

  /** A new cursor: at the legacy cursor's position if this key never adopted it, else at `startPosition`. Null: another worker created it first. */
  private async create(target: CursorTarget, startPosition: () => Promise<number>, now: Date, expires: Date): Promise<AcquiredCursor | null> {
    const legacy = target.legacyKey === target.key ? null : await this.cursors.findOne({ _id: target.legacyKey });
    const adopt = typeof legacy?.position === 'number' && !(legacy.adoptedBy ?? []).includes(target.key);
    const position = adopt && legacy ? legacy.position : await startPosition();
    try {
      await this.cursors.insertOne({ _id: target.key, urlHash: target.urlHash, urlOrigin: target.safeUrl, position, owner: this.workerId, leaseExpiresAt: expires, updatedAt: now, consecutiveFailures: 0 });
    } catch (err) {
      if (!isDuplicateKeyError(err)) throw err;
      return null; // another worker created it first; it delivers until its lease lapses
    }
    // Marked after the insert: a crash between the two can at worst let a deleted cursor re-adopt once, never lose the position.
    if (adopt) await this.cursors.updateOne({ _id: target.legacyKey }, { $addToSet: { adoptedBy: target.key } });
    return { position, adoptedLegacy: adopt };
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

  /**
   * Move the position from `from` to `position`, only while this worker owns
   * the cursor and it still stands at `from`. False: the lease is lost, or
   * someone (an operator replaying events) moved the position meanwhile; the
   * next round reads it again.
   */
  async advance(key: string, from: number, position: number, delivered: boolean, extra: Partial<WebhookCursorDoc> = {}): Promise<boolean> {
    const now = new Date();
    const set: Partial<WebhookCursorDoc> = { ...extra, position, updatedAt: now };
    if (delivered) Object.assign(set, { lastDeliveredAt: now, lastError: null, consecutiveFailures: 0, deadLetterStreak: null });
    const r = await this.cursors.updateOne({ _id: key, owner: this.workerId, position: from } as Filter<WebhookCursorDoc>, { $set: set });
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
