/**
 * Events a subscription's receiver kept refusing, set aside so the events
 * after them flow (`trainingWebhookDeadLetters`).
 *
 * Only an answer that is about this one event may set it aside: 400, 413,
 * 415 and 422 (the receiver read the request and rejected its content). An
 * answer about the receiver as a whole (401/403 after a secret rotation,
 * 404/405/410 for a missing route, a redirect, 5xx, 408, 429, a refused
 * connection or a timeout) would refuse every event alike, so it never sets
 * one aside: the cursor waits and retries. An event is dead-lettered when its
 * receiver answered such a per-event refusal `afterFailures` times, or when it
 * has been failing for longer than `maxAgeMs` and the latest answer was a
 * per-event refusal (the subscription's deadLetter policy, webhook-config.ts).
 *
 * Circuit breaker: when consecutive different events are refused with the
 * same status (no delivery between), the receiver is refusing everything, not
 * one bad event: after `breakerAfter` such events are set aside, the next one
 * is held (cursor kept, error logged, `outcome="held"` counted) until a
 * delivery succeeds. The streak is stored on the cursor (`deadLetterStreak`)
 * so a restart does not reset it.
 *
 * The record holds the whole event; the cursor moves past it. Replay: set the
 * cursor's position back to the record's `seq - 1` (docs/job-events.md). One
 * record per (cursor, event id): a second worker setting the same event aside
 * is a no-op.
 */
import type { Collection, Db } from 'mongodb';
import { isDuplicateKeyError } from '@stationthis/common';
import type { JobEvent } from '@stationthis/db';

export const WEBHOOK_DEAD_LETTERS_COLLECTION = 'trainingWebhookDeadLetters';

export interface WebhookDeadLetterDoc {
  /** `${cursor key}:${event id}`. */
  _id: string;
  cursor: string;
  subscription: string;
  eventId: string;
  seq: number;
  event: JobEvent;
  /** Why it was set aside, in words. */
  reason: string;
  failures: number;
  /** The receiver's last HTTP status for it (null: no answer). */
  status: number | null;
  lastError: string;
  firstFailedAt: Date;
  deadLetteredAt: Date;
  workerId: string;
}

/** Answers that reject this one event's content: retrying the same bytes will not help, and the next event may pass. */
const PER_EVENT_REFUSALS: ReadonlySet<number> = new Set([400, 413, 415, 422]);

/**
 * True for an answer that refuses this event for good (400, 413, 415, 422).
 * Not 401/403/404/405/410: those refuse every event alike (a rotated secret, a
 * missing route); not 408/429/5xx or no answer: those say "later".
 */
export function isPermanentRefusal(status: number | null): status is number {
  return status !== null && PER_EVENT_REFUSALS.has(status);
}

export class WebhookDeadLetters {
  private readonly letters: Collection<WebhookDeadLetterDoc>;

  constructor(
    db: Db,
    private readonly workerId: string,
  ) {
    this.letters = db.collection<WebhookDeadLetterDoc>(WEBHOOK_DEAD_LETTERS_COLLECTION);
  }

  /** Stores the record (once per cursor and event). */
  async put(doc: Omit<WebhookDeadLetterDoc, '_id' | 'workerId' | 'deadLetteredAt'>): Promise<void> {
    try {
      await this.letters.insertOne({ _id: `${doc.cursor}:${doc.eventId}`, ...doc, deadLetteredAt: new Date(), workerId: this.workerId });
    } catch (err) {
      if (!isDuplicateKeyError(err)) throw err;
    }
  }

  async list(cursor: string): Promise<WebhookDeadLetterDoc[]> {
    return this.letters.find({ cursor }).sort({ seq: 1 }).toArray();
  }
}
