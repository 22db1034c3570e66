/**
 * Promotion of an intermediate checkpoint to a job's model, after the job
 * completed (ADR 0008). The database side only: which checkpoint a step names,
 * the slugs, trigger words and ids a promotion uses, and the writes to
 * `loraModels`, `loraSlugReservations` and the attempt record's `promotions`.
 * Copying the file is the caller's (apps/training-worker/src/checkpoints).
 *
 * Objects under `loras/` are immutable (the publish step stores them with
 * `Cache-Control: immutable` and the platform's ComfyDeploy volume keeps the
 * file it pulled under `loras/<slug>.safetensors`), so a promotion never
 * overwrites one: a checkpoint becomes the model under a slug of its own,
 * `<slug>-s<step>`, and promoting the final LoRA back restores `<slug>`,
 * whose file was never touched.
 */
import { createHash } from 'node:crypto';
import { ObjectId, type Collection, type Db, type Document, type Filter } from 'mongodb';
import { inject, injectable } from 'tsyringe';
import { insertOnce, isDuplicateKeyError, toObjectIdOrString } from '@stationthis/common';
import { MONGO_DB } from './mongo';
import { LORA_MODELS_COLLECTION, LORA_SLUG_RESERVATIONS_COLLECTION, type LoraModelDoc } from './lora-model-repository';
import { TRAINING_JOBS_COLLECTION, type TrainingJobDoc } from './training-job';
import {
  attemptKey,
  platformAttemptOf,
  TRAINING_ATTEMPTS_COLLECTION,
  type AttemptState,
  type CheckpointRecord,
  type PromotionRecord,
  type TrainingAttemptDoc,
} from './training-attempt';

export type PromotionMode = PromotionRecord['mode'];

/**
 * One document per job while a promotion of it runs (`_id` = job id): a
 * unique insert is the one write FerretDB makes atomic (ADR 0002 fact 2), so
 * two promotions of one job never interleave their model and record writes.
 */
export const PROMOTION_LOCKS_COLLECTION = 'checkpointPromotionLocks';

interface PromotionLockDoc {
  _id: string;
  token: string;
  holder: string;
  expiresAt: Date;
}

/** A checkpoint a promotion can name: an intermediate save, or the final LoRA (`final: true`). */
export interface PromotableCheckpoint extends CheckpointRecord {
  final: boolean;
}

/**
 * Where a promoted model's file is and what describes it: the fields of a
 * `loraModels` document a promotion sets (publishedTo, hashes, previews).
 */
export interface ModelFileTarget {
  slug: string;
  fileUrl: string;
  storageKey: string;
  sha256: string;
  autov2: string;
  bytes: number;
  previewImages: string[];
  /** The checkpoint the file is; absent when it is the final LoRA. */
  step?: number;
  loss?: number | null;
}

/**
 * Scheduling of checkpoint retention, kept on the attempt record beside the
 * worker's state (never inside `state`, which the pipeline owns).
 */
export interface CheckpointRetentionMark {
  /** Not looked at again before this time (the next due date, or a recheck of a running job). */
  notBefore?: Date;
  /** A worker is applying retention to this record until then (many workers run maintenance). */
  claimedUntil?: Date;
  claimedBy?: string;
  /** Retention finished for this record; a later promotion clears it. */
  doneAt?: Date;
  /** The newest promotion; retention is due a grace period after it. */
  promotedAt?: Date;
  resumeStateDeleted?: { key: string; at: Date };
}

export type AttemptDocWithRetention = TrainingAttemptDoc & { checkpointRetention?: CheckpointRetentionMark };

/** What a promotion needs to decide: the job, its current platform attempt's record and its model. */
export interface PromotionSubject {
  job: TrainingJobDoc;
  platformAttempt: number;
  record: AttemptDocWithRetention | null;
  model: LoraModelDoc | null;
}

/** The step of the final LoRA: the job's total steps as the worker reported them, else the model's. */
export function finalStepOf(job: Pick<TrainingJobDoc, 'totalSteps' | 'steps'>, model: Pick<LoraModelDoc, 'trainedFrom'> | null): number | null {
  for (const n of [job.totalSteps, model?.trainedFrom?.steps, job.steps]) {
    if (typeof n === 'number' && Number.isSafeInteger(n) && n > 0) return n;
  }
  return null;
}

