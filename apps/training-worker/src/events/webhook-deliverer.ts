/**
 * Delivers one subscription's events, in stream order, at least once each.
 *
 * Each event is POSTed as JSON with its id, a timestamp and the HMAC
 * signature (webhook-signature.ts); a 2xx answer within the timeout moves the
 * cursor past it. Anything else (refused connection, timeout, non-2xx) leaves
 * the cursor where it is and waits an exponentially growing, jittered,
 * capped delay before trying the same event again. Each subscription runs in
 * its own loop, so a receiver that is down or slow delays only itself.
 */
import type { JobEvent, JobEventStore } from '@stationthis/db';
import type { Logger } from '../observability/logger';
import type { WorkerMetrics } from '../observability/metrics';
import type { JobEventsConfig, WebhookSubscription } from './webhook-config';
import type { WebhookCursors } from './webhook-cursors';
import { HEADER_EVENT_ID, HEADER_SIGNATURE, HEADER_SUBSCRIPTION, HEADER_TIMESTAMP } from './webhook-signature';

const BATCH = 50;

export class WebhookDeliverer {
  private failures = 0;
  private retryAt = 0;
  private position: number | null = null;
  /** The newest position this deliverer has delivered or skipped up to and stored (for drains and tests). */
  caughtUpTo = 0;

  constructor(
    readonly subscription: WebhookSubscription,
    private readonly store: JobEventStore,
    private readonly cursors: WebhookCursors,
    private readonly config: Pick<JobEventsConfig, 'timeoutMs' | 'retryBaseMs' | 'retryMaxMs' | 'pollMs'>,
    private readonly metrics: WorkerMetrics,
    private readonly log: Logger,
  ) {}

  /** True while waiting out a backoff. */
  get backingOff(): boolean {
    return Date.now() < this.retryAt;
  }

  /**
   * One round: take the cursor, deliver what is pending, and say how long to
   * wait before the next round (ms). Never throws for a receiver's failure.
   */
  async tick(): Promise<number> {
    const wait = this.retryAt - Date.now();
    if (wait > 0) return wait;
    const id = this.subscription.id;
    const position = await this.cursors.acquire(id, async () => (this.subscription.from === 'start' ? 0 : this.store.head()));
    if (position === null) {
      this.position = null;
      return Math.max(this.config.pollMs, 1000);
    }
    this.position = position;
    const { events, position: scanned } = await this.store.readEvents({ after: position, limit: BATCH, types: this.subscription.types });
    for (const event of events) {
      const error = await this.post(event);
      if (error) {
        this.failures++;
        const delay = this.backoff(this.failures);
        this.retryAt = Date.now() + delay;
        this.metrics.webhookDeliveries.inc({ subscription: id, outcome: 'failed' });
        this.log.warn({ subscription: id, eventId: event.id, seq: event.seq, failures: this.failures, retryInMs: delay, error }, 'webhook delivery failed; retrying later');
        await this.cursors.recordFailure(id, error, this.failures).catch(() => undefined);
        await this.updateLag();
        return delay;
      }
      this.failures = 0;
      this.metrics.webhookDeliveries.inc({ subscription: id, outcome: 'delivered' });
      if (!(await this.cursors.advance(id, event.seq, true))) return this.lostLease();
      this.position = event.seq;
    }
    // Past the events the filter skipped, too.
    if (scanned > (this.position ?? 0)) {
      if (!(await this.cursors.advance(id, scanned, false))) return this.lostLease();
      this.position = scanned;
    }
    this.caughtUpTo = this.position ?? 0;
    await this.updateLag();
    return events.length === BATCH ? 0 : this.config.pollMs;
  }

  async release(): Promise<void> {
    if (this.position !== null) await this.cursors.release(this.subscription.id);
  }

  private lostLease(): number {
    this.log.warn({ subscription: this.subscription.id }, 'webhook cursor taken over by another worker; it delivers from here');
    this.position = null;
    return this.config.pollMs;
  }

  /** Full jitter in [½, 1] of the capped exponential delay: receivers recovering from an outage are not hit in step. */
  private backoff(failures: number): number {
    const capped = Math.min(this.config.retryMaxMs, this.config.retryBaseMs * 2 ** Math.min(failures - 1, 30));
    return Math.round(capped * (0.5 + Math.random() * 0.5));
  }

  /** Null on success, else what went wrong in words (never the secret or the signature). */
  private async post(event: JobEvent): Promise<string | null> {
    const body = JSON.stringify(event);
    const timestamp = Math.floor(Date.now() / 1000);
    const end = this.metrics.webhookDeliverySeconds.startTimer({ subscription: this.subscription.id });
    try {
      const res = await fetch(this.subscription.url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'user-agent': 'stationthis-training-worker',
          [HEADER_EVENT_ID]: event.id,
          [HEADER_TIMESTAMP]: String(timestamp),
          [HEADER_SIGNATURE]: this.subscription.sign(timestamp, body),
          [HEADER_SUBSCRIPTION]: this.subscription.id,
        },
        body,
        redirect: 'manual',
        signal: AbortSignal.timeout(this.config.timeoutMs),
      });
      await res.body?.cancel().catch(() => undefined);
      return res.status >= 200 && res.status < 300 ? null : `the receiver answered HTTP ${res.status}`;
    } catch (err) {
      const e = err as Error & { cause?: { code?: string; message?: string } };
      if (e.name === 'TimeoutError') return `no answer within ${this.config.timeoutMs} ms (WEBHOOK_TIMEOUT_MS)`;
      return `request failed: ${e.cause?.code ?? e.cause?.message ?? e.message}`;
    } finally {
      end();
    }
  }

  private async updateLag(): Promise<void> {
    const head = await this.store.head().catch(() => null);
    if (head !== null && this.position !== null) this.metrics.webhookLag.set({ subscription: this.subscription.id }, Math.max(0, head - this.position));
  }
}
