/**
 * The worker's job event loops (ADR 0010), all in the background and never
 * awaited by the training pipeline:
 * - the outbox writes right after each job write (the repository's write
 *   observer, bound in composition.ts),
 * - the reconciler, every JOB_EVENTS_RECONCILE_MS,
 * - one webhook delivery loop per subscription.
 */
import { inject, injectable } from 'tsyringe';
import type { Db } from 'mongodb';
import { JobEventRecorder, JobEventStore, MONGO_DB } from '@stationthis/db';
import { ROOT_LOGGER, WORKER_CONFIG } from '../tokens';
import type { WorkerConfig } from '../config/worker-config';
import type { Logger } from '../observability/logger';
import { WorkerMetrics } from '../observability/metrics';
import { JOB_EVENTS_CONFIG } from './tokens';
import type { JobEventsConfig } from './webhook-config';
import { WebhookCursors } from './webhook-cursors';
import { WebhookDeadLetters } from './webhook-dead-letters';
import { WebhookDeliverer } from './webhook-deliverer';

@injectable()
export class JobEventsService {
  private running = false;
  private loops: Promise<void>[] = [];
  private readonly wakers = new Set<() => void>();
  readonly deliverers: WebhookDeliverer[];

  constructor(
    @inject(JOB_EVENTS_CONFIG) private readonly config: JobEventsConfig,
    @inject(WORKER_CONFIG) workerConfig: WorkerConfig,
    @inject(ROOT_LOGGER) private readonly log: Logger,
    @inject(MONGO_DB) db: Db,
    private readonly store: JobEventStore,
    private readonly recorder: JobEventRecorder,
    private readonly metrics: WorkerMetrics,
  ) {
    const cursors = new WebhookCursors(db, workerConfig.workerId, Math.max(30_000, config.timeoutMs * 3));
    const deadLetters = new WebhookDeadLetters(db, workerConfig.workerId);
    if (config.enabled) JobEventsService.countStored(metrics, recorder, log);
    const webhookLog = log.child({ component: 'webhooks' });
    this.deliverers = config.subscriptions.map((s) => new WebhookDeliverer(s, store, cursors, deadLetters, workerConfig.environment, config, metrics, webhookLog));
  }

  /** Starts the loops (idempotent). Returns at once. */
  start(): void {
    if (this.running || !this.config.enabled) return;
    this.running = true;
    // Each subscription serializes its URL as the origin only (a path or query may hold a receiver's token).
    if (this.config.subscriptions.length) this.log.info({ subscriptions: this.config.subscriptions.map((s) => s.toJSON()) }, 'job event webhooks on');
    this.loops = [
      this.loop('reconciler', () => this.reconcileOnce().then(() => this.config.reconcileMs)),
      ...this.deliverers.map((d) => this.loop(`webhook ${d.subscription.id}`, () => d.tick())),
    ];
  }

  /**
   * Stops the loops. With `drainMs`, first stores what is pending, runs one
   * reconciler pass and gives each subscription that is not backing off up to
   * `drainMs` to deliver what is stored. Then releases the cursors so another
   * worker continues at once.
   */
  async stop(drainMs = 0): Promise<void> {
    if (!this.running) return;
    if (drainMs > 0) {
      await this.recorder.flush().catch(() => undefined);
      await this.reconcileOnce();
      const deadline = Date.now() + drainMs;
      const head = await this.store.head().catch(() => 0);
      while (Date.now() < deadline && this.deliverers.some((d) => !d.backingOff && d.caughtUpTo < head)) {
        for (const wake of this.wakers) wake();
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    this.running = false;
    for (const wake of this.wakers) wake();
    await Promise.all(this.loops);
    await this.recorder.flush().catch(() => undefined);
    await Promise.all(this.deliverers.map((d) => d.release().catch(() => undefined)));
  }

  async reconcileOnce(): Promise<void> {
    try {
      await this.recorder.reconcile({ stallMs: this.config.stallMs });
    } catch (err) {
      this.log.warn({ err }, 'job event reconciler pass failed; the next pass retries');
    }
  }

  private async loop(name: string, round: () => Promise<number>): Promise<void> {
    while (this.running) {
      let wait: number;
      try {
        wait = await round();
      } catch (err) {
        this.log.warn({ err, loop: name }, 'job event loop round failed; retrying');
        wait = 5000;
      }
      if (!this.running) break;
      if (wait > 0) await this.sleep(wait);
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.wakers.delete(done);
        resolve();
      };
      const t = setTimeout(done, ms);
      this.wakers.add(done);
    });
  }

  /** For tests and metrics: events stored and delivered so far are visible through the store and cursors. */
  get eventStore(): JobEventStore {
    return this.store;
  }

  /** Counts stored events by type and path, and logs failed stores (once per container: the service is a singleton). */
  private static countStored(metrics: WorkerMetrics, recorder: JobEventRecorder, log: Logger): void {
    recorder.onStored((events, source) => {
      for (const e of events) metrics.jobEventsStored.inc({ type: e.type, source });
    });
    recorder.onError((err, jobId) => {
      metrics.jobEventStoreErrors.inc();
      log.warn({ err, jobId }, 'could not store job events now; the reconciler stores them later');
    });
  }
}
