/**
 * Delivers one subscription's events, in stream order, at least once each.
 *
 * Each event is POSTed as JSON with its id, a timestamp and the HMAC
 * signature (webhook-signature.ts); a 2xx answer within the timeout moves the
 * cursor past it. Anything else (refused connection, timeout, non-2xx) leaves
 * the cursor where it is and waits an exponentially growing, jittered,
 * capped delay before trying the same event again. Each subscription runs in
 * its own loop, so a receiver that is down or slow delays only itself.
 *
 * Only events of the subscription's environments are delivered (by default
 * this worker's), through the cursor of this worker's environment. Before
 * each request the deliverer checks it still owns the cursor, renewing the
 * lease when it runs low, and ends the batch when less than one request
 * (timeout + margin) of lease would be left: a batch never outlives its lease.
 * An event the receiver keeps refusing is set aside as a dead letter
 * (webhook-dead-letters.ts) per the subscription's policy.
 */
import type { JobEvent, JobEventStore, TrainingEnvironment } from '@stationthis/db';
import type { Logger } from '../observability/logger';
import type { WorkerMetrics } from '../observability/metrics';
import type { JobEventsConfig, WebhookSubscription } from './webhook-config';
import { cursorKey, WebhookCursorConflictError, type CursorTarget, type WebhookCursors } from './webhook-cursors';
import { isPermanentRefusal, type WebhookDeadLetters } from './webhook-dead-letters';
import { HEADER_EVENT_ID, HEADER_SIGNATURE, HEADER_SUBSCRIPTION, HEADER_TIMESTAMP } from './webhook-signature';

const BATCH = 50;
/** Lease a request needs beyond its timeout: the cursor write after the answer. */
const LEASE_MARGIN_MS = 2000;
/** A refused subscription (its cursor belongs to another URL) is not looked at again before a restart; the loop idles. */
const REFUSED_WAIT_MS = 60_000;

interface PostResult {
  /** Null on success, else what went wrong in words. */
  error: string | null;
  /** The HTTP status, when the receiver answered. */
  status: number | null;
}

export class WebhookDeliverer {
  private failures = 0;
  private retryAt = 0;
  private position: number | null = null;
  /** The event failing now: since when, and how many of its failures were permanent refusals. */
  private failing: { eventId: string; since: number; permanent: number } | null = null;
  private refused = false;
  private readonly target: CursorTarget;
  private readonly environments: readonly TrainingEnvironment[];
  /** The newest position this deliverer has delivered or skipped up to and stored (for drains and tests). */
  caughtUpTo = 0;

  constructor(
    readonly subscription: WebhookSubscription,
    private readonly store: JobEventStore,
    private readonly cursors: WebhookCursors,
    private readonly deadLetters: WebhookDeadLetters,
    workerEnvironment: TrainingEnvironment,
    private readonly config: Pick<JobEventsConfig, 'timeoutMs' | 'retryBaseMs' | 'retryMaxMs' | 'pollMs'>,
    private readonly metrics: WorkerMetrics,
    private readonly log: Logger,
  ) {
    this.target = {
      key: cursorKey(workerEnvironment, subscription.id),
      legacyKey: subscription.id,
      urlHash: subscription.urlHash,
      safeUrl: subscription.safeUrl,
    };
    this.environments = subscription.environmentsFor(workerEnvironment);
  }

  /** The cursor this deliverer moves (`${environment}:${subscription id}`). */
  get cursorKey(): string {
    return this.target.key;
  }

  /** True while waiting out a backoff, or once the subscription was refused. */
  get backingOff(): boolean {
    return this.refused || Date.now() < this.retryAt;
  }

  /** True once this worker refused the subscription: its cursor delivers to another URL. */
  get isRefused(): boolean {
    return this.refused;
  }