/** The final LoRA as a checkpoint record (its file is `loras/<slug>.safetensors`, never deleted by retention). */
export function finalCheckpointOf(state: AttemptState, finalStep: number, loss?: number | null): PromotableCheckpoint | null {
  const u = state.upload;
  if (!u) return null;
  return {
    step: finalStep,
    loss: loss ?? null,
    loraKey: u.loraKey,
    loraUrl: u.loraUrl,
    sha256: u.sha256,
    autov2: u.autov2,
    bytes: u.bytes,
    sampleKeys: [],
    sampleUrls: u.sampleUrls,
    storedAt: state.completedWrittenAt ?? new Date(0),
    final: true,
  };
}

/**
 * Every checkpoint of an attempt a promotion can name, in step order: the
 * intermediate saves and the final LoRA. A save at the final step (an engine
 * saving at every N steps when N divides the total) is shadowed by the final
 * LoRA: the same step names the file that was published.
 */
export function promotableCheckpoints(state: AttemptState, finalStep: number | null, finalLoss?: number | null): PromotableCheckpoint[] {
  const saves = (state.checkpoints ?? []).filter((c) => c.step !== finalStep).map((c) => ({ ...c, final: false }));
  const fin = finalStep !== null ? finalCheckpointOf(state, finalStep, finalLoss) : null;
  return [...saves, ...(fin ? [fin] : [])].sort((a, b) => a.step - b.step);
}

/** `<slug>-s<step>`: the slug (and `loras/` file) of the job's model while it loads checkpoint `step`. */
export function promotedSlug(baseSlug: string, step: number): string {
  return `${baseSlug}-s${step}`;
}

/** `<slug>-v<step>`: the slug of the additional model registered for checkpoint `step`. */
export function versionSlug(baseSlug: string, step: number): string {
  return `${baseSlug}-v${step}`;
}

/**
 * `<trigger>_s<step>`: a version's own trigger word. A trigger shared by two
 * public LoRAs of one family makes the platform pick the newest and warn
 * (loraResolutionService.js), so the job's trigger word keeps naming the job's
 * model and a version is asked for by its own word.
 */
export function versionTriggerWord(triggerWord: string, step: number): string {
  return `${triggerWord}_s${step}`;
}

/** A deterministic `_id` for the version of `jobId` at `step`: a retried registration finds the same document. */
export function versionModelId(trainingJobId: string, step: number): ObjectId {
  const bytes = Buffer.alloc(12);
  const ts = ObjectId.isValid(trainingJobId) && trainingJobId.length === 24 ? new ObjectId(trainingJobId).getTimestamp().getTime() / 1000 : 0;
  bytes.writeUInt32BE(Math.floor(ts));
  createHash('sha256').update(`loraModelVersion:${trainingJobId}:${step}`).digest().copy(bytes, 4, 0, 8);
  return new ObjectId(bytes);
}

/** The fields of a `loraModels` document that say which file it loads (see ModelFileTarget). */
export function modelFileFields(m: LoraModelDoc): Pick<ModelFileTarget, 'slug' | 'fileUrl' | 'storageKey'> {
  const p = (m.publishedTo ?? {}) as { modelFileUrl?: string; cloudflareUrl?: string; storageKey?: string };
  return { slug: m.slug, fileUrl: p.cloudflareUrl ?? p.modelFileUrl ?? '', storageKey: p.storageKey ?? '' };
}

/** The `versionOf` field of an additional model: which job, model and step it came from. */
export interface VersionOf {
  trainingJobId: string;
  modelId: ObjectId;
  step: number;
}

interface SlugReservationDoc {
  _id: string;
  trainingJobId: string;
  reservedAt: Date;
}

/** Reads and writes of checkpoint promotion; every write is idempotent (ADR 0008). */
@injectable()
export class CheckpointPromotionRepository {
  private readonly jobs: Collection<TrainingJobDoc>;
  private readonly attempts: Collection<AttemptDocWithRetention>;
  private readonly models: Collection<LoraModelDoc>;
  private readonly slugs: Collection<SlugReservationDoc>;
  private readonly locks: Collection<PromotionLockDoc>;

  constructor(@inject(MONGO_DB) db: Db) {
    this.jobs = db.collection<TrainingJobDoc>(TRAINING_JOBS_COLLECTION);
    this.attempts = db.collection<AttemptDocWithRetention>(TRAINING_ATTEMPTS_COLLECTION);
    this.models = db.collection<LoraModelDoc>(LORA_MODELS_COLLECTION);
    this.slugs = db.collection<SlugReservationDoc>(LORA_SLUG_RESERVATIONS_COLLECTION);
    this.locks = db.collection<PromotionLockDoc>(PROMOTION_LOCKS_COLLECTION);
  }

