/**
 * publish: upload the LoRA (content-addressed metadata, immutable caching),
 * up to four samples, the engine log and the job spec (keyed per platform
 * attempt and claim, their URLs recorded on the attempt record); then register the
 * model in the platform's loraModels collection. Both record their result in
 * the pipeline state, so a resumed attempt never uploads or registers twice.
 *
 * The LoRA's key is `loras/<slug>.safetensors` in the models bucket: the
 * platform's resolver turns the trigger word into `<lora:<slug>:w>` and its
 * ComfyUI tree loads that file (stationthis-platform.md section 5). So the
 * slug is reserved for this job before the upload (unique among trained
 * models) and an object another job stored under it is never overwritten.
 */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { inject, injectable } from 'tsyringe';
import { LoraModelRepository } from '@stationthis/db';
import { MODEL_UPLOAD_PORT, ObjectStorage, attemptLogKey, finalSampleKey, jobSpecKey, loraKey, type ModelUploadPort } from '@stationthis/storage';
import { sampleStepOf, type SavePlan } from '@stationthis/recipes';
import { WorkerMetrics } from '../../observability/metrics';
import { JobFailure } from '../failures';
import type { UploadState } from '../pipeline-state';
import type { Attempt, Prepared } from './attempt';

/** S3 user metadata naming the training job whose model an object is (lower-case: S3 and MinIO lower-case metadata keys). */
export const TRAINING_JOB_METADATA = 'training-job-id';

export interface PublishFiles {
  loraPath: string;
  outputDir: string;
  logFile: string;
  jobDir: string;
  samplesDir?: string;
  /** The job's intermediate saves: their samples share samplesDir, and the model's previews are the final ones. */
  saves?: SavePlan;
}

/** Up to four previews: with intermediate saves, the samples of the newest step only (the final LoRA's). */
export function finalSamples(names: string[], saves: SavePlan | undefined): string[] {
  const sorted = [...names].sort();
  if (!saves?.samples) return sorted.slice(0, 4);
  const stepOf = (n: string) => sampleStepOf(saves, n) ?? -1;
  const newest = Math.max(-1, ...sorted.map(stepOf));
  return sorted.filter((n) => stepOf(n) === newest).slice(0, 4);
}

@injectable()
export class PublishStep {
  constructor(
    @inject(MODEL_UPLOAD_PORT) private readonly uploader: ModelUploadPort,
    // No storage port reads object metadata (headObject): the slug check keeps the adapter.
    private readonly storage: ObjectStorage,
    private readonly models: LoraModelRepository,
    private readonly metrics: WorkerMetrics,
  ) {}

  async upload(a: Attempt, p: Prepared, files: PublishFiles): Promise<UploadState> {
    const { ctx, state, writer } = a;
    // Samples, log and spec are keyed by platform attempt and lease: a Retry or a stale claim never overwrites another's.
    const platformAttempt = a.ref.platformAttempt;
    const lease = ctx.lease.attemptId;
    const slug = await this.slugFor(ctx.jobId, p.outputName, state.slug);
    if (slug !== state.slug) {
      // Chosen before the upload because it is the file's key; registration reuses it.
      state.slug = slug;
      await writer.setState({ slug });
    }
    const key = loraKey(slug);
    try {
      const lora = await this.uploader.upload({
        filePath: files.loraPath,
        bucketAlias: 'models',
        key,
        contentType: 'application/octet-stream',
        cacheControl: 'public, max-age=31536000, immutable',
        metadata: { [TRAINING_JOB_METADATA]: ctx.jobId },
      });
      this.metrics.bytesMoved.inc({ direction: 'up', kind: 'lora' }, lora.bytes);
      const sampleUrls: string[] = [];
      if (files.samplesDir) {
        const dir = join(files.outputDir, files.samplesDir);
        const names = finalSamples((await readdir(dir).catch(() => [] as string[])).filter((n) => /\.(png|jpe?g|webp)$/i.test(n)), files.saves);
        for (const name of names) {
          const up = await this.uploader.upload({ filePath: join(dir, name), bucketAlias: 'models', key: finalSampleKey(ctx.jobId, platformAttempt, lease, name), contentType: name.endsWith('.png') ? 'image/png' : name.endsWith('.webp') ? 'image/webp' : 'image/jpeg' });
          sampleUrls.push(up.publicUrl);
        }
      }
      const log = (await stat(files.logFile).catch(() => null))
        ? await this.uploader.upload({ filePath: files.logFile, bucketAlias: 'models', key: attemptLogKey(ctx.jobId, platformAttempt, lease), contentType: 'text/plain; charset=utf-8' })
        : undefined;
      const config = await this.uploader.upload({ filePath: join(files.jobDir, 'job-spec.json'), bucketAlias: 'models', key: jobSpecKey(ctx.jobId, platformAttempt, lease), contentType: 'application/json' });
      const upload: UploadState = { loraUrl: lora.publicUrl, loraKey: key, sha256: lora.sha256, autov2: lora.autov2, bytes: lora.bytes, sampleUrls, logUrl: log?.publicUrl, configUrl: config.publicUrl };
      await writer.setState({ upload });
      ctx.log.info({ loraUrl: upload.loraUrl, bytes: upload.bytes, sha256: upload.sha256 }, 'outputs uploaded');
      return upload;
    } catch (e) {
      throw new JobFailure('infrastructure', `Uploading the trained model failed: ${(e as Error).message}.`, { cause: e });
    }
  }

