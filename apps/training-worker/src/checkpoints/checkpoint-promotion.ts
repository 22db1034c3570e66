/**
 * Promotes a checkpoint of a COMPLETED job (ADR 0008), without retraining and
 * without moving points:
 *
 * - `replace`: the job's model loads checkpoint N. Its file is copied
 *   (server-side) to `loras/<slug>-s<N>.safetensors` and the model document is
 *   pointed at that slug and file, so the platform's resolver turns the job's
 *   trigger word into `<lora:<slug>-s<N>:w>` and ComfyUI loads N's weights.
 *   Objects under `loras/` are never overwritten (immutable caching; ComfyDeploy
 *   keeps the file it pulled by name), which also keeps the final LoRA at
 *   `loras/<slug>.safetensors`: promoting the final step restores it.
 * - `version`: checkpoint N becomes a second model, `<name> (step N)`, slug
 *   `<slug>-v<N>`, trigger word `<trigger>_s<N>` (its own, so the job's trigger
 *   word never names two models).
 *
 * Idempotent: a promotion that is already in force changes nothing and is
 * recorded once (a repeat also records one that a crash left unrecorded).
 * Promotions of one job run one at a time (a lock document per job); a second
 * one at the same moment is refused, never interleaved.
 */
import { injectable } from 'tsyringe';
import type { ObjectId } from 'mongodb';
import {
  CheckpointPromotionRepository,
  finalStepOf,
  modelFileFields,
  promotableCheckpoints,
  promotedSlug,
  versionModelId,
  versionSlug,
  versionTriggerWord,
  type LoraModelDoc,
  type ModelFileTarget,
  type PromotableCheckpoint,
  type PromotionMode,
} from '@stationthis/db';
import { ObjectStorage, StorageError, copyObject, loraKey } from '@stationthis/storage';
import { TRAINING_JOB_METADATA } from '../pipeline/steps/publish-step';

/** How long one promotion may hold its job's lock (a copy of a large LoRA included) before another may take it over. */
const LOCK_MS = 10 * 60_000;

/** S3 user metadata on a promoted copy: which checkpoint's bytes it holds (lower-case keys, as S3 stores them). */
export const CHECKPOINT_STEP_METADATA = 'checkpoint-step';
export const CHECKPOINT_SHA256_METADATA = 'checkpoint-sha256';

export type PromotionRefusal =
  | 'job-not-found'
  | 'not-completed'
  | 'no-model'
  | 'model-withdrawn'
  | 'unknown-step'
  | 'checkpoint-deleted'
  | 'name-taken'
  | 'trigger-taken'
  | 'concurrent-promotion';

/** A promotion that was not made, and why; nothing was changed. */
export class PromotionRefused extends Error {
  override name = 'PromotionRefused';
  constructor(
    readonly reason: PromotionRefusal,
    message: string,
  ) {
    super(message);
  }
}

export interface PromoteRequest {
  jobId: string;
  /** A checkpoint's step, or 'final' for the LoRA the job published. */
  step: number | 'final';
  mode: PromotionMode;
  /** Who asked (operator, user id): recorded on the promotion. */
  promotedBy?: string;
}

export interface PromoteResult {
  jobId: string;
  platformAttempt: number;
  step: number;
  mode: PromotionMode;
  final: boolean;
  loraModelId: string;
  slug: string;
  triggerWord: string;
  loraUrl: string;
  /** False when the promotion was already in force (nothing written to the model). */
  changed: boolean;
  /** False when the attempt record already said so (recorded once). */
  recorded: boolean;
}

@injectable()
export class CheckpointPromotion {
  constructor(
    private readonly repo: CheckpointPromotionRepository,
    private readonly storage: ObjectStorage,
  ) {}

  async promote(req: PromoteRequest): Promise<PromoteResult> {
    const token = await this.repo.lock(req.jobId, req.promotedBy ?? 'promotion', LOCK_MS);
    if (!token) throw new PromotionRefused('concurrent-promotion', `Another promotion of job ${req.jobId} is running; nothing was changed. Try again when it has finished.`);
    try {
      return await this.promoteLocked(req);
    } finally {
      await this.repo.unlock(req.jobId, token);
    }
  }