  /**
   * One round: take the cursor, deliver what is pending, and say how long to
   * wait before the next round (ms). Never throws for a receiver's failure.
   */
  async tick(): Promise<number> {
    if (this.refused) return REFUSED_WAIT_MS;
    const wait = this.retryAt - Date.now();
    if (wait > 0) return wait;
    const id = this.subscription.id;
    const key = this.target.key;
    let position: number | null;
    try {
      position = await this.cursors.acquire(this.target, async () => (this.subscription.from === 'start' ? 0 : this.store.head()));
    } catch (err) {
      if (!(err instanceof WebhookCursorConflictError)) throw err;
      return this.refuse(err);
    }
    if (position === null) {
      this.position = null;
      return Math.max(this.config.pollMs, 1000);
    }
    this.position = position;
    const { events, position: scanned } = await this.store.readEvents({ after: position, limit: BATCH, types: this.subscription.types, environments: this.environments });
    const needMs = this.config.timeoutMs + LEASE_MARGIN_MS;
    for (const event of events) {
      const left = await this.cursors.holdLease(key, needMs);
      if (left === null) return this.lostLease();
      // Not enough lease left for one more request: end the batch; the next round continues from the cursor.
      if (left < needMs) return this.endRound(0);
      const { error, status } = await this.post(event);
      if (error) {
        this.failures++;
        this.metrics.webhookDeliveries.inc({ subscription: id, outcome: 'failed' });
        const aside = this.noteFailure(event, status);
        if (aside) {
          if (!(await this.setAside(event, aside, error))) return this.lostLease();
          continue;
        }
        const delay = this.backoff(this.failures);
        this.retryAt = Date.now() + delay;
        this.log.warn({ subscription: id, url: this.subscription.safeUrl, eventId: event.id, seq: event.seq, failures: this.failures, retryInMs: delay, error }, 'webhook delivery failed; retrying later');
        await this.cursors.recordFailure(key, error, this.failures).catch(() => undefined);
        await this.updateLag();
        return delay;
      }
      this.failures = 0;
      this.failing = null;
      this.metrics.webhookDeliveries.inc({ subscription: id, outcome: 'delivered' });
      if (!(await this.cursors.advance(key, event.seq, true))) return this.lostLease();
      this.position = event.seq;
    }
    // Past the events the filter skipped, too.
    if (scanned > (this.position ?? 0)) {
      if (!(await this.cursors.advance(key, scanned, false))) return this.lostLease();
      this.position = scanned;
    }
    return this.endRound(events.length === BATCH ? 0 : this.config.pollMs);
  }

  async release(): Promise<void> {
    if (this.position !== null) await this.cursors.release(this.target.key);
  }

  private async endRound(wait: number): Promise<number> {
    this.caughtUpTo = this.position ?? 0;
    await this.updateLag();
    return wait;
  }

  /** Counts the failure against the event; returns why to set it aside now, or null to retry it. */
  private noteFailure(event: JobEvent, status: number | null): string | null {
    const now = Date.now();
    if (this.failing?.eventId !== event.id) this.failing = { eventId: event.id, since: now, permanent: 0 };
    if (isPermanentRefusal(status)) this.failing.permanent++;
    const policy = this.subscription.deadLetter;
    if (!policy) return null;
    if (this.failing.permanent >= policy.afterFailures) return `the receiver refused it ${this.failing.permanent} times with a permanent HTTP 4xx (last ${status})`;
    if (policy.maxAgeMs > 0 && now - this.failing.since >= policy.maxAgeMs) return `it kept failing for ${Math.round((now - this.failing.since) / 60_000)} minutes (deadLetter.maxAgeMinutes)`;
    return null;
  }

  /** Records the event as a dead letter and moves the cursor past it. False: the lease is lost. */
  private async setAside(event: JobEvent, reason: string, lastError: string): Promise<boolean> {
    const firstFailedAt = new Date(this.failing?.since ?? Date.now());
    await this.deadLetters.put({
      cursor: this.target.key,
      subscription: this.subscription.id,
      eventId: event.id,
      seq: event.seq,
      event,
      reason,
      failures: this.failures,
      lastError,
      firstFailedAt,
    });
    this.metrics.webhookDeliveries.inc({ subscription: this.subscription.id, outcome: 'dead_lettered' });
    this.log.error(
      { subscription: this.subscription.id, url: this.subscription.safeUrl, eventId: event.id, seq: event.seq, failures: this.failures, reason, lastError },
      'webhook event set aside as a dead letter (trainingWebhookDeadLetters); delivering the events after it. Fix the receiver, then replay the record.',
    );
    this.failures = 0;
    this.failing = null;
    this.retryAt = 0;
    if (!(await this.cursors.advance(this.target.key, event.seq, false, { lastError: `dead-lettered ${event.id}: ${reason}`.slice(0, 500), consecutiveFailures: 0 }))) return false;
    this.position = event.seq;
    return true;
  }

  private refuse(err: Error): number {
    this.refused = true;
    this.position = null;
    this.metrics.webhookDeliveries.inc({ subscription: this.subscription.id, outcome: 'refused' });
    this.log.error({ subscription: this.subscription.id, cursor: this.target.key, url: this.subscription.safeUrl, err }, 'webhook subscription refused: its cursor belongs to another URL');
    return REFUSED_WAIT_MS;
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

  /** What went wrong in words (never the secret, the signature or the URL's path). */
  private async post(event: JobEvent): Promise<PostResult> {
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
      return { error: res.status >= 200 && res.status < 300 ? null : `the receiver answered HTTP ${res.status}`, status: res.status };
    } catch (err) {
      const e = err as Error & { cause?: { code?: string; message?: string } };
      if (e.name === 'TimeoutError') return { error: `no answer within ${this.config.timeoutMs} ms (WEBHOOK_TIMEOUT_MS)`, status: null };
      return { error: `request failed: ${e.cause?.code ?? e.cause?.message ?? e.message}`, status: null };
    } finally {
      end();
    }
  }

  private async updateLag(): Promise<void> {
    const head = await this.store.head().catch(() => null);
    if (head !== null && this.position !== null) this.metrics.webhookLag.set({ subscription: this.subscription.id }, Math.max(0, head - this.position));
  }
}
