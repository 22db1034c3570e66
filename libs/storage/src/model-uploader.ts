/**
 * Uploads a trained model (or any job artifact) from a local file, computing
 * its sha256 and AutoV2 hash in the same pass as the upload.
 *
 * AutoV2 is Civitai's name for AUTOMATIC1111's "shorthash": the first 10 hex
 * characters of the SHA-256 of the whole file (A1111 `modules/hashes.py`,
 * `calculate_shorthash` → `sha256(...)[0:10]`). Civitai shows it upper-case
 * and matches it case-insensitively; we return lower-case like A1111.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { inject, injectable } from 'tsyringe';
import { StorageError } from './errors';
import { autoV2, type ModelUploadPort, type UploadRequest, type UploadedObject } from './model-upload.port';
import { ObjectStorage } from './object-storage';

@injectable()
export class ModelUploader implements ModelUploadPort {
  constructor(@inject(ObjectStorage) private readonly storage: ObjectStorage) {}

  async upload(req: UploadRequest): Promise<UploadedObject> {
    const bucket = this.storage.bucket(req.bucketAlias).bucket;
    let totalBytes: number;
    try {
      const st = await fsp.stat(req.filePath);
      if (!st.isFile()) throw new Error('not a regular file');
      totalBytes = st.size;
    } catch (err) {
      throw new StorageError('invalid-argument', `Cannot upload ${req.filePath} to '${req.key}' in bucket '${bucket}': ${(err as Error).message}.`, {
        bucket,
        key: req.key,
        cause: err,
      });
    }
    const hash = createHash('sha256');
    let hashedBytes = 0;
    let uploadedBytes = 0;
    const report = () => req.onProgress?.({ uploadedBytes, hashedBytes, totalBytes });
    await this.storage.uploadFile(req.bucketAlias, req.key, req.filePath, {
      contentType: req.contentType,
      cacheControl: req.cacheControl,
      metadata: req.metadata,
      partSize: req.partSize,
      queueSize: req.queueSize,
      signal: req.signal,
      // The file is read strictly in order, so this is the sha256 of the whole file.
      onRead: (chunk) => {
        hash.update(chunk);
        hashedBytes += chunk.length;
      },
      onProgress: (loaded) => {
        uploadedBytes = loaded;
        report();
      },
    });
    const sha256 = hash.digest('hex');
    // The server must hold all of it (uploadFile already refused a file that changed size).
    const head = await this.storage.headObject(req.bucketAlias, req.key);
    if (hashedBytes !== totalBytes || !head || head.bytes !== hashedBytes) {
      await this.storage.deleteObject(req.bucketAlias, req.key).catch(() => undefined);
      throw new StorageError(
        'invalid-content',
        `Upload of ${req.filePath} to '${req.key}' in bucket '${bucket}' is incomplete: file was ${totalBytes} bytes, ${hashedBytes} were read, the server holds ${head?.bytes ?? 'nothing'}. The object was removed; upload again.`,
        { bucket, key: req.key },
      );
    }
    uploadedBytes = hashedBytes;
    report();
    return { bucketAlias: req.bucketAlias, key: req.key, bytes: hashedBytes, sha256, autov2: autoV2(sha256), publicUrl: this.storage.publicUrl(req.bucketAlias, req.key) };
  }
}