  private async promoteLocked(req: PromoteRequest): Promise<PromoteResult> {
    const { jobId, mode } = req;
    const subject = await this.repo.subject(jobId);
    if (!subject) throw new PromotionRefused('job-not-found', `Training job ${jobId} does not exist; check the id (cli list).`);
    const { job, platformAttempt, record, model } = subject;
    if (job.status !== 'COMPLETED') {
      throw new PromotionRefused('not-completed', `Training job ${jobId} is ${job.status}, not COMPLETED: only a completed job's checkpoints can be promoted. Wait for it to complete.`);
    }
    if (!record || !model || !record.state.slug) {
      throw new PromotionRefused('no-model', `Training job ${jobId} (platform attempt ${platformAttempt}) has no registered model on its attempt record, so there is nothing to promote into.`);
    }
    if ((model.moderation as { status?: string } | undefined)?.status === 'withdrawn') {
      throw new PromotionRefused('model-withdrawn', `The model of job ${jobId} (${model.slug}) was withdrawn; restore it before promoting a checkpoint.`);
    }
    const finalStep = finalStepOf(job, model);
    const checkpoints = promotableCheckpoints(record.state, finalStep, typeof job.currentLoss === 'number' ? job.currentLoss : null);
    const step = req.step === 'final' ? finalStep : req.step;
    const cp = checkpoints.find((c) => c.step === step);
    if (step === null || !cp) {
      const steps = checkpoints.map((c) => (c.final ? `${c.step} (final)` : String(c.step))).join(', ') || 'none';
      throw new PromotionRefused('unknown-step', `Job ${jobId} has no checkpoint at step ${req.step}; its checkpoints are at steps: ${steps}.`);
    }
    if (cp.deletedAt) {
      throw new PromotionRefused('checkpoint-deleted', `The checkpoint of job ${jobId} at step ${cp.step} was deleted by retention on ${cp.deletedAt.toISOString()}; promote one that is kept (cli show ${jobId}).`);
    }
    const baseSlug = record.state.slug;
    const trigger = model.triggerWords[0] ?? String(job.triggerWord ?? '');
    const versionId = versionModelId(jobId, cp.step);

    let target: ModelFileTarget;
    let loraModelId: ObjectId;
    let changed = false;
    let triggerWord = trigger;
    if (mode === 'replace') {
      const slug = cp.final ? baseSlug : promotedSlug(baseSlug, cp.step);
      loraModelId = model._id;
      const current = modelFileFields(model);
      target = await this.fileFor(jobId, cp, slug, [model._id, versionId]);
      if (current.slug !== target.slug || current.storageKey !== target.storageKey || current.fileUrl !== target.fileUrl) {
        if (!(await this.repo.pointModelAt(model._id, model.slug, target, new Date()))) {
          throw new PromotionRefused('concurrent-promotion', `The model of job ${jobId} changed while promoting step ${cp.step} (another promotion ran at the same time); run the promotion again.`);
        }
        changed = true;
      }
    } else {
      const slug = versionSlug(baseSlug, cp.step);
      triggerWord = versionTriggerWord(trigger, cp.step);
      const clash = await this.repo.otherModelWithTrigger(triggerWord, [versionId]);
      if (clash) {
        throw new PromotionRefused('trigger-taken', `The trigger word "${triggerWord}" for step ${cp.step} of job ${jobId} is already used by model ${String(clash._id)} (${clash.slug}); two models with one trigger word make the platform pick one. Rename that model's trigger word or promote with replace.`);
      }
      target = await this.fileFor(jobId, cp, slug, [model._id, versionId]);
      const { model: version, created } = await this.repo.registerVersion(model as LoraModelDoc, jobId, triggerWord, { ...target, step: cp.step }, new Date());
      loraModelId = version._id;
      changed = created;
    }
    const recorded = await this.repo.recordPromotion(jobId, platformAttempt, {
      step: cp.step,
      mode,
      loraModelId: String(loraModelId),
      loraUrl: target.fileUrl,
      promotedAt: new Date(),
      ...(req.promotedBy ? { promotedBy: req.promotedBy } : {}),
    });
    return { jobId, platformAttempt, step: cp.step, mode, final: cp.final, loraModelId: String(loraModelId), slug: target.slug, triggerWord, loraUrl: target.fileUrl, changed, recorded };
  }

  /**
   * The `loras/<slug>.safetensors` file holding checkpoint `cp`: the published
   * final file itself, or a server-side copy made once (reused when a copy
   * with the same checkpoint's hash is already there). A name held by
   * another job, another model or an object we did not write is refused.
   */
  private async fileFor(jobId: string, cp: PromotableCheckpoint, slug: string, ownModels: ObjectId[]): Promise<ModelFileTarget> {
    const key = loraKey(slug);
    const described = { slug, fileUrl: this.storage.publicUrl('models', key), storageKey: key, sha256: cp.sha256, autov2: cp.autov2, bytes: cp.bytes, previewImages: cp.sampleUrls };
    if (cp.final && key === cp.loraKey) return described;
    if (!(await this.repo.holdSlug(slug, jobId))) {
      throw new PromotionRefused('name-taken', `The name "${slug}" for step ${cp.step} of job ${jobId} is reserved by another training job; nothing was promoted. Report this: slugs of one job should never collide.`);
    }
    const other = await this.repo.otherModelWithSlug(slug, ownModels);
    if (other) throw new PromotionRefused('name-taken', `The name "${slug}" for step ${cp.step} of job ${jobId} is already used by model ${String(other._id)}; nothing was promoted.`);
    const head = await this.storage.headObject('models', key);
    if (head) {
      if (head.metadata[TRAINING_JOB_METADATA] === jobId && head.metadata[CHECKPOINT_SHA256_METADATA] === cp.sha256 && head.bytes === cp.bytes) return { ...described, step: cp.final ? undefined : cp.step, loss: cp.loss };
      throw new PromotionRefused('name-taken', `'${key}' in the models bucket already holds a file that is not step ${cp.step} of job ${jobId}; it is never overwritten (loras/ files are cached as immutable). Nothing was promoted.`);
    }
    try {
      await copyObject(this.storage, { alias: 'models', key: cp.loraKey }, { alias: 'models', key }, {
        contentType: 'application/octet-stream',
        cacheControl: 'public, max-age=31536000, immutable',
        metadata: { [TRAINING_JOB_METADATA]: jobId, [CHECKPOINT_STEP_METADATA]: String(cp.step), [CHECKPOINT_SHA256_METADATA]: cp.sha256 },
      });
    } catch (err) {
      if (err instanceof StorageError && err.kind === 'not-found') {
        throw new PromotionRefused('checkpoint-deleted', `The file of job ${jobId}'s checkpoint at step ${cp.step} ('${cp.loraKey}') is no longer stored; nothing was promoted.`);
      }
      throw err;
    }
    return { ...described, step: cp.final ? undefined : cp.step, loss: cp.loss };
  }
}
