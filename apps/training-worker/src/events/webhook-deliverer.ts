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
 * this worker's), through the cursor of that environment scope
 * (WebhookSubscription.cursorScope). Before
 * each request the deliverer checks it still owns the cursor, renewing the
 * lease when it runs low, and ends the batch when less than one request
 * (timeout + margin) of lease would be left: a batch never outlives its lease.
 * An event the receiver keeps refusing (400, 413, 415, 422) is set aside as
 * a dead letter (webhook-dead-letters.ts) per the subscription's policy,
 * unless the circuit breaker says the receiver refuses everything; any other
 * failure (receiver down, 5xx, 401/403/404, …) holds the cursor however long.
 *
 * A subscription whose cursor another live worker delivers to another URL is
 * refused for `refusedRetryMs` and then tried again: once that worker stops
 * or its lease lapses, this one adopts the cursor for its URL.
 */
import type { JobEvent, JobEventStore, TrainingEnvironment } from '@stationthis/db';
import type { Logger } from '../observability/logger';
import type { WorkerMetrics } from '../observability/metrics';
import type { JobEventsConfig, WebhookSubscription } from './webhook-config';
import { cursorKey, WebhookCursorConflictError, type AcquiredCursor, type CursorTarget, type DeadLetterStreak, type WebhookCursors } from './webhook-cursors';
import { isPermanentRefusal, type WebhookDeadLetters } from './webhook-dead-letters';
import { HEADER_EVENT_ID, HEADER_SIGNATURE, HEADER_SUBSCRIPTION, HEADER_TIMESTAMP } from './webhook-signature';

