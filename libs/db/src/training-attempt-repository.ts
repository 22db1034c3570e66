import type { Collection, Db, Document, Filter } from 'mongodb';
import { inject, injectable } from 'tsyringe';
import { ensureNamedIndexes, isDuplicateKeyError, toObjectIdOrString } from '@stationthis/common';
import { JOB_WRITES } from './job-write-serializer';
import { MONGO_DB } from './mongo';
import {
  appendLossPoints,
  attemptKey,
  LOSS_SERIES_MAX_POINTS,
  platformAttemptOf,
  TRAINING_ATTEMPTS_COLLECTION,
  TRAINING_SETTLEMENTS_COLLECTION,
  type AttemptRef,
  type AttemptState,
  type CheckpointRecord,
  type LossPoint,
  type RecordedPhase,
  type ResumeStateRecord,
  type SettleDecision,
  type SettlementDecisionDoc,
  type TrainingAttemptDoc,
} from './training-attempt';
import { LORA_MODELS_COLLECTION } from './lora-model-repository';
import type { Lease, TrainingJobDoc } from './training-job';

/**
 * Attempt records and settle decisions (see training-attempt.ts). Worker writes
 * are fenced by the record's `owner` (the lease attemptId of the current
 * claim), not by the job's status: a platform Cancel changes the status, and
 * the worker that owns the attempt must still be able to record its decision.
 * A decision is a unique insert, so exactly one decision exists per attempt
 * even on FerretDB, whose conditional updates are not atomic (ADR 0002 fact 2).
 */
@injectable()
export class TrainingAttemptRepository {
  private readonly attempts: Collection<TrainingAttemptDoc>;
  private readonly decisions: Collection<SettlementDecisionDoc>;
  private readonly models: Collection<Document>;
  private readonly databaseName: string;

  constructor(@inject(MONGO_DB) db: Db) {
    this.databaseName = db.databaseName;
    this.attempts = db.collection<TrainingAttemptDoc>(TRAINING_ATTEMPTS_COLLECTION);
    this.decisions = db.collection<SettlementDecisionDoc>(TRAINING_SETTLEMENTS_COLLECTION);
    this.models = db.collection<Document>(LORA_MODELS_COLLECTION);
  }

  async ensureIndexes(): Promise<void> {
    await ensureNamedIndexes(this.attempts, [
      { key: { open: 1, updatedAt: 1 }, name: 'st_open' },
      { key: { jobId: 1, platformAttempt: 1 }, name: 'st_job' },
    ]);
  }

  /**
   * Called by the worker right after a claim: creates this platform attempt's
   * record, or takes it over from an earlier claim of the same platform attempt
   * (an expired lease, a hand-back, an infrastructure retry). A slug chosen by
   * the previous owner but never recorded as uploaded is dropped, so two
   * workers never upload to one key. Returns null when a newer claim already
   * owns the record (this worker's claim is stale).
   */
  async open(lease: Lease, job: TrainingJobDoc): Promise<TrainingAttemptDoc | null> {
    const platformAttempt = platformAttemptOf(job);
    const _id = attemptKey(lease.jobId, platformAttempt);
    const claimSeq = typeof job.claimSeq === 'number' ? job.claimSeq : 0;
    const now = new Date();
    try {
      const doc: TrainingAttemptDoc = {
        _id,
        jobId: lease.jobId,
        platformAttempt,
        owner: lease.attemptId,
        ownerWorkerId: lease.workerId,
        ownerClaimSeq: claimSeq,
        baseAttempts: Math.max(0, (typeof job.attempts === 'number' ? job.attempts : 1) - 1),
        open: false,
        state: {},
        createdAt: now,
        updatedAt: now,
      };
      await this.attempts.insertOne(doc);
      return doc;
    } catch (err) {
      if (!isDuplicateKeyError(err)) throw err;
    }
    const existing = await this.attempts.findOne({ _id });
    if (!existing) return null;
    if (existing.owner === lease.attemptId) return existing;
    const update: Record<string, unknown> = {
      $set: { owner: lease.attemptId, ownerWorkerId: lease.workerId, ownerClaimSeq: claimSeq, updatedAt: now },
    };
    if (!existing.state?.upload && existing.state?.slug) update['$unset'] = { 'state.slug': '' };
    const r = await this.attempts.updateOne({ _id, ownerClaimSeq: { $lt: claimSeq } } as Filter<TrainingAttemptDoc>, update);
    if (r.matchedCount !== 1) return null;
    return this.attempts.findOne({ _id });
  }

  /** Fenced `$set` of `state.<key>`; `open` marks the record for settlement. False: another claim owns it now. */
  async setState(ref: AttemptRef, patch: Partial<AttemptState>, opts: { open?: boolean } = {}): Promise<boolean> {
    return this.oneWrite(attemptKey(ref.jobId, ref.platformAttempt), async () => {
      const set: Record<string, unknown> = { updatedAt: new Date() };
      for (const [key, value] of Object.entries(patch)) {
        if (key.includes('.') || key.startsWith('$')) throw new Error(`Attempt state key "${key}" contains "." or starts with "$"; use a flat key.`);
        set[`state.${key}`] = value;
      }
      if (opts.open !== undefined) set['open'] = opts.open;
      const r = await this.attempts.updateOne({ _id: attemptKey(ref.jobId, ref.platformAttempt), owner: ref.owner }, { $set: set });
      return r.matchedCount === 1;
    });
  }

