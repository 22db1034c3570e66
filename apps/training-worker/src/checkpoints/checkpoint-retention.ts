/**
 * Checkpoint retention, run by every worker's maintenance pass (ADR 0008).
 *
 * - The resume state of an attempt that has ended (its job terminal, deleted,
 *   or moved on to a newer platform attempt) can never be resumed: its
 *   objects (the recorded one and any a stale worker uploaded but could not
 *   record, all under the attempt's prefix) are deleted at once.
 * - Checkpoints are kept until the job's model was promoted (plus a grace
 *   period, so a user can still change their mind) or until N days after the
 *   attempt ended; then every checkpoint's objects are deleted except the ones
 *   a model loads or shows (the promoted steps) and the final LoRA (which is
 *   not a checkpoint object and is never deleted here). `loras/` copies made by
 *   earlier `replace` promotions that no model loads any more go too.
 *
 * Bounded: at most `batch` records per pass. Safe on many workers: a record is
 * claimed for a while before it is worked on, and every step is idempotent
 * (deleting a missing object succeeds; marks are filtered on what they mark).
 */
import { inject, injectable } from 'tsyringe';
import { CheckpointPromotionRepository, CheckpointRetentionRepository, isTerminal, platformAttemptOf, type AttemptDocWithRetention, type LoraModelDoc } from '@stationthis/db';
import { ObjectStorage, resumeStatePrefix } from '@stationthis/storage';
import { ROOT_LOGGER, WORKER_CONFIG } from '../tokens';
import type { WorkerConfig } from '../config/worker-config';
import type { Logger } from '../observability/logger';
import { TRAINING_JOB_METADATA } from '../pipeline/steps/publish-step';

/** How long one worker holds a record it works on (a crashed worker's claim lapses after it). */
const CLAIM_MS = 10 * 60_000;
/** A record whose job still runs is looked at again after this long. */
const RUNNING_RECHECK_MS = 60 * 60_000;
/** A record whose retention failed (storage down) is tried again after this long. */
const FAILED_RETRY_MS = 10 * 60_000;
/** A record whose job is being promoted right now is looked at again after this long. */
const PROMOTION_BUSY_RETRY_MS = 60_000;

export interface RetentionReport {
  records: number;
  checkpointsDeleted: number;
  objectsDeleted: number;
  resumeStatesDeleted: number;
  staleCopiesDeleted: number;
}

@injectable()
export class CheckpointRetention {
  private indexed: Promise<void> | null = null;

  constructor(
    @inject(WORKER_CONFIG) private readonly config: WorkerConfig,
    @inject(ROOT_LOGGER) private readonly log: Logger,
    private readonly repo: CheckpointRetentionRepository,
    private readonly storage: ObjectStorage,
    // The job's promotion lock: a promotion must never point a model at a file this pass is deleting.
    private readonly promotions: CheckpointPromotionRepository,
  ) {}

  async run(now: Date = new Date()): Promise<RetentionReport> {
    const report: RetentionReport = { records: 0, checkpointsDeleted: 0, objectsDeleted: 0, resumeStatesDeleted: 0, staleCopiesDeleted: 0 };
    // Once per process: the candidates query runs every pass.
    this.indexed ??= this.repo.ensureIndexes().catch((err) => {
      this.indexed = null;
      throw err;
    });
    await this.indexed;
    for (const candidate of await this.repo.candidates(now, this.config.checkpointRetention.batch)) {
      if (!(await this.repo.claim(candidate._id, this.config.workerId, now, CLAIM_MS))) continue;
      report.records++;
      try {
        // Re-read after the claim: another worker may have finished it between the query and the claim.
        const record = await this.repo.record(candidate._id);
        if (record && !record.checkpointRetention?.doneAt) await this.apply(record, now, report);
      } catch (err) {
        this.log.warn({ err, attempt: candidate._id }, 'checkpoint retention failed for one attempt; it is tried again later');
        await this.repo.defer(candidate._id, new Date(now.getTime() + FAILED_RETRY_MS)).catch(() => undefined);
      }
    }
    if (report.objectsDeleted || report.resumeStatesDeleted) this.log.info(report, 'checkpoint retention deleted stored objects');
    return report;
  }

