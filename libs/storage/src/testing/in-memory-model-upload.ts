/** ModelUploadPort in memory: the file is read, hashed and kept in an InMemoryObjects. Passes test/conformance/model-upload.suite.ts. */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import type { R2Config } from '../config';
import { StorageError } from '../errors';
import { assertSafeKey } from '../keys';
import { autoV2, type ModelUploadPort, type UploadRequest, type UploadedObject } from '../model-upload.port';
import { publicUrlOf } from '../public-urls';
import { InMemoryObjects } from './in-memory-objects';

export class InMemoryModelUpload implements ModelUploadPort {
  /** Every successful upload, in order. */
  readonly uploads: UploadedObject[] = [];

  constructor(
    private readonly config: Pick<R2Config, 'endpoint' | 'buckets'>,
    readonly objects: InMemoryObjects = new InMemoryObjects(),
  ) {}

  async upload(req: UploadRequest): Promise<UploadedObject> {
    const bucket = this.config.buckets[req.bucketAlias].bucket;
    assertSafeKey(req.key, bucket);
    let body: Buffer;
    try {
      const st = await fsp.stat(req.filePath);
      if (!st.isFile()) throw new Error('not a regular file');
      body = await fsp.readFile(req.filePath);
    } catch (err) {
      throw new StorageError('invalid-argument', `Cannot upload ${req.filePath} to '${req.key}' in bucket '${bucket}': ${(err as Error).message}.`, { bucket, key: req.key, cause: err });
    }
    if (req.signal?.aborted) throw new StorageError('aborted', `Upload of '${req.key}' to bucket '${bucket}' was cancelled. Nothing was stored.`, { bucket, key: req.key });
    const sha256 = createHash('sha256').update(body).digest('hex');
    req.onProgress?.({ uploadedBytes: body.length, hashedBytes: body.length, totalBytes: body.length });
    this.objects.put(req.bucketAlias, req.key, body);
    const out: UploadedObject = { bucketAlias: req.bucketAlias, key: req.key, bytes: body.length, sha256, autov2: autoV2(sha256), publicUrl: publicUrlOf(this.config, req.bucketAlias, req.key) };
    this.uploads.push(out);
    return out;
  }
}
