import { createHash } from 'node:crypto';
import { ObjectId, type Collection, type Db, type Filter } from 'mongodb';
import { inject, injectable } from 'tsyringe';
import { idForms, toObjectId, toObjectIdOrString, type IdLike } from '@stationthis/common';
import { ensureNamedIndexes, insertOnce, isDuplicateKeyError } from '@stationthis/common';
import { MONGO_DB } from './mongo';

export const LORA_MODELS_COLLECTION = 'loraModels';
/**
 * One document per slug a training job took (`_id` = slug): the conditional
 * insert that makes slugs unique among trained models. `loraModels` itself
 * cannot carry a unique slug index: the platform's data may already hold
 * duplicates (it relies on a random 6-hex suffix) and FerretDB has no partial
 * unique index.
 */
export const LORA_SLUG_RESERVATIONS_COLLECTION = 'loraSlugReservations';

interface SlugReservationDoc {
  _id: string;
  trainingJobId: string;
  reservedAt: Date;
}

/** A `loraModels` document as createTrainedLoRAModel writes it (stationthis-platform.md 1.4). */
export interface LoraModelDoc {
  _id: ObjectId;
  slug: string;
  name: string;
  description?: string;
  triggerWords: string[];
  cognates: Array<{ word: string; replaceWith: string }>;
  defaultWeight: number;
  modelType?: string;
  checkpoint: string;
  trainedFrom?: {
    trainingId: ObjectId;
    datasetId?: ObjectId | string;
    tool: string;
    steps?: number;
    baseModel: string;
    duration?: number;
    finalLoss?: number | null;
    trainedAt: Date;
  };
  tags: Array<{ tag: string; source: string; score?: number }>;
  previewImages: string[];
  usageCount: number;
  visibility: string;
  permissionType: string;
  createdBy: ObjectId;
  ownedBy: ObjectId;
  publishedTo?: Record<string, unknown>;
  moderation?: Record<string, unknown>;
  createdAt: Date;
  updatedAt: Date;
  [extra: string]: unknown;
}

export interface RegisterTrainedModelInput {
  trainingJobId: IdLike;
  masterAccountId: IdLike;
  datasetId?: IdLike;
  modelName: string;
  /**
   * A slug the caller already chose (e.g. because the file is already stored at
   * `loras/<slug>.safetensors`). Default: `slugify(modelName)-<6 hex>`, made unique here.
   */
  slug?: string;
  triggerWord: string;
  baseModel: string;
  /**
   * `loraModels.checkpoint`, what the platform's LoRA resolver matches a
   * workflow's checkpoint against. Default: the platform's own mapping of
   * `baseModel` (checkpointFor), which files any "flux…" name under FLUX.
   */
  checkpoint?: string;
  /**
   * Public URL of the .safetensors file in our R2 models bucket. Becomes
   * `publishedTo.modelFileUrl` and `publishedTo.cloudflareUrl`, as the
   * platform's createTrainedLoRAModel writes an R2 upload: its ComfyDeploy
   * upload (TrainingFinalizationService.uploadToComfyDeploy) downloads
   * `cloudflareUrl || modelFileUrl` into `loras/<slug>.safetensors`.
   */
  modelFileUrl: string;
  /** Object-store key of the file (publishedTo.storageKey), for our own bookkeeping. */
  storageKey?: string;
  description?: string;
  tool?: string;
  steps?: number;
  durationSeconds?: number;
  finalLoss?: number | null;
  previewImages?: string[];
  visibility?: 'public' | 'private' | 'unlisted';
  extra?: Record<string, unknown>;
}

/** The platform's checkpoint mapping, in its order (loRAModelDb.js:251-260). */
export function checkpointFor(baseModel: string): string {
  const b = baseModel.toLowerCase();
  if (b.includes('kontext')) return 'KONTEXT';
  if (b.includes('flux')) return 'FLUX';
  if (b.includes('sdxl')) return 'SDXL';
  if (b.includes('sd1.5')) return 'SD1.5';
  if (b.includes('sd3')) return 'SD3';
  if (b.includes('wan')) return 'WAN';
  return baseModel.toUpperCase();
}