const BATCH = 50;
/** Lease a request needs beyond its timeout: the cursor write after the answer. */
const LEASE_MARGIN_MS = 2000;

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
  /** The event failing now: since when, how many of its failures were per-event refusals, and since when it is refused so. */
  private failing: { eventId: string; since: number; permanent: number; refusedSince: number | null } | null = null;
  /** The event the dead-letter circuit breaker holds (logged and counted once per event). */
  private heldEventId: string | null = null;
  private refused = false;
  private refusedUntil = 0;
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
    private readonly config: Pick<JobEventsConfig, 'timeoutMs' | 'retryBaseMs' | 'retryMaxMs' | 'pollMs' | 'refusedRetryMs'>,
    private readonly metrics: WorkerMetrics,
    private readonly log: Logger,
  ) {
    this.target = {
      key: cursorKey(subscription.cursorScope(workerEnvironment), subscription.id),
      legacyKey: subscription.id,
      urlHash: subscription.urlHash,
      safeUrl: subscription.safeUrl,
    };
    this.environments = subscription.environmentsFor(workerEnvironment);
  }

  /** The cursor this deliverer moves (`${environment scope}:${subscription id}`). */
  get cursorKey(): string {
    return this.target.key;
  }

  /** True while waiting out a backoff, or a refusal. */
  get backingOff(): boolean {
    const now = Date.now();
    return (this.refused && now < this.refusedUntil) || now < this.retryAt;
  }

  /** True while this worker refuses the subscription: another live worker delivers its cursor to another URL. */
  get isRefused(): boolean {
    return this.refused;
  }

  /**
   * One round: take the cursor, deliver what is pending, and say how long to
   * wait before the next round (ms). Never throws for a receiver's failure.
   */
  async tick(): Promise<number> {
    const wait = Math.max(this.refused ? this.refusedUntil - Date.now() : 0, this.retryAt - Date.now());
    if (wait > 0) return wait;
    const id = this.subscription.id;
    const key = this.target.key;
    let acquired: AcquiredCursor | null;
    try {
      acquired = await this.cursors.acquire(this.target, async () => (this.subscription.from === 'start' ? 0 : this.store.head()));
    } catch (err) {
      if (!(err instanceof WebhookCursorConflictError)) throw err;
      return this.refuse(err);
    }
    if (this.refused) {
      this.refused = false;
      this.log.info({ subscription: id, cursor: key, url: this.subscription.safeUrl }, 'webhook subscription no longer refused: no other worker delivers its cursor to another URL now');
    }
    if (acquired === null) {
      this.position = null;
      return Math.max(this.config.pollMs, 1000);
    }
    this.noteTakeover(acquired);
    let position = acquired.position;
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
        const aside = await this.noteFailure(event, status);
        if (aside) {
          if (!(await this.setAside(event, position, aside, error))) return this.lostLease();
          position = event.seq;
          continue;
        }
        const delay = this.backoff(this.failures);
        this.retryAt = Date.now() + delay;
        this.log.warn(
          { subscription: id, url: this.subscription.safeUrl, eventId: event.id, seq: event.seq, failures: this.failures, retryInMs: delay, error, ...receiverWideHint(status) },
          'webhook delivery failed; retrying later',
        );
        await this.cursors.recordFailure(key, error, this.failures).catch(() => undefined);
        await this.updateLag();
        return delay;
      }
      this.failures = 0;
      this.failing = null;
      if (this.heldEventId !== null) {
        this.log.info({ subscription: id, url: this.subscription.safeUrl, eventId: event.id }, 'webhook receiver accepts events again; dead-letter circuit breaker closed');
        this.heldEventId = null;
      }
      this.metrics.webhookDeliveries.inc({ subscription: id, outcome: 'delivered' });
      if (!(await this.cursors.advance(key, position, event.seq, true))) return this.lostLease();
      position = event.seq;
      this.position = position;
    }
    // Past the events the filter skipped, too.
    if (scanned > position) {
      if (!(await this.cursors.advance(key, position, scanned, false))) return this.lostLease();
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

  /**
   * Counts the failure against the event; returns why to set it aside now, or
   * null to retry it. Only a per-event refusal (isPermanentRefusal) can set an
   * event aside, by count or by age: a receiver that is down, overloaded or
   * refusing every request (401, 404, …) is waited for, however long.
   */
  private async noteFailure(event: JobEvent, status: number | null): Promise<{ reason: string; streak: DeadLetterStreak } | null> {
    const now = Date.now();
    if (this.failing?.eventId !== event.id) this.failing = { eventId: event.id, since: now, permanent: 0, refusedSince: null };
    const policy = this.subscription.deadLetter;
    if (!isPermanentRefusal(status) || !policy) return null;
    this.failing.permanent++;
    // The age counts from the first refusal of the event, not its first failure: time the receiver was down is not held against the event.
    const refusedSince = (this.failing.refusedSince ??= now);
    let reason: string | null = null;
    if (this.failing.permanent >= policy.afterFailures) reason = `the receiver refused it ${this.failing.permanent} times with HTTP ${status}`;
    else if (policy.maxAgeMs > 0 && now - refusedSince >= policy.maxAgeMs) reason = `it kept being refused for ${Math.round((now - refusedSince) / 60_000)} minutes, last with HTTP ${status} (deadLetter.maxAgeMinutes)`;
    if (!reason) return null;
    // Circuit breaker: the events set aside just before this one were refused the same way, so the receiver refuses everything.
    const previous = (await this.cursors.find(this.target.key))?.deadLetterStreak ?? null;
    const streak = previous?.status === status ? previous : { status, events: 0 };
    if (streak.events >= policy.breakerAfter) {
      this.hold(event, streak);
      return null;
    }
    return { reason, streak: { status: streak.status, events: streak.events + 1 } };
  }

  /** The breaker is open: keep the cursor on this event and retry it; say so once per event. */
  private hold(event: JobEvent, streak: DeadLetterStreak): void {
    if (this.heldEventId === event.id) return;
    this.heldEventId = event.id;
    this.metrics.webhookDeliveries.inc({ subscription: this.subscription.id, outcome: 'held' });
    this.log.error(
      { subscription: this.subscription.id, cursor: this.target.key, url: this.subscription.safeUrl, eventId: event.id, seq: event.seq, status: streak.status, setAsideInARow: streak.events },
      `webhook receiver refuses every event with HTTP ${streak.status}: ${streak.events} event(s) in a row were set aside with it, so this one is held instead of dead-lettered (circuit breaker). ` +
        'Fix the receiver; delivery continues from this event. If this event really is bad on its own, set the cursor\'s deadLetterStreak to null to let it be set aside.',
    );
  }

  /** Records the event as a dead letter and moves the cursor from `from` past it. False: the lease is lost. */
  private async setAside(event: JobEvent, from: number, reason: { reason: string; streak: DeadLetterStreak }, lastError: string): Promise<boolean> {
    const firstFailedAt = new Date(this.failing?.since ?? Date.now());
    await this.deadLetters.put({
      cursor: this.target.key,
      subscription: this.subscription.id,
      eventId: event.id,
      seq: event.seq,
      event,
      reason: reason.reason,
      failures: this.failures,
      status: reason.streak.status,
      lastError,
      firstFailedAt,
    });
    this.metrics.webhookDeliveries.inc({ subscription: this.subscription.id, outcome: 'dead_lettered' });
    this.log.error(
      { subscription: this.subscription.id, cursor: this.target.key, url: this.subscription.safeUrl, eventId: event.id, seq: event.seq, failures: this.failures, reason: reason.reason, lastError },
      'webhook event set aside as a dead letter (trainingWebhookDeadLetters); delivering the events after it. Fix the receiver, then replay it (docs/job-events.md, "Replaying").',
    );
    this.failures = 0;
    this.failing = null;
    this.retryAt = 0;
    const extra = { lastError: `dead-lettered ${event.id}: ${reason.reason}`.slice(0, 500), consecutiveFailures: 0, deadLetterStreak: reason.streak };
    if (!(await this.cursors.advance(this.target.key, from, event.seq, false, extra))) return false;
    this.position = event.seq;
    return true;
  }

  private refuse(err: Error): number {
    this.refused = true;
    this.refusedUntil = Date.now() + this.config.refusedRetryMs;
    this.position = null;
    this.metrics.webhookDeliveries.inc({ subscription: this.subscription.id, outcome: 'refused' });
    this.log.error(
      { subscription: this.subscription.id, cursor: this.target.key, url: this.subscription.safeUrl, retryInMs: this.config.refusedRetryMs, err },
      'webhook subscription refused for now: another live worker delivers its cursor to another URL',
    );
    return this.config.refusedRetryMs;
  }

  /** Says when this worker just adopted the cursor from another URL (a rotated token) or from the legacy un-keyed cursor. */
  private noteTakeover(acquired: AcquiredCursor): void {
    const base = { subscription: this.subscription.id, cursor: this.target.key, url: this.subscription.safeUrl, position: acquired.position };
    if (acquired.urlChangedFrom) {
      // Origins only: the path or query of either URL may hold a token.
      this.log.warn(
        { ...base, previousUrl: acquired.urlChangedFrom.origin ?? `(origin not recorded; URL hash ${acquired.urlChangedFrom.urlHash})` },
        'webhook subscription URL changed: this worker adopted its cursor for the new URL and continues from its position',
      );
    }
    if (acquired.adoptedLegacy) this.log.info({ ...base, legacyCursor: this.target.legacyKey }, 'webhook cursor created at the position of the subscription\'s un-keyed cursor (adopted once)');
  }

  private lostLease(): number {
    this.log.warn({ subscription: this.subscription.id, cursor: this.target.key }, 'webhook cursor taken over by another worker, or its position moved (a replay); the next round continues from the stored cursor');
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

/** For answers that refuse every request alike: what to check (never dead-lettered; the cursor waits). */
function receiverWideHint(status: number | null): { hint?: string } {
  if (status === 401 || status === 403) return { hint: `HTTP ${status} refuses every event: check the signing secret the receiver expects (rotated?)` };
  if (status === 404 || status === 405 || status === 410) return { hint: `HTTP ${status} refuses every event: check the subscription URL and the receiver's route` };
  if (status !== null && status >= 300 && status < 400) return { hint: `HTTP ${status} is a redirect, which is not followed: configure the final URL` };
  return {};
}
