/** The in-memory fakes of '@stationthis/storage/testing' against the port conformance suites (no services). */
import * as os from 'node:os';
import * as path from 'node:path';
import { promises as fsp } from 'node:fs';
import { loadStorageConfig, publicUrlOf } from '../src';
import { InMemoryDatasetFetch, InMemoryModelUpload, InMemoryObjects, InMemoryWeightCache } from '../src/testing';
import { datasetFetchConformance } from './conformance/dataset-fetch.suite';
import { modelUploadConformance } from './conformance/model-upload.suite';
import { weightCacheConformance } from './conformance/weight-cache.suite';

const config = loadStorageConfig({ S3_ENDPOINT: 'http://127.0.0.1:9000' });

modelUploadConformance('InMemoryModelUpload', async () => {
  const objects = new InMemoryObjects();
  return {
    port: new InMemoryModelUpload(config, objects),
    read: async (alias, key) => objects.get(alias, key),
    publicUrl: (alias, key) => publicUrlOf(config, alias, key),
    prefix: 'fake/',
    close: async () => undefined,
  };
});

datasetFetchConformance('InMemoryDatasetFetch', async () => {
  const fake = new InMemoryDatasetFetch(config);
  return {
    port: fake,
    seed: async (key, body) => {
      fake.objects.put('datasets', key, body);
      return publicUrlOf(config, 'datasets', key);
    },
    datasetsBucket: config.buckets.datasets.bucket,
    prefix: 'fake/',
    close: async () => undefined,
  };
});

weightCacheConformance('InMemoryWeightCache', async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'st-fake-weights-'));
  const fake = new InMemoryWeightCache(dir);
  return {
    port: fake,
    seed: async (key, body) => fake.objects.put('models', key, body),
    prefix: 'fake/',
    close: () => fsp.rm(dir, { recursive: true, force: true }),
  };
});