export function slugify(name: string): string {
  const s = name
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '') // drop accents: "Ü" → "U"
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 60);
  return s || 'lora';
}

/**
 * A deterministic ObjectId for the model trained by `trainingJobId`: the job
 * id's timestamp plus 8 bytes of a hash. A retried registration computes the
 * same `_id`, so the `_id` index makes it idempotent; FerretDB has no partial
 * unique index, and a plain unique index on `trainedFrom.trainingId` would
 * collide on imported models that lack it.
 */
export function modelIdForTrainingJob(trainingJobId: IdLike): ObjectId {
  const text = String(trainingJobId);
  const bytes = Buffer.alloc(12);
  const ts = ObjectId.isValid(text) && text.length === 24 ? new ObjectId(text).getTimestamp().getTime() / 1000 : 0;
  bytes.writeUInt32BE(Math.floor(ts));
  createHash('sha256').update(`loraModel:${text}`).digest().copy(bytes, 4, 0, 8);
  return new ObjectId(bytes);
}

/** Write side of `loraModels` for trained models; everything else is the platform's. */
@injectable()
export class LoraModelRepository {
  private readonly models: Collection<LoraModelDoc>;
  private readonly slugs: Collection<SlugReservationDoc>;

  constructor(@inject(MONGO_DB) db: Db) {
    this.models = db.collection<LoraModelDoc>(LORA_MODELS_COLLECTION);
    this.slugs = db.collection<SlugReservationDoc>(LORA_SLUG_RESERVATIONS_COLLECTION);
  }

  /**
   * A slug for the model `trainingJobId` will register, that no other model
   * and no other training job holds, reserved for that job by a conditional
   * insert (`_id` = slug). Idempotent: the candidates are derived from the job
   * id, so a resumed or retried attempt of the same job gets the same slug
   * back. `isTaken` lets the caller refuse a candidate for a reason of its own
   * (e.g. an object of another job already stored under that slug's key);
   * such a candidate stays reserved and is never handed out.
   */
  async reserveSlug(modelName: string, trainingJobId: IdLike, isTaken?: (slug: string) => Promise<boolean>): Promise<string> {
    const job = String(trainingJobId);
    const base = slugify(modelName);
    const ownModelId = modelIdForTrainingJob(job);
    for (let i = 0; i < SLUG_CANDIDATES; i++) {
      const slug = `${base}-${createHash('sha256').update(`${job}:${i}`).digest('hex').slice(0, 6)}`;
      if (!(await this.holdSlug(slug, job))) continue;
      const model = await this.models.findOne({ slug }, { projection: { _id: 1 } });
      if (model && !model._id.equals(ownModelId)) continue;
      if (isTaken && (await isTaken(slug))) continue;
      return slug;
    }
    throw new Error(`No free slug for "${modelName}" (job ${job}) after ${SLUG_CANDIDATES} candidates; the loraModels slugs or the ${LORA_SLUG_RESERVATIONS_COLLECTION} collection look corrupted.`);
  }

  /** True when `slug` is (now) reserved for `job`: inserted here, or inserted earlier by the same job. */
  private async holdSlug(slug: string, job: string): Promise<boolean> {
    try {
      await this.slugs.insertOne({ _id: slug, trainingJobId: job, reservedAt: new Date() });
      return true;
    } catch (err) {
      if (!isDuplicateKeyError(err)) throw err;
      const holder = await this.slugs.findOne({ _id: slug });
      return holder?.trainingJobId === job;
    }
  }

  /** Non-unique on slug: existing platform data may already hold duplicates (no unique index there). */
  async ensureIndexes(): Promise<void> {
    await ensureNamedIndexes(this.models, [
      { key: { slug: 1 }, name: 'st_slug' },
      { key: { 'trainedFrom.trainingId': 1 }, name: 'st_trained_from' },
    ]);
  }