  private async apply(record: AttemptDocWithRetention, now: Date, report: RetentionReport): Promise<void> {
    const { jobId, platformAttempt, state } = record;
    const job = await this.repo.job(jobId);
    const current = job !== null && platformAttemptOf(job) === record.platformAttempt;
    if (current && job && !isTerminal(job.status)) {
      await this.repo.defer(record._id, new Date(now.getTime() + RUNNING_RECHECK_MS));
      return;
    }

    // The attempt ended: its resume state is never read again (a Retry is a new platform attempt with a state of its own).
    const statePrefix = `${resumeStatePrefix(jobId)}attempt-${platformAttempt}/`;
    const stateObjects = await this.storage.deletePrefix('uploads', statePrefix);
    if (state.resumeState) {
      await this.storage.deleteObject('uploads', state.resumeState.key);
      await this.repo.clearResumeState(record._id, state.resumeState.key, now);
    }
    if (state.resumeState || stateObjects) report.resumeStatesDeleted++;
    report.objectsDeleted += stateObjects;

    const endedAt = (current ? (job?.completedAt ?? job?.finishedAt) : undefined) ?? record.settledAt ?? record.updatedAt;
    if (now.getTime() < this.dueAt(record, endedAt)) {
      await this.repo.defer(record._id, new Date(this.dueAt(record, endedAt)));
      return;
    }
    // Deletions run under the job's promotion lock, from a record read after taking it: a promotion that
    // landed since the read above (or runs now) changes which files are in use.
    const token = await this.promotions.lock(jobId, `retention:${this.config.workerId}`, CLAIM_MS);
    if (!token) {
      await this.repo.defer(record._id, new Date(now.getTime() + PROMOTION_BUSY_RETRY_MS));
      return;
    }
    try {
      const fresh = await this.repo.record(record._id);
      if (!fresh || fresh.checkpointRetention?.doneAt) return;
      if (now.getTime() < this.dueAt(fresh, endedAt)) {
        await this.repo.defer(fresh._id, new Date(this.dueAt(fresh, endedAt)));
        return;
      }
      await this.deleteUnused(fresh, current, now, report);
    } finally {
      await this.promotions.unlock(jobId, token);
    }
  }

  /** Checkpoints are due N days after the attempt ended, or a grace period after its newest promotion. */
  private dueAt(record: AttemptDocWithRetention, endedAt: Date | string): number {
    const { afterCompletionMs, afterPromotionMs } = this.config.checkpointRetention;
    const promotedAt = record.checkpointRetention?.promotedAt;
    return Math.min(new Date(endedAt).getTime() + afterCompletionMs, promotedAt ? new Date(promotedAt).getTime() + afterPromotionMs : Infinity);
  }

  private async deleteUnused(record: AttemptDocWithRetention, current: boolean, now: Date, report: RetentionReport): Promise<void> {
    const { jobId, state } = record;

    const models = await this.repo.modelsOf(jobId, state.loraModelId);
    const kept = keptCheckpointSteps(models);
    const deletedSteps: number[] = [];
    for (const [index, cp] of (state.checkpoints ?? []).entries()) {
      if (cp.deletedAt) deletedSteps.push(cp.step);
      if (cp.deletedAt || kept.has(cp.step) || cp.loraKey === state.upload?.loraKey) continue;
      for (const key of [cp.loraKey, ...cp.sampleKeys]) await this.storage.deleteObject('models', key);
      report.objectsDeleted += 1 + cp.sampleKeys.length;
      if (await this.repo.markCheckpointDeleted(record._id, index, cp.step, cp.loraKey, now)) report.checkpointsDeleted++;
      deletedSteps.push(cp.step);
    }
    // The job's summary links only to checkpoints that still exist (its current platform attempt only).
    if (current) await this.repo.pruneJobCheckpoints(jobId, deletedSteps, now);

    // `loras/` copies of earlier replace promotions that no model loads now (never the final file).
    const inUse = new Set(models.map((m) => (m.publishedTo as { storageKey?: string } | undefined)?.storageKey).filter(Boolean));
    for (const p of state.promotions ?? []) {
      if (p.mode !== 'replace') continue;
      const key = this.storage.parseOwnUrl(p.loraUrl)?.key;
      if (!key || !key.startsWith('loras/') || inUse.has(key) || key === state.upload?.loraKey) continue;
      const head = await this.storage.headObject('models', key);
      if (!head || head.metadata[TRAINING_JOB_METADATA] !== jobId) continue;
      await this.storage.deleteObject('models', key);
      report.staleCopiesDeleted++;
      report.objectsDeleted++;
    }
    await this.repo.finish(record._id, now);
  }
}

/** The checkpoint steps a model of the job loads (its promoted checkpoint) or shows as previews: kept. */
function keptCheckpointSteps(models: LoraModelDoc[]): Set<number> {
  const steps = new Set<number>();
  for (const m of models) {
    const step = (m.promotedCheckpoint as { step?: unknown } | undefined)?.step;
    if (typeof step === 'number') steps.add(step);
  }
  return steps;
}
