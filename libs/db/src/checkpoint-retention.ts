/**
 * The database side of checkpoint retention (ADR 0008): which attempt records
 * may hold checkpoints or a resume state to delete, a short claim so one
 * worker at a time works on a record (every step is idempotent anyway: a
 * second worker deletes objects already gone and sets marks already set), and
 * the marks themselves. The marks live in `checkpointRetention` beside the
 * pipeline's `state`, never in it.
 */
import type { Collection, Db, Filter } from 'mongodb';
import { inject, injectable } from 'tsyringe';
import { ensureNamedIndexes, toObjectIdOrString } from '@stationthis/common';
import { MONGO_DB } from './mongo';
import type { AttemptDocWithRetention } from './checkpoint-promotion';
import { TRAINING_ATTEMPTS_COLLECTION } from './training-attempt';
import { TRAINING_JOBS_COLLECTION, type TrainingJobDoc } from './training-job';
import { LORA_MODELS_COLLECTION, type LoraModelDoc } from './lora-model-repository';

@injectable()
export class CheckpointRetentionRepository {
  private readonly attempts: Collection<AttemptDocWithRetention>;
  private readonly jobs: Collection<TrainingJobDoc>;
  private readonly models: Collection<LoraModelDoc>;

  constructor(@inject(MONGO_DB) db: Db) {
    this.attempts = db.collection<AttemptDocWithRetention>(TRAINING_ATTEMPTS_COLLECTION);
    this.jobs = db.collection<TrainingJobDoc>(TRAINING_JOBS_COLLECTION);
    this.models = db.collection<LoraModelDoc>(LORA_MODELS_COLLECTION);
  }

  async ensureIndexes(): Promise<void> {
    await ensureNamedIndexes(this.attempts, [{ key: { 'checkpointRetention.doneAt': 1, 'checkpointRetention.notBefore': 1 }, name: 'st_checkpoint_retention' }]);
  }

  /**
   * Up to `limit` records that hold a checkpoint or a resume state, are not
   * finished and are not deferred past `now`. Records retention has not
   * looked at yet come first (no `notBefore`), then the longest-deferred.
   */
  async candidates(now: Date, limit: number): Promise<AttemptDocWithRetention[]> {
    return this.attempts
      .find({
        $and: [
          { $or: [{ 'state.checkpoints.0': { $exists: true } }, { 'state.resumeState': { $exists: true } }] },
          { 'checkpointRetention.doneAt': { $exists: false } },
          { $or: [{ 'checkpointRetention.notBefore': { $exists: false } }, { 'checkpointRetention.notBefore': { $lte: now } }] },
          { $or: [{ 'checkpointRetention.claimedUntil': { $exists: false } }, { 'checkpointRetention.claimedUntil': { $lte: now } }] },
        ],
      } as Filter<AttemptDocWithRetention>)
      .sort({ 'checkpointRetention.notBefore': 1, _id: 1 })
      .limit(limit)
      .toArray();
  }

  /** Takes the record for `holdMs` unless another worker holds it; false when it does. */
  async claim(id: string, workerId: string, now: Date, holdMs: number): Promise<boolean> {
    const r = await this.attempts.updateOne(
      { _id: id, $or: [{ 'checkpointRetention.claimedUntil': { $exists: false } }, { 'checkpointRetention.claimedUntil': { $lte: now } }] } as Filter<AttemptDocWithRetention>,
      { $set: { 'checkpointRetention.claimedUntil': new Date(now.getTime() + holdMs), 'checkpointRetention.claimedBy': workerId } },
    );
    return r.modifiedCount === 1;
  }

  /** Nothing to do before `notBefore`: released and left out of the candidates until then. */
  async defer(id: string, notBefore: Date): Promise<void> {
    await this.attempts.updateOne({ _id: id }, { $set: { 'checkpointRetention.notBefore': notBefore }, $unset: { 'checkpointRetention.claimedUntil': '', 'checkpointRetention.claimedBy': '' } });
  }

  /**
   * Marks checkpoint `index` deleted, only while that slot still holds the
   * same checkpoint (step and key) and is not marked yet. True when this call
   * set the mark (FerretDB's `updateOne` filter is indexed by position: the
   * positional `$` operator is not supported).
   */
  async markCheckpointDeleted(id: string, index: number, step: number, loraKey: string, at: Date): Promise<boolean> {
    const slot = `state.checkpoints.${index}`;
    const r = await this.attempts.updateOne(
      { _id: id, [`${slot}.step`]: step, [`${slot}.loraKey`]: loraKey, [`${slot}.deletedAt`]: { $exists: false } } as Filter<AttemptDocWithRetention>,
      { $set: { [`${slot}.deletedAt`]: at, updatedAt: at } },
    );
    return r.modifiedCount === 1;
  }

  /** The resume state `key` was deleted: the record no longer offers it (filtered on the key, so a newer one is kept). */
  async clearResumeState(id: string, key: string, at: Date): Promise<void> {
    await this.attempts.updateOne({ _id: id, 'state.resumeState.key': key } as Filter<AttemptDocWithRetention>, {
      $unset: { 'state.resumeState': '' },
      $set: { 'checkpointRetention.resumeStateDeleted': { key, at }, updatedAt: at },
    });
  }

  /**
   * Drops deleted checkpoints from the summary on the job document (what the
   * platform links to), only while the job is still in the status it was read
   * in: a Retry in between re-queues it and the summary is then the new attempt's.
   */
  async pruneJobCheckpoints(jobId: string, deletedSteps: readonly number[], at: Date): Promise<boolean> {
    if (deletedSteps.length === 0) return false;
    const _id = toObjectIdOrString(jobId);
    const job = await this.jobs.findOne({ _id } as Filter<TrainingJobDoc>, { projection: { status: 1, checkpoints: 1 } });
    const summary = (job as { checkpoints?: unknown } | null)?.checkpoints;
    if (!job || !Array.isArray(summary)) return false;
    const kept = summary.filter((c) => !deletedSteps.includes((c as { step?: unknown }).step as number));
    if (kept.length === summary.length) return false;
    const r = await this.jobs.updateOne({ _id, status: job.status } as Filter<TrainingJobDoc>, { $set: { checkpoints: kept, updatedAt: at } });
    return r.modifiedCount === 1;
  }

  /** Retention is finished for this record (a later promotion re-opens it). */
  async finish(id: string, at: Date): Promise<void> {
    await this.attempts.updateOne({ _id: id }, { $set: { 'checkpointRetention.doneAt': at }, $unset: { 'checkpointRetention.claimedUntil': '', 'checkpointRetention.claimedBy': '' } });
  }

  async job(jobId: string): Promise<TrainingJobDoc | null> {
    return this.jobs.findOne({ _id: toObjectIdOrString(jobId) } as Filter<TrainingJobDoc>, { projection: { logTail: 0 } });
  }

  async record(id: string): Promise<AttemptDocWithRetention | null> {
    return this.attempts.findOne({ _id: id });
  }

  /** The models of a job that may load one of its files: its model (by id) and the versions registered from it. */
  async modelsOf(jobId: string, modelId: string | undefined): Promise<LoraModelDoc[]> {
    const or: Filter<LoraModelDoc>[] = [{ 'versionOf.trainingJobId': jobId } as Filter<LoraModelDoc>];
    if (modelId) or.push({ _id: toObjectIdOrString(modelId) } as Filter<LoraModelDoc>);
    return this.models.find({ $or: or } as Filter<LoraModelDoc>).toArray();
  }
}