  /**
   * Register the model a training job produced. Idempotent by training job id:
   * a retry (after a crash, or a duplicate delivery) returns the existing doc.
   * The slug is `slugify(name)-<6 hex>`, the hex derived from the job id so a
   * retry computes the same one; on a clash with another model it is re-derived.
   */
  async registerTrainedModel(input: RegisterTrainedModelInput): Promise<{ model: LoraModelDoc; created: boolean }> {
    const _id = modelIdForTrainingJob(input.trainingJobId);
    const existing = await this.models.findOne({ _id });
    if (existing) return { model: existing, created: false };

    const owner = toObjectId(input.masterAccountId, 'masterAccountId');
    const checkpoint = input.checkpoint ?? checkpointFor(input.baseModel);
    const now = new Date();
    const job = String(input.trainingJobId);
    if (input.slug !== undefined && !(await this.holdSlug(input.slug, job))) {
      throw new Error(`Slug "${input.slug}" is reserved by another training job; reserve one with reserveSlug() for job ${job} and register with it.`);
    }
    const slug = input.slug ?? (await this.reserveSlug(input.modelName, job));
    const doc: LoraModelDoc = {
      ...(input.extra ?? {}),
      _id,
      slug,
      name: input.modelName,
      description: input.description ?? '',
      triggerWords: [input.triggerWord],
      cognates: [],
      defaultWeight: 1.0,
      modelType: 'lora',
      checkpoint,
      trainedFrom: {
        trainingId: toObjectId(input.trainingJobId, 'trainingJobId'),
        datasetId: input.datasetId !== undefined ? toObjectIdOrString(input.datasetId) : undefined,
        tool: input.tool ?? 'ai-toolkit',
        steps: input.steps,
        baseModel: input.baseModel,
        duration: input.durationSeconds,
        finalLoss: input.finalLoss ?? null,
        trainedAt: now,
      },
      tags: [
        { tag: 'trained', source: 'training' },
        { tag: checkpoint.toLowerCase(), source: 'training' },
      ],
      previewImages: input.previewImages ?? [],
      usageCount: 0,
      rating: { avg: 0, count: 0 },
      visibility: input.visibility ?? 'public',
      permissionType: 'public',
      createdBy: owner,
      ownedBy: owner,
      publishedTo: { modelFileUrl: input.modelFileUrl, cloudflareUrl: input.modelFileUrl, storageKey: input.storageKey, uploadedAt: now },
      moderation: {
        status: 'approved',
        flagged: false,
        requestedBy: owner,
        requestedAt: now,
        reviewedBy: 'AUTO_APPROVED_TRAINING',
        reviewedAt: now,
        issues: [],
      },
      createdAt: now,
      updatedAt: now,
    };
    stripUndefined(doc.trainedFrom as unknown as Record<string, unknown>);
    stripUndefined(doc.publishedTo as Record<string, unknown>);
    const { doc: model, created } = await insertOnce(this.models, doc);
    return { model, created };
  }

  /**
   * The job's own model: the one registration gave the deterministic id. A
   * promoted checkpoint registered as a version carries the same
   * `trainedFrom.trainingId`, so the id decides; models imported without our
   * id fall back to the first one trained from the job.
   */
  async findByTrainingJobId(trainingJobId: IdLike): Promise<LoraModelDoc | null> {
    const own = await this.models.findOne({ _id: modelIdForTrainingJob(trainingJobId) } as Filter<LoraModelDoc>);
    return own ?? this.models.findOne({ 'trainedFrom.trainingId': { $in: idForms(trainingJobId) } } as Filter<LoraModelDoc>);
  }

  async findById(id: IdLike): Promise<LoraModelDoc | null> {
    return this.models.findOne({ _id: toObjectIdOrString(id) } as Filter<LoraModelDoc>);
  }

  async findBySlug(slug: string): Promise<LoraModelDoc | null> {
    return this.models.findOne({ slug });
  }
}

/** Slug candidates tried per model before giving up (each is a 6-hex suffix: 16.7 M values). */
const SLUG_CANDIDATES = 20;

function stripUndefined(obj: Record<string, unknown>): void {
  for (const k of Object.keys(obj)) if (obj[k] === undefined) delete obj[k];
}
