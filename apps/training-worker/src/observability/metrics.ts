/** Prometheus metrics for the worker (prom-client, one registry per worker). */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class WorkerMetrics {
  readonly registry = new Registry();
  readonly jobsByState = new Counter({ name: 'training_jobs_total', help: 'Jobs that reached a state in this worker', labelNames: ['state'], registers: [this.registry] });
  readonly activeJobs = new Gauge({ name: 'training_jobs_active', help: 'Jobs currently held by this worker', registers: [this.registry] });
  readonly stepSeconds = new Histogram({
    name: 'training_pipeline_step_seconds',
    help: 'Duration of each pipeline step',
    labelNames: ['step', 'recipe'],
    buckets: [0.05, 0.25, 1, 5, 15, 60, 300, 1800, 7200, 28800],
    registers: [this.registry],
  });
  readonly failures = new Counter({ name: 'training_job_failures_total', help: 'Failed jobs by failure class', labelNames: ['class'], registers: [this.registry] });
  readonly slotsBusy = new Gauge({ name: 'training_gpu_slots_busy', help: 'Allocated GPU (or CPU) slots', registers: [this.registry] });
  readonly slotsTotal = new Gauge({ name: 'training_gpu_slots_total', help: 'GPU (or CPU) slots on this host', registers: [this.registry] });
  readonly bytesMoved = new Counter({ name: 'training_bytes_moved_total', help: 'Bytes downloaded or uploaded', labelNames: ['direction', 'kind'], registers: [this.registry] });
  // Job event outbox and webhooks (ADR 0010).
  readonly jobEventsStored = new Counter({ name: 'training_job_events_stored_total', help: 'Job events this worker stored in the outbox, by type and path (worker or reconciler)', labelNames: ['type', 'source'], registers: [this.registry] });
  readonly jobEventStoreErrors = new Counter({ name: 'training_job_event_store_errors_total', help: 'Failed attempts to store job events right after a write (the reconciler stores them later)', registers: [this.registry] });
  readonly webhookDeliveries = new Counter({ name: 'training_webhook_deliveries_total', help: 'Webhook delivery attempts by subscription and outcome (delivered or failed)', labelNames: ['subscription', 'outcome'], registers: [this.registry] });
  readonly webhookLag = new Gauge({ name: 'training_webhook_lag_events', help: 'Events stored but not yet delivered (or skipped by the filter) per subscription', labelNames: ['subscription'], registers: [this.registry] });
  readonly webhookDeliverySeconds = new Histogram({
    name: 'training_webhook_delivery_seconds',
    help: 'Duration of each webhook request',
    labelNames: ['subscription'],
    buckets: [0.01, 0.05, 0.25, 1, 5, 15, 60],
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
  }

  async timed<T>(step: string, recipe: string, fn: () => Promise<T>): Promise<T> {
    const end = this.stepSeconds.startTimer({ step, recipe });
    try {
      return await fn();
    } finally {
      end();
    }
  }
}
