/**
 * Events a subscription's receiver kept refusing, set aside so the events
 * after them flow (`trainingWebhookDeadLetters`).
 *
 * An event is dead-lettered when its receiver answered a permanent 4xx (not
 * 408 or 429, which say "later") `afterFailures` times, or when it has been
 * failing, any way, for longer than `maxAgeMs` since its first failure (the
 * subscription's deadLetter policy, webhook-config.ts). The record holds the
 * whole event, so an operator can replay it once the receiver is fixed; the
 * cursor moves past it. One record per (cursor, event id): a second worker
 * setting the same event aside is a no-op.
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
  lastError: string;
  firstFailedAt: Date;
  deadLetteredAt: Date;
  workerId: string;
}

/** A 4xx that retrying will not fix (408 Request Timeout and 429 Too Many Requests ask to try later). */
export function isPermanentRefusal(status: number | null): boolean {
  return status !== null && status >= 400 && status < 500 && status !== 408 && status !== 429;
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