  /**
   * Appends one intermediate checkpoint to `state.checkpoints`, fenced by the
   * owner and at most once per step (a resumed attempt that saves the same
   * step again records nothing). FerretDB matches neither dotted paths nor
   * `$elemMatch` inside arrays of documents, so the step check reads the
   * record and the `$push` is conditioned on the array's length being what
   * was read (a concurrent append makes it retry). Callers record in step
   * order, so the array stays sorted. 'duplicate': that step is recorded
   * already; 'not-owner': another claim owns the record now.
   */
  async recordCheckpoint(ref: AttemptRef, checkpoint: CheckpointRecord): Promise<'recorded' | 'duplicate' | 'not-owner'> {
    return this.oneWrite(attemptKey(ref.jobId, ref.platformAttempt), async () => {
      const _id = attemptKey(ref.jobId, ref.platformAttempt);
      for (let tries = 0; tries < 5; tries++) {
        const rec = await this.attempts.findOne({ _id }, { projection: { owner: 1, 'state.checkpoints': 1 } });
        if (!rec || rec.owner !== ref.owner) return 'not-owner';
        const recorded = rec.state?.checkpoints ?? [];
        if (recorded.some((c) => c.step === checkpoint.step)) return 'duplicate';
        const sameLength = recorded.length === 0 ? { $or: [{ 'state.checkpoints': { $exists: false } }, { 'state.checkpoints': { $size: 0 } }] } : { 'state.checkpoints': { $size: recorded.length } };
        const r = await this.attempts.updateOne(
          { _id, owner: ref.owner, ...sameLength } as Filter<TrainingAttemptDoc>,
          { $push: { 'state.checkpoints': checkpoint }, $set: { updatedAt: new Date() } } as never,
        );
        if (r.matchedCount === 1) return 'recorded';
      }
      throw new Error(`Recording checkpoint step ${checkpoint.step} of ${_id} failed: the record kept changing under five tries. Retry the save scan.`);
    });
  }

  /**
   * Sets `state.resumeState` only while `ref.owner` owns the record and the
   * recorded state (if any) is of a lower step: a slower upload of an older
   * state never replaces a newer one, and a worker that lost its claim never
   * records. False: refused (the caller deletes what it uploaded).
   */
  async recordResumeState(ref: AttemptRef, state: ResumeStateRecord): Promise<boolean> {
    return this.oneWrite(attemptKey(ref.jobId, ref.platformAttempt), async () => {
      const r = await this.attempts.updateOne(
        {
          _id: attemptKey(ref.jobId, ref.platformAttempt),
          owner: ref.owner,
          $or: [{ 'state.resumeState': { $exists: false } }, { 'state.resumeState': null }, { 'state.resumeState.step': { $lt: state.step } }],
        } as Filter<TrainingAttemptDoc>,
        { $set: { 'state.resumeState': state, updatedAt: new Date() } },
      );
      return r.matchedCount === 1;
    });
  }

  /**
   * Appends loss points to `state.lossSeries` of the record the claim `owner`
   * (a lease attemptId) owns on `jobId`, kept bounded and evenly spaced
   * (appendLossPoints). FerretDB has no `$push` with `$slice`, so the series is
   * read, merged and `$set`, conditioned on the owner; only the owner writes it,
   * and this process's writes to the record are serialized. False: no record
   * owned by `owner` (another claim owns it now, or none was opened).
   */
  async recordLoss(jobId: string, owner: string, points: readonly LossPoint[], max = LOSS_SERIES_MAX_POINTS): Promise<boolean> {
    if (points.length === 0) return true;
    const _id = await this.recordIdOwnedBy(jobId, owner);
    if (!_id) return false;
    return this.oneWrite(_id, async () => {
      const rec = await this.attempts.findOne({ _id, owner }, { projection: { 'state.lossSeries': 1 } });
      if (!rec) return false;
      const series = appendLossPoints(rec.state?.lossSeries, points, max);
      const r = await this.attempts.updateOne({ _id, owner }, { $set: { 'state.lossSeries': series, updatedAt: new Date() } });
      return r.matchedCount === 1;
    });
  }

  /**
   * Records when the claim `owner` moved the job into `phase`. The times are
   * the current claim's (like the job's `startedAt`): the first phase a newer
   * claim records replaces what an earlier claim left.
   */
  async recordPhase(jobId: string, owner: string, phase: RecordedPhase, at: Date = new Date()): Promise<boolean> {
    const _id = await this.recordIdOwnedBy(jobId, owner);
    if (!_id) return false;
    return this.oneWrite(_id, async () => {
      const rec = await this.attempts.findOne({ _id, owner }, { projection: { 'state.phaseTimes': 1 } });
      if (!rec) return false;
      const current = rec.state?.phaseTimes;
      const times = current?.claim === owner ? { ...current, [phase]: at } : { claim: owner, [phase]: at };
      const r = await this.attempts.updateOne({ _id, owner }, { $set: { 'state.phaseTimes': times, updatedAt: new Date() } });
      return r.matchedCount === 1;
    });
  }

