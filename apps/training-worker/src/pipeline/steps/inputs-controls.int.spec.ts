/**
 * Kontext control images through the real InputsStep, DatasetFetcher and
 * MinIO: concept pairs land in control/ beside the dataset under their
 * target's stem (what musubi pairs by), style/subject gets the blank control,
 * a pair of different shapes fails as a dataset error naming both sizes, and
 * the container spec mounts the folder read-only only for such recipes.
 */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ObjectId } from 'mongodb';
import { BLANK_CONTROL_PNG_BASE64, CONTAINER_PATHS, getRecipe, resolveControlPairs } from '@stationthis/recipes';
import { createS3Client, DatasetFetcher, loadStorageConfig, ObjectStorage, type WeightCachePort } from '@stationthis/storage';
import { pngOf } from '@stationthis/storage/testing';
import { serviceEnv, uniquePrefix } from '../../../../../tools/testing/support';
import type { WorkerConfig } from '../../config/worker-config';
import { createLogger } from '../../observability/logger';
import { WorkerMetrics } from '../../observability/metrics';
import { JobFailure } from '../failures';
import { JobContext } from '../job-context';
import { stepContainerSpec } from '../step-container';
import type { Prepared } from './attempt';
import { controlDirBeside } from './files';
import { InputsStep } from './inputs-step';

const s = serviceEnv();
const config = loadStorageConfig({ S3_ENDPOINT: s.s3Endpoint, S3_ACCESS_KEY_ID: s.s3AccessKeyId, S3_SECRET_ACCESS_KEY: s.s3SecretAccessKey });
const storage = new ObjectStorage(config, createS3Client(config));
const prefix = uniquePrefix('kontext-controls');
const noWeights = {} as WeightCachePort;
let jobsDir: string;
let inputs: InputsStep;

async function upload(name: string, body: Buffer): Promise<string> {
  const key = `${prefix}${name}`;
  await storage.putObject('datasets', key, body, { contentType: 'image/png' });
  return storage.publicUrl('datasets', key);
}

function prepared(parameters: Record<string, unknown>, dataset: Record<string, unknown>, controlSetId?: string): Prepared {
  const recipe = getRecipe('kontext-lora');
  const v = recipe.validate(parameters);
  if (!v.ok) throw new Error(JSON.stringify(v.issues));
  const need = recipe.controlImagesFor!(v.value)!;
  const paired = need.source === 'paired' ? resolveControlPairs(dataset, controlSetId) : undefined;
  if (paired && !paired.ok) throw new Error(JSON.stringify(paired.problems));
  return {
    recipe,
    parameters: v.value as Record<string, unknown>,
    triggerWord: 'sks',
    outputName: 'out',
    dataset: dataset as never,
    quote: {} as never,
    payer: { masterAccountId: 'x', walletAddress: null },
    warnings: [],
    controls: { need, ...(paired?.ok ? { pairing: paired.pairing } : {}) },
  };
}

function ctx(): JobContext {
  const id = new ObjectId();
  return new JobContext({ _id: id } as never, { jobId: String(id), attemptId: 'a1', workerId: 'w1' }, createLogger('silent'));
}

beforeAll(async () => {
  jobsDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'st-kontext-controls-'));
  inputs = new InputsStep({ jobsDir } as WorkerConfig, new DatasetFetcher(storage), noWeights, new WorkerMetrics());
});

afterAll(async () => {
  await fsp.rm(jobsDir, { recursive: true, force: true });
});

