/**
 * End-to-end harness for the worker: a private database and key prefix on the
 * real local services, seeded accounts/datasets/jobs in the platform's shapes,
 * the smoke recipe's real image, and workers run in-process or as child
 * processes (for SIGKILL tests).
 */
import 'reflect-metadata';
import { ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import Docker from 'dockerode';
import { Db, MongoClient, ObjectId } from 'mongodb';
import { DatasetRepository, TrainingJobDoc, TrainingJobRepository } from '@stationthis/db';
import { PointsLedger } from '@stationthis/points';
import { ObjectStorage } from '@stationthis/storage';
import { getRecipe } from '@stationthis/recipes';
import { serviceEnv, uniqueDbName, uniquePrefix } from '../../../tools/testing/support';
import { loadWorkerConfig } from '../src/config/worker-config';
import { compose, Composition, ensureIndexes } from '../src/composition';
import { createLogger } from '../src/observability/logger';
import { encodePng } from '../src/cli/demo-images';
import { TrainingWorker } from '../src/training-worker';

const run = promisify(execFile);
export const REPO_ROOT = resolve(__dirname, '../../..');
export const SHARED_MANIFEST = join(REPO_ROOT, 'apps/recipe-builder/build/image-manifest.json');

let smokeImageReady: Promise<void> | null = null;

/**
 * Builds (once) and pushes the smoke recipe's real image with recipe-builder,
 * on the local base image. Later runs hit the Docker build cache.
 */
export function ensureSmokeImage(): Promise<void> {
  smokeImageReady ??= (async () => {
    const builder = join(REPO_ROOT, 'apps/recipe-builder/dist/main.js');
    if (!existsSync(builder)) throw new Error('apps/recipe-builder is not built: run `npx nx run-many -t build` (tools/test-all.sh does)');
    await run('node', [builder, 'build-images', '--only', 'smoke-cpu', '--base-image', serviceEnv().baseImage, '--push', '--manifest', SHARED_MANIFEST], {
      cwd: REPO_ROOT,
      maxBuffer: 64 * 1024 * 1024,
      timeout: 15 * 60_000,
    });
  })();
  return smokeImageReady;
}

export interface Harness {
  env: NodeJS.ProcessEnv;
  app: Composition;
  db: Db;
  jobs: TrainingJobRepository;
  ledger: PointsLedger;
  stateDir: string;
  prefix: string;
  docker: Docker;
  seedAccount(points: number): Promise<{ owner: string; wallet: string }>;
  seedDataset(owner: string, opts?: { count?: number; visibility?: string; badImage?: boolean; imageUrls?: string[] }): Promise<string>;
  enqueue(fields: Partial<TrainingJobDoc> & { ownerAccountId: string; datasetId: string }): Promise<string>;
  runWorker(overrides?: NodeJS.ProcessEnv, timeoutMs?: number): Promise<TrainingWorker>;
  /** `app` is the worker's own composition (its container's singletons), e.g. to pause it at a chosen write. */
  startWorker(overrides?: NodeJS.ProcessEnv): { worker: Promise<TrainingWorker>; done: Promise<void>; app: Promise<Composition> };
  spawnWorker(overrides?: NodeJS.ProcessEnv): ChildProcess;
  waitFor(jobId: string, pred: (j: TrainingJobDoc) => boolean, timeoutMs?: number): Promise<TrainingJobDoc>;
  job(jobId: string): Promise<TrainingJobDoc>;
  balance(owner: string, wallet?: string): Promise<number>;
  containersFor(jobId: string): Promise<Docker.ContainerInfo[]>;
  close(): Promise<void>;
}

export async function createHarness(suite: string, extraEnv: NodeJS.ProcessEnv = {}): Promise<Harness> {
  const svc = serviceEnv();
  const stateDir = await mkdtemp(join(tmpdir(), `worker-${suite}-`));
  const prefix = uniquePrefix(suite);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    MONGO_URL: svc.mongoUrl,
    MONGO_DB_NAME: uniqueDbName(suite),
    S3_ENDPOINT: svc.s3Endpoint,
    S3_ACCESS_KEY_ID: svc.s3AccessKeyId,
    S3_SECRET_ACCESS_KEY: svc.s3SecretAccessKey,
    S3_FORCE_PATH_STYLE: 'true',
    TRAINING_ENVIRONMENT: 'development',
    WORKER_STATE_DIR: stateDir,
    WORKER_HTTP_PORT: '0',
    WORKER_POLL_MS: '200',
    WORKER_LEASE_MS: '4000',
    WORKER_CANCEL_POLL_MS: '250',
    WORKER_PROGRESS_THROTTLE_MS: '300',
    WORKER_SHUTDOWN_GRACE_MS: '2000',
    IMAGE_MANIFEST_PATH: SHARED_MANIFEST,
    CPU_SLOTS: '1',
    GPU_DEVICES: 'none',
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    ...extraEnv,
  };
  const app = await compose(loadWorkerConfig(env), env, createLogger(env.LOG_LEVEL ?? 'silent'));
  await ensureIndexes(app.container);
  const db = app.mongo.db(env.MONGO_DB_NAME);
  const jobs = app.container.resolve(TrainingJobRepository);
  const ledger = app.container.resolve(PointsLedger);
  const storage = app.container.resolve(ObjectStorage);
  const datasets = app.container.resolve(DatasetRepository);
  const docker = new Docker({ socketPath: svc.dockerSocket });
  // The platform's unique, non-sparse deposit index must coexist with our entries.
  await db.collection('credit_ledger').createIndex({ deposit_tx_hash: 1 }, { unique: true, name: 'deposit_tx_hash_1' });
  const workers: Composition[] = [];
  const jobIds: string[] = [];
  const trackJob = (id: string) => (jobIds.push(id), id);
  const running: TrainingWorker[] = [];

  const h: Harness = {
    env, app, db, jobs, ledger, stateDir, prefix, docker,
    async seedAccount(points) {
      const owner = new ObjectId();
      const wallet = `0x${owner.toHexString().padStart(40, '0')}`;
      await db.collection('userCore').insertOne({ _id: owner, wallets: [{ address: wallet, isPrimary: true }], status: 'active' });
      await db.collection('credit_ledger').insertOne({
        deposit_tx_hash: `0xtest${owner.toHexString()}`, deposit_log_index: 0, master_account_id: owner, depositor_address: wallet,
        status: 'CONFIRMED', funding_rate_applied: 1, points_credited: points, points_remaining: points, createdAt: new Date(), updatedAt: new Date(),
      });
      return { owner: owner.toHexString(), wallet };
    },
    async seedDataset(owner, opts = {}) {
      const count = opts.count ?? 4;
      const urls: string[] = [];
      const captions: string[] = [];
      for (let i = 0; i < count && !opts.imageUrls; i++) {
        const size = 32;
        const rgb = new Uint8Array(size * size * 3).map((_, k) => (k * (i + 3) * 37) % 251);
        const body = opts.badImage && i === 0 ? Buffer.from('this is not an image at all') : encodePng(size, size, rgb);
        const key = `${prefix}datasets/${owner}/img-${i}.png`;
        await storage.putObject('datasets', key, body, { contentType: 'image/png' });
        urls.push(storage.publicUrl('datasets', key));
        captions.push(`pattern number ${i}`);
      }
      if (opts.imageUrls) urls.push(...opts.imageUrls);
      return String(await datasets.create({
        name: 'test dataset', ownerAccountId: new ObjectId(owner), images: urls, visibility: opts.visibility ?? 'private',
        captionSets: [{ _id: new ObjectId(), method: 'manual', captions: urls.map((_, i) => captions[i] ?? `image ${i}`), createdBy: new ObjectId(owner), createdAt: new Date(), status: 'completed', isDefault: true }],
      } as never));
    },
    async enqueue(fields) {
      const { ownerAccountId, datasetId, ...rest } = fields as Record<string, unknown>;
      return trackJob(await jobs.enqueue({
        ownerAccountId: ownerAccountId as string,
        datasetId: datasetId as string,
        name: String(rest.name ?? 'test-lora'),
        baseModel: String(rest.baseModel ?? 'SMOKE'),
        modelType: String(rest.modelType ?? 'SMOKE'),
        walletAddress: rest.walletAddress as string | undefined,
        triggerWord: String(rest.triggerWord ?? 'tst0k'),
        environment: 'development',
        ...(rest.maxAttempts ? { maxAttempts: Number(rest.maxAttempts) } : {}),
        extra: { userId: ownerAccountId, triggerWords: [String(rest.triggerWord ?? 'tst0k')], parameters: { steps: 10 }, ...rest },
      } as never));
    },
    async runWorker(overrides = {}, timeoutMs = 240_000) {
      const { worker, done } = h.startWorker({ WORKER_EXIT_WHEN_IDLE: 'true', ...overrides });
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), timeoutMs)));
      const outcome = await Promise.race([done.then(() => 'done' as const), timedOut]);
      clearTimeout(timer);
      if (outcome === 'timeout') {
        await (await worker).stop();
        await done;
        throw new Error(`the worker did not become idle within ${timeoutMs} ms`);
      }
      return worker;
    },
    startWorker(overrides = {}) {
      const wEnv = { ...env, ...overrides };
      let resolveWorker!: (w: TrainingWorker) => void;
      const worker = new Promise<TrainingWorker>((r) => (resolveWorker = r));
      let resolveApp!: (c: Composition) => void;
      const app = new Promise<Composition>((r) => (resolveApp = r));
      const done = (async () => {
        const wApp = await compose(loadWorkerConfig(wEnv), wEnv, createLogger(wEnv.LOG_LEVEL ?? 'silent'));
        workers.push(wApp);
        resolveApp(wApp);
        const w = wApp.container.resolve(TrainingWorker);
        running.push(w);
        resolveWorker(w);
        await w.run();
      })();
      return { worker, done, app };
    },
    spawnWorker(overrides = {}) {
      const main = join(REPO_ROOT, 'apps/training-worker/dist/main.js');
      if (!existsSync(main)) throw new Error('apps/training-worker is not built: run `npx nx run-many -t build`');
      return spawn('node', [main], { env: { ...env, ...overrides }, stdio: ['ignore', 'ignore', 'pipe'] });
    },
    async waitFor(jobId, pred, timeoutMs = 120_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const j = await h.job(jobId);
        if (pred(j)) return j;
        if (Date.now() > deadline) throw new Error(`timed out waiting for job ${jobId}; last status ${j.status}, reason ${j.failureReason ?? '-'}`);
        await new Promise((r) => setTimeout(r, 150));
      }
    },
    async job(jobId) {
      const j = await jobs.findById(jobId);
      if (!j) throw new Error(`job ${jobId} not found`);
      return j;
    },
    balance(owner, wallet) {
      return ledger.balance({ masterAccountId: owner, walletAddress: wallet });
    },
    async containersFor(jobId) {
      return docker.listContainers({ all: true, filters: { label: [`ai.stationthis.job-id=${jobId}`] } });
    },
    async close() {
      await Promise.all(running.map((w) => w.stop().catch(() => undefined)));
      for (const w of workers) await w.close().catch(() => undefined);
      // Remove what the jobs stored: artifacts under each job's prefix and the registered LoRA files.
      const models = await db.collection('loraModels').find({}, { projection: { slug: 1 } }).toArray().catch(() => []);
      for (const m of models) await storage.deleteObject('models', `loras/${m.slug}.safetensors`).catch(() => undefined);
      for (const id of jobIds) await storage.deletePrefix('models', `training-jobs/${id}/`).catch(() => undefined);
      await db.dropDatabase().catch(() => undefined);
      await storage.deletePrefix('datasets', prefix).catch(() => undefined);
      await app.close();
      await rm(stateDir, { recursive: true, force: true });
    },
  };
  return h;
}

/** Writes a manifest mapping the smoke recipe to another image (failure injection without test hooks in the code). */
export async function manifestWithSmokeImage(dir: string, image: string): Promise<string> {
  const smoke = getRecipe('smoke-cpu');
  const path = join(dir, 'manifest-override.json');
  const base = existsSync(SHARED_MANIFEST) ? JSON.parse(await readFile(SHARED_MANIFEST, 'utf8')) : { images: {} };
  // A valid manifest entry (the worker refuses a malformed manifest), unpushed: the worker runs image:tag.
  const at = image.lastIndexOf(':');
  const [repo, tag] = at > image.lastIndexOf('/') ? [image.slice(0, at), image.slice(at + 1)] : [image, 'latest'];
  const entry = { recipeId: smoke.id, recipeVersion: smoke.version, image: repo, tag, gitTag: 'test', digest: null, repoDigest: null, imageId: 'sha256:test', engineCommit: smoke.engine.commit };
  const images = { ...base.images, [`${smoke.id}@${smoke.version}`]: entry };
  await writeFile(path, JSON.stringify({ schemaVersion: 1, images }, null, 2));
  return path;
}

export { MongoClient };
