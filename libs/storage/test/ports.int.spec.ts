/**
 * The real adapters against the port conformance suites, on MinIO: the
 * same assertions the in-memory fakes pass in ports.spec.ts. Each adapter
 * is resolved from a container filled by registerStorage, through its port token.
 */
import 'reflect-metadata';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { container as root } from 'tsyringe';
import { DATASET_FETCH_PORT, MODEL_UPLOAD_PORT, ObjectStorage, S3_CLIENT, WEIGHT_CACHE_PORT, registerStorage } from '../src';
import { datasetFetchConformance } from './conformance/dataset-fetch.suite';
import { modelUploadConformance } from './conformance/model-upload.suite';
import { weightCacheConformance } from './conformance/weight-cache.suite';
import { localConfig, uniquePrefix } from './helpers';

async function realStorage(weightCacheDir?: string) {
  const c = root.createChildContainer();
  const config = registerStorage(c, localConfig(weightCacheDir ? { weightCacheDir } : {}), { weightCache: { lockStaleMs: 2_000, lockPollMs: 20 } });
  const storage = c.resolve(ObjectStorage);
  const prefix = uniquePrefix('storage-ports');
  const close = async () => {
    for (const alias of ['models', 'datasets'] as const) await storage.deletePrefix(alias, prefix).catch(() => undefined);
    c.resolve(S3_CLIENT).destroy();
  };
  return { c, config, storage, prefix, close };
}

async function readAll(storage: ObjectStorage, alias: 'models' | 'datasets', key: string): Promise<Buffer | null> {
  if (!(await storage.headObject(alias, key))) return null;
  const r = await storage.getObjectStream(alias, key);
  const chunks: Buffer[] = [];
  for await (const ch of r.body) chunks.push(ch as Buffer);
  return Buffer.concat(chunks);
}

modelUploadConformance('ModelUploader (MinIO)', async () => {
  const r = await realStorage();
  return {
    port: r.c.resolve(MODEL_UPLOAD_PORT),
    read: (alias, key) => readAll(r.storage, alias as 'models', key),
    publicUrl: (alias, key) => r.storage.publicUrl(alias, key),
    prefix: r.prefix,
    close: r.close,
  };
});

datasetFetchConformance('DatasetFetcher (MinIO)', async () => {
  const r = await realStorage();
  return {
    port: r.c.resolve(DATASET_FETCH_PORT),
    seed: async (key, body) => {
      await r.storage.putObject('datasets', key, body);
      return r.storage.publicUrl('datasets', key);
    },
    datasetsBucket: r.config.buckets.datasets.bucket,
    prefix: r.prefix,
    close: r.close,
  };
});

weightCacheConformance('WeightCache (MinIO)', async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'st-real-weights-'));
  const r = await realStorage(dir);
  return {
    port: r.c.resolve(WEIGHT_CACHE_PORT),
    seed: async (key, body) => void (await r.storage.putObject('models', key, body)),
    prefix: r.prefix,
    close: async () => {
      await r.close();
      await fsp.rm(dir, { recursive: true, force: true });
    },
  };
});