  /**
   * Takes the job's promotion lock for `ttlMs`; returns its token, or null
   * while another promotion holds it. A lock left by a crashed promotion is
   * taken over once it expired (removed by its own token, then re-inserted:
   * of two takers, one insert wins).
   */
  async lock(jobId: string, holder: string, ttlMs: number): Promise<string | null> {
    const token = new ObjectId().toHexString();
    for (let tries = 0; tries < 2; tries++) {
      try {
        await this.locks.insertOne({ _id: jobId, token, holder, expiresAt: new Date(Date.now() + ttlMs) });
        return token;
      } catch (err) {
        if (!isDuplicateKeyError(err)) throw err;
        const held = await this.locks.findOne({ _id: jobId });
        if (held && held.expiresAt.getTime() > Date.now()) return null;
        if (held) await this.locks.deleteOne({ _id: jobId, token: held.token });
      }
    }
    return null;
  }

  /** Releases the lock if it is still ours (an expired one may have been taken over). */
  async unlock(jobId: string, token: string): Promise<void> {
    await this.locks.deleteOne({ _id: jobId, token });
  }

  /** The job, the record of its current platform attempt and the model that attempt registered (null when absent). */
  async subject(jobId: string): Promise<PromotionSubject | null> {
    const job = await this.jobs.findOne({ _id: toObjectIdOrString(jobId) } as Filter<TrainingJobDoc>);
    if (!job) return null;
    const platformAttempt = platformAttemptOf(job);
    const record = await this.attempts.findOne({ _id: attemptKey(jobId, platformAttempt) });
    const modelId = record?.state.loraModelId;
    const model = modelId ? await this.models.findOne({ _id: toObjectIdOrString(modelId) } as Filter<LoraModelDoc>) : null;
    return { job, platformAttempt, record, model };
  }

  async findModel(id: ObjectId): Promise<LoraModelDoc | null> {
    return this.models.findOne({ _id: id });
  }

  /** The additional models registered from this job's checkpoints. */
  async versionsOf(jobId: string): Promise<LoraModelDoc[]> {
    return this.models.find({ 'versionOf.trainingJobId': jobId } as Filter<LoraModelDoc>).toArray();
  }

  /** True when `slug` is (now) reserved for `jobId`: inserted here, or earlier by the same job. */
  async holdSlug(slug: string, jobId: string): Promise<boolean> {
    try {
      await this.slugs.insertOne({ _id: slug, trainingJobId: jobId, reservedAt: new Date() });
      return true;
    } catch (err) {
      if (!isDuplicateKeyError(err)) throw err;
      return (await this.slugs.findOne({ _id: slug }))?.trainingJobId === jobId;
    }
  }

  /** A model other than `allowed` that already uses `slug` (the platform's data has no unique slug index). */
  async otherModelWithSlug(slug: string, allowed: ObjectId[]): Promise<LoraModelDoc | null> {
    return this.models.findOne({ slug, _id: { $nin: allowed } } as Filter<LoraModelDoc>);
  }

  /** A public model other than `except` whose trigger word (any case) is `word`: the resolver would have to choose. */
  async otherModelWithTrigger(word: string, except: ObjectId[]): Promise<LoraModelDoc | null> {
    const exact = new RegExp(`^${word.replace(/[.*+?^${}()|[\]\\-]/g, '\\$&')}$`, 'i');
    return this.models.findOne({ _id: { $nin: except }, $or: [{ triggerWords: exact }, { 'cognates.word': exact }] } as Filter<LoraModelDoc>);
  }