  /** The `_id` of the record the claim `owner` owns on `jobId` (owners are unique lease attemptIds), or null. */
  private async recordIdOwnedBy(jobId: string, owner: string): Promise<string | null> {
    const rec = await this.attempts.findOne({ jobId, owner }, { projection: { _id: 1 } });
    return rec?._id ?? null;
  }

  /**
   * This process's writes to one attempt record, one at a time: the save
   * collector and the pipeline both write it while a container trains, and
   * FerretDB v1 can lose one of two concurrent updates of a document (see
   * job-write-serializer.ts). Never nest.
   */
  private oneWrite<T>(recordId: string, write: () => Promise<T>): Promise<T> {
    return JOB_WRITES.run(`${this.databaseName}/attempt:${recordId}`, write);
  }

  async find(jobId: string, platformAttempt: number): Promise<TrainingAttemptDoc | null> {
    return this.attempts.findOne({ _id: attemptKey(jobId, platformAttempt) });
  }

  async findForJob(jobId: string): Promise<TrainingAttemptDoc[]> {
    return this.attempts.find({ jobId }).sort({ platformAttempt: 1 }).toArray();
  }

  /** Records whose points are not settled yet, oldest first, every one (the cursor pages through them). */
  openAttempts(): AsyncIterable<TrainingAttemptDoc> {
    return this.attempts.find({ open: true }).sort({ updatedAt: 1, _id: 1 }).batchSize(200);
  }

  /**
   * Record the settle decision once. `owner` set: only while that claim still
   * owns the record (a worker); null: the settlement sweep. Returns the decision
   * in force (ours, or the one recorded first) and whether ours won; null when
   * the owner check failed (the worker lost the record to a newer claim).
   */
  async decide(
    jobId: string,
    platformAttempt: number,
    decision: SettleDecision,
    by: { owner: string } | { sweep: string },
  ): Promise<{ decision: SettlementDecisionDoc; ours: boolean } | null> {
    const _id = attemptKey(jobId, platformAttempt);
    const existing = await this.decisions.findOne({ _id });
    if (existing) return { decision: existing, ours: false };
    if ('owner' in by) {
      const rec = await this.attempts.findOne({ _id }, { projection: { owner: 1 } });
      if (rec && rec.owner !== by.owner) return null;
    }
    const doc: SettlementDecisionDoc = {
      _id,
      jobId,
      platformAttempt,
      outcome: decision.outcome,
      usedPoints: Math.max(0, Math.round(decision.usedPoints)),
      reason: decision.reason,
      ...(decision.failureClass ? { failureClass: decision.failureClass } : {}),
      decidedBy: 'owner' in by ? `worker:${by.owner}` : `sweep:${by.sweep}`,
      decidedAt: new Date(),
    };
    try {
      await this.decisions.insertOne(doc);
      return { decision: doc, ours: true };
    } catch (err) {
      if (!isDuplicateKeyError(err)) throw err;
      const winner = await this.decisions.findOne({ _id });
      if (!winner) throw err;
      return { decision: winner, ours: false };
    }
  }

  async findDecision(jobId: string, platformAttempt: number): Promise<SettlementDecisionDoc | null> {
    return this.decisions.findOne({ _id: attemptKey(jobId, platformAttempt) });
  }

  /** Points settled per the decision: the record leaves the sweep's view. Idempotent, unfenced (anyone may finish a decision). */
  async markSettled(jobId: string, platformAttempt: number): Promise<void> {
    return this.oneWrite(attemptKey(jobId, platformAttempt), async () => {
      const now = new Date();
      // Upsert-free: a record that does not exist (never charged) needs nothing.
      await this.attempts.updateOne({ _id: attemptKey(jobId, platformAttempt) }, { $set: { open: false, settledAt: now, updatedAt: now } });
    });
  }

  /**
   * Hide a registered model whose job ended cancelled (the cancel arrived before
   * the job was COMPLETED): private, unlisted from the platform's public lists,
   * its moderation status saying why. The file stays (operators may restore it).
   */
  async withdrawModel(modelId: string, reason: string): Promise<boolean> {
    const now = new Date();
    const r = await this.models.updateOne(
      { _id: toObjectIdOrString(modelId) } as Filter<Document>,
      { $set: { visibility: 'private', permissionType: 'private', 'moderation.status': 'withdrawn', 'moderation.withdrawnReason': reason, 'moderation.withdrawnAt': now, updatedAt: now } },
    );
    return r.matchedCount === 1;
  }

  /** Worker attempts used by the job's current platform attempt (the record's base; no record yet: this claim only). */
  static attemptsUsed(job: Pick<TrainingJobDoc, 'attempts'>, record: Pick<TrainingAttemptDoc, 'baseAttempts'> | null): number {
    const attempts = typeof job.attempts === 'number' ? job.attempts : 1;
    return record ? attempts - record.baseAttempts : 1;
  }
}