describe('Kontext control images in the inputs step', () => {
  it('concept: fetches each control under its target stem, with the set prompt in every caption', async () => {
    const images = [await upload('t1.png', pngOf(64, 48)), await upload('t2.png', pngOf(32, 32))];
    const controls = [await upload('c1.png', pngOf(128, 96)), await upload('c2.png', pngOf(32, 32))];
    const dataset = { images, embellishments: [{ _id: 'c', type: 'control', status: 'completed', config: { prompt: 'make it winter' }, results: controls.map((value) => ({ value })) }] };
    const c = ctx();
    const fetched = await inputs.fetchDataset(c, prepared({ trainingMode: 'concept' }, dataset), undefined);
    expect(fetched.images.map((i) => i.fileName)).toEqual(['img_0001.png', 'img_0002.png']);
    expect(fetched.controlImages).toEqual(['img_0001.png', 'img_0002.png']);
    const controlDir = controlDirBeside(inputs.datasetDir(c.jobId));
    expect((await fsp.readdir(controlDir)).sort()).toEqual(['img_0001.png', 'img_0002.png']);
    // The bytes are the control's, not the target's: the 128×96 header.
    expect((await fsp.readFile(path.join(controlDir, 'img_0001.png'))).readUInt32BE(16)).toBe(128);
    expect(await fsp.readFile(path.join(inputs.datasetDir(c.jobId), 'img_0002.txt'), 'utf8')).toBe('sks, make it winter');
    expect((await fsp.stat(controlDir)).mode & 0o777).toBe(0o755);
  });

  it('concept: a control of another shape fails as a dataset error naming both sizes', async () => {
    const images = [await upload('s1.png', pngOf(64, 32)), await upload('s2.png', pngOf(32, 32))];
    const controls = [await upload('sc1.png', pngOf(32, 64)), await upload('sc2.png', pngOf(48, 48))];
    const dataset = { images, embellishments: [{ _id: 'c', type: 'control', status: 'completed', results: controls.map((value) => ({ value })) }] };
    const err = await inputs.fetchDataset(ctx(), prepared({ trainingMode: 'concept' }, dataset), undefined).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(JobFailure);
    expect((err as JobFailure).failureClass).toBe('dataset');
    expect((err as JobFailure).userMessage).toBe(
      'Each control image must have the same shape as its image (the trainer resizes the control to the image, which would distort it): image 1 is 64×32 but its control is 32×64. Replace those control images and submit again.',
    );
  });

  it('concept: a control that is not an image fails as a dataset error naming the control', async () => {
    const images = [await upload('h1.png', pngOf(32, 32))];
    const controls = [await upload('hc1.png', Buffer.from('<html>not an image</html>'))];
    const dataset = { images, embellishments: [{ _id: 'c', type: 'control', status: 'completed', results: controls.map((value) => ({ value })) }] };
    const err = await inputs.fetchDataset(ctx(), prepared({ trainingMode: 'concept' }, dataset), undefined).catch((e: unknown) => e);
    expect((err as JobFailure).failureClass).toBe('dataset');
    expect((err as JobFailure).userMessage).toMatch(/^The dataset could not be used: Control image 1 .* Fix or remove that control image and retry\.$/);
  });

  it('style_subject: the blank control for every target', async () => {
    const images = [await upload('b1.png', pngOf(40, 40)), await upload('b2.png', pngOf(40, 40))];
    const c = ctx();
    const fetched = await inputs.fetchDataset(c, prepared({}, { images }), undefined);
    expect(fetched.controlImages).toEqual(['img_0001.png', 'img_0002.png']);
    const blank = await fsp.readFile(path.join(controlDirBeside(inputs.datasetDir(c.jobId)), 'img_0002.png'));
    expect(blank.equals(Buffer.from(BLANK_CONTROL_PNG_BASE64, 'base64'))).toBe(true);
  });

  it('the container sees the control folder read-only at its fixed path, and no such mount without one', () => {
    const base = { image: 'x', recipe: getRecipe('kontext-lora'), step: { argv: ['python'], name: 'train' }, jobId: 'j', gpuDeviceIds: [], memoryBytes: 1, pidsLimit: 16, labels: {}, deadlineMs: 1, stallTimeoutMs: 1 };
    const folders = { datasetDir: '/w/dataset', jobDir: '/w/a/job', outputDir: '/w/a/output', logFile: '/w/a/log', weights: [] };
    const withControl = stepContainerSpec({ ...base, folders: { ...folders, controlDir: controlDirBeside(folders.datasetDir) } } as never);
    expect(withControl.mounts).toContainEqual({ hostPath: '/w/control', containerPath: CONTAINER_PATHS.control, readOnly: true });
    const without = stepContainerSpec({ ...base, folders } as never);
    expect(without.mounts.map((m) => m.containerPath)).not.toContain(CONTAINER_PATHS.control);
  });
});