  /**
   * Points the model at another file: slug, publishedTo, hashes, previews.
   * Compare-and-set on the slug the caller read, so two promotions at once
   * never leave a document that mixes them: the loser gets false and re-reads.
   * The ComfyDeploy fields the platform adds for the previous file are
   * removed: they name `loras/<previous slug>.safetensors`.
   */
  async pointModelAt(modelId: ObjectId, expectedSlug: string, t: ModelFileTarget, at: Date): Promise<boolean> {
    const set: Document = {
      slug: t.slug,
      'publishedTo.modelFileUrl': t.fileUrl,
      'publishedTo.cloudflareUrl': t.fileUrl,
      'publishedTo.storageKey': t.storageKey,
      'publishedTo.uploadedAt': at,
      hashes: { sha256: t.sha256, autov2: t.autov2 },
      sizeBytes: t.bytes,
      previewImages: t.previewImages,
      updatedAt: at,
    };
    const unset: Document = { 'publishedTo.comfyDeployId': '', 'publishedTo.comfyDeployPath': '', 'publishedTo.comfyDeployUploadedAt': '' };
    if (t.step !== undefined) set['promotedCheckpoint'] = { step: t.step, loss: t.loss ?? null, sha256: t.sha256, promotedAt: at };
    else unset['promotedCheckpoint'] = '';
    const r = await this.models.updateOne({ _id: modelId, slug: expectedSlug } as Filter<LoraModelDoc>, { $set: set, $unset: unset });
    return r.matchedCount === 1;
  }

  /**
   * Registers checkpoint `t.step` of the job as an additional model beside
   * `main`: a copy of the main document (owner, family, visibility, training
   * facts) with its own `_id`, slug, file, name and trigger word. Idempotent
   * by `_id` (versionModelId): a second call returns the first document.
   */
  async registerVersion(main: LoraModelDoc, jobId: string, triggerWord: string, t: ModelFileTarget & { step: number }, at: Date): Promise<{ model: LoraModelDoc; created: boolean }> {
    const _id = versionModelId(jobId, t.step);
    const existing = await this.models.findOne({ _id });
    if (existing) return { model: existing, created: false };
    const { _id: _mainId, promotedCheckpoint: _p, rewardStats: _r, ...rest } = main as LoraModelDoc & { promotedCheckpoint?: unknown; rewardStats?: unknown };
    const publishedTo = { modelFileUrl: t.fileUrl, cloudflareUrl: t.fileUrl, storageKey: t.storageKey, uploadedAt: at };
    const versionOf: VersionOf = { trainingJobId: jobId, modelId: main._id, step: t.step };
    const doc: LoraModelDoc = {
      ...rest,
      _id,
      slug: t.slug,
      name: `${main.name} (step ${t.step})`,
      description: `Checkpoint at step ${t.step} of "${main.name}". Trigger word: ${triggerWord}.`,
      triggerWords: [triggerWord],
      cognates: [],
      previewImages: t.previewImages,
      usageCount: 0,
      rating: { avg: 0, count: 0 },
      hashes: { sha256: t.sha256, autov2: t.autov2 },
      sizeBytes: t.bytes,
      publishedTo,
      promotedCheckpoint: { step: t.step, loss: t.loss ?? null, sha256: t.sha256, promotedAt: at },
      versionOf,
      createdAt: at,
      updatedAt: at,
    };
    const { doc: model, created } = await insertOnce(this.models, doc);
    return { model, created };
  }

  /**
   * Appends `rec` to the attempt record's promotions unless the newest
   * promotion of the same model already says the same (a repeated promotion
   * records once; a crash between the model write and this one is healed by
   * the repeat). Call it under the job's promotion lock: the compare-and-set
   * on the array's length is not atomic on FerretDB. Also asks retention to
   * look at the record again (a promotion makes it due sooner).
   */
  async recordPromotion(jobId: string, platformAttempt: number, rec: PromotionRecord): Promise<boolean> {
    const _id = attemptKey(jobId, platformAttempt);
    for (let tries = 0; tries < 10; tries++) {
      const doc = await this.attempts.findOne({ _id }, { projection: { 'state.promotions': 1 } });
      if (!doc) throw new Error(`The attempt record ${_id} disappeared while promoting; nothing was recorded. Run the promotion again.`);
      const list = doc.state?.promotions ?? [];
      const last = [...list].reverse().find((p) => p.loraModelId === rec.loraModelId);
      if (last && last.step === rec.step && last.mode === rec.mode && last.loraUrl === rec.loraUrl) return false;
      const r = await this.attempts.updateOne({ _id, [`state.promotions.${list.length}`]: { $exists: false } } as Filter<AttemptDocWithRetention>, {
        $push: { 'state.promotions': rec },
        $set: { 'checkpointRetention.promotedAt': rec.promotedAt, 'checkpointRetention.notBefore': rec.promotedAt, updatedAt: rec.promotedAt },
        $unset: { 'checkpointRetention.doneAt': '' },
      } as never);
      if (r.modifiedCount === 1) return true;
    }
    throw new Error(`Recording the promotion on ${_id} kept colliding with concurrent writes; the model is promoted, run the promotion again to record it.`);
  }
}