  /** The recorded slug while no other job's object sits under its key, else a newly reserved free one. */
  private async slugFor(jobId: string, outputName: string, recorded: string | undefined): Promise<string> {
    const otherJobsObject = (slug: string) => this.storedByAnotherJob(loraKey(slug), jobId);
    try {
      if (recorded && !(await otherJobsObject(recorded))) return recorded;
      return await this.models.reserveSlug(outputName, jobId, otherJobsObject);
    } catch (e) {
      throw new JobFailure('infrastructure', `Choosing a free name for the trained model failed: ${(e as Error).message}.`, { cause: e });
    }
  }

  /**
   * True when `key` holds an object that is not this job's model: one another
   * job uploaded (its metadata names that job) or one we did not upload at
   * all (no job metadata). Such an object is never overwritten.
   */
  private async storedByAnotherJob(key: string, jobId: string): Promise<boolean> {
    const head = await this.storage.headObject('models', key);
    return head !== null && head.metadata[TRAINING_JOB_METADATA] !== jobId;
  }

  async register(a: Attempt, p: Prepared): Promise<void> {
    const { state, writer, request } = a;
    if (state.loraModelId) return;
    const upload = state.upload!;
    const { model } = await this.models.registerTrainedModel({
      trainingJobId: request.jobId,
      // The account userCore binds the job to (prepare), which also owns the dataset check.
      masterAccountId: p.payer.masterAccountId,
      datasetId: String(request.datasetId),
      modelName: p.outputName,
      slug: state.slug!,
      triggerWord: p.triggerWord,
      baseModel: p.recipe.baseModel,
      // The recipe's own registration data (e.g. KONTEXT); absent: the platform's mapping of baseModel.
      ...(p.recipe.registration ? { checkpoint: p.recipe.registration.checkpoint } : {}),
      modelFileUrl: upload.loraUrl,
      storageKey: upload.loraKey,
      description: request.description ?? `Trained LoRA model with trigger word: ${p.triggerWord}`,
      tool: p.recipe.engine.name,
      steps: Number((p.parameters as { steps?: number }).steps ?? request.totalSteps ?? 0),
      durationSeconds: state.trainSeconds ?? 0,
      finalLoss: request.currentLoss,
      previewImages: upload.sampleUrls,
      extra: {
        // Where the file came from and how to verify it (Civitai/A1111 AutoV2 short hash).
        hashes: { sha256: upload.sha256, autov2: upload.autov2 },
        sizeBytes: upload.bytes,
        recipe: { id: p.recipe.id, version: p.recipe.version, engineCommit: p.recipe.engine.commit },
      },
    });
    state.loraModelId = String(model._id);
    await writer.setState({ loraModelId: state.loraModelId });
  }
}
