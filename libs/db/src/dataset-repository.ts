import type { Collection, Db, Filter, ObjectId } from 'mongodb';
import { inject, injectable } from 'tsyringe';
import { toObjectId, toObjectIdOrString, type IdLike } from '@stationthis/common';
import { MONGO_DB } from './mongo';

export const DATASETS_COLLECTION = 'datasets';

/** Embellishment (captions, control images) as the platform's downloader reads it. */
export interface DatasetEmbellishment {
  _id?: ObjectId | string;
  type: string; // 'caption' | 'control' (schema comment says 'control_image'; the downloader filters 'control')
  method?: string;
  status?: 'in_progress' | 'completed' | 'failed';
  isDefault?: boolean;
  results?: Array<{ generationOutputId?: unknown; value?: string | null; definition?: unknown }>;
  [extra: string]: unknown;
}

/** A `datasets` document (stationthis-platform.md 1.3). `ownerAccountId` is an ObjectId here. */
export interface DatasetDoc {
  _id: ObjectId;
  name: string;
  description?: string;
  ownerAccountId: ObjectId | string;
  images: string[];
  captionSets?: Array<{ _id?: unknown; method?: string; captions: Array<string | null>; isDefault?: boolean; status?: string; [k: string]: unknown }>;
  embellishments?: DatasetEmbellishment[];
  controlImages?: Array<{ url: string; [k: string]: unknown }>;
  tags?: string[];
  visibility?: 'public' | 'private' | 'unlisted';
  status?: 'draft' | 'ready' | 'locked' | 'archived';
  usageCount?: number;
  createdAt: Date;
  updatedAt: Date;
  [extra: string]: unknown;
}

export interface CreateDatasetInput {
  name: string;
  ownerAccountId: IdLike;
  images: string[];
  description?: string;
  captions?: string[];
  visibility?: 'public' | 'private' | 'unlisted';
  extra?: Record<string, unknown>;
}

/** Read side of `datasets`, plus a platform-shaped create for the CLI and tests. */
@injectable()
export class DatasetRepository {
  private readonly datasets: Collection<DatasetDoc>;

  constructor(@inject(MONGO_DB) db: Db) {
    this.datasets = db.collection<DatasetDoc>(DATASETS_COLLECTION);
  }

  /** Accepts the string form stored in trainingJobs.datasetId or an ObjectId. */
  async findById(id: IdLike): Promise<DatasetDoc | null> {
    return this.datasets.findOne({ _id: toObjectIdOrString(id) } as Filter<DatasetDoc>);
  }

  /** What DatasetService.create writes; captions go into a default legacy caption set. */
  async create(input: CreateDatasetInput): Promise<string> {
    const now = new Date();
    const doc: Record<string, unknown> = {
      ...(input.extra ?? {}),
      name: input.name,
      description: input.description ?? '',
      ownerAccountId: toObjectId(input.ownerAccountId, 'Dataset ownerAccountId'),
      images: input.images,
      tags: [],
      visibility: input.visibility ?? 'private',
      status: 'draft',
      usageCount: 0,
      createdAt: now,
      updatedAt: now,
    };
    if (input.captions) {
      doc['captionSets'] = [
        { method: 'manual', captions: input.captions, createdAt: now, status: 'completed', isDefault: true, completedAt: now },
      ];
    }
    const r = await this.datasets.insertOne(doc as unknown as DatasetDoc);
    return r.insertedId.toHexString();
  }
}
