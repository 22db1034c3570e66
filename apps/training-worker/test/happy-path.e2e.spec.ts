/**
 * The product path on real services: a queued smoke job becomes a registered
 * LoRA in the models bucket, with points charged, reconciled and credited.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { GetObjectCommand, HeadObjectCommand } from '@aws-sdk/client-s3';
import { S3_CLIENT, loadStorageConfig } from '@stationthis/storage';
import { parseSafetensorsHeader } from '@stationthis/recipes';
import { TrainingJobRepository, type TrainingJobDoc } from '@stationthis/db';
import { datasetSizeCheck, getRecipe } from '@stationthis/recipes';
import { PrepareStep } from '../src/pipeline/steps/prepare-step';
import { createHarness, ensureSmokeImage, Harness } from './harness';

jest.setTimeout(600_000);

describe('training worker: happy path end to end', () => {
  let h: Harness;
  beforeAll(async () => {
    await ensureSmokeImage();
    h = await createHarness('happy');
  });
  afterAll(() => h?.close());

  it('trains, uploads, registers and settles one job', async () => {
    const { owner, wallet } = await h.seedAccount(5000);
    const creator = await h.seedAccount(0);
    const datasetId = await h.seedDataset(creator.owner, { visibility: 'public' });
    const jobId = await h.enqueue({ ownerAccountId: owner, datasetId, walletAddress: wallet, name: 'Happy Path LoRA', triggerWord: 'h4ppy' } as never);

    await h.runWorker();
    const job = await h.job(jobId);
    expect(job.failureReason).toBeUndefined();
    expect(job.status).toBe('COMPLETED');
    expect(job.progress).toBe(100);
    expect(job.totalSteps).toBeGreaterThan(0);
    expect(job.loraModelId).toBeDefined();

    // The model is registered the way the platform registers trained models.
    const model = await h.db.collection('loraModels').findOne({ _id: job.loraModelId });
    expect(model).toBeTruthy();
    const slug = String(model!.slug);
    expect(slug).toMatch(/^happy-path-lora-[0-9a-f]{6}$/);
    expect(model!.triggerWords).toEqual(['h4ppy']);
    expect(model!.trainedFrom).toMatchObject({ tool: 'stationthis-smoke' });
    expect(String(model!.trainedFrom.trainingId)).toBe(jobId);
    const config = loadStorageConfig(h.env);
    const modelsBase = config.buckets.models.publicBaseUrl.replace(/\/$/, '');
    expect(model!.publishedTo.modelFileUrl).toBe(`${modelsBase}/loras/${slug}.safetensors`);
    expect((model!.previewImages as string[]).length).toBeGreaterThan(0);

    // The LoRA really is in the models bucket, and it is a valid safetensors file.
    const s3 = h.app.container.resolve(S3_CLIENT);
    const bucket = config.buckets.models.bucket;
    const head = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: `loras/${slug}.safetensors` }));
    expect(head.ContentLength).toBeGreaterThan(100);
    const obj = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: `loras/${slug}.safetensors` }));
    const header = parseSafetensorsHeader(await obj.Body!.transformToByteArray());
    expect(Object.keys(header.tensors).some((k) => k.includes('lora_down'))).toBe(true);
    expect(Object.values(header.metadata).join(' ')).toContain('h4ppy');

    // Points: charged the quote, refunded the unused part, credited creator and trainer.
    const summary = await h.ledger.jobSummary(jobId);
    expect(summary.charged).toBe(job.estimatedCostPoints);
    expect(summary.charged - summary.refunded).toBe(job.actualCostPoints);
    const trainerCredit = Math.floor(job.actualCostPoints! * 0.02);
    const creatorCredit = Math.floor(job.actualCostPoints! * 0.05);
    expect(await h.balance(owner, wallet)).toBe(5000 - job.actualCostPoints! + trainerCredit);
    expect(await h.balance(creator.owner, creator.wallet)).toBe(creatorCredit);
    const history = await h.ledger.history({ jobId });
    expect(history.length).toBeGreaterThanOrEqual(2);

    expect(await h.containersFor(jobId)).toEqual([]);
    // The host's job folder is gone once the job is terminal.
    expect(existsSync(join(h.stateDir, 'jobs', jobId))).toBe(false);
  });

  it("writes what the platform reads: the cost row after the charge and at RUNNING, prepare's warnings in the log tail, the cleaned trigger word on COMPLETED", async () => {
    const { owner, wallet } = await h.seedAccount(5000);
    const datasetId = await h.seedDataset(owner);
    // The smoke recipe recommends no dataset size; the warning is the one SDXL's prepare gives for these 4 images.
    const warning = datasetSizeCheck(getRecipe('sdxl-lora'), { imageCount: 4 }).warnings[0];
    expect(warning).toMatch(/about 20/);
    const realPrepare = PrepareStep.prototype.run;
    const prepare = jest.spyOn(PrepareStep.prototype, 'run').mockImplementation(async function (this: PrepareStep, request) {
      const p = await realPrepare.call(this, request);
      return { ...p, warnings: [...p.warnings, warning] };
    });
    try {
      const jobId = await h.enqueue({ ownerAccountId: owner, datasetId, walletAddress: wallet, name: 'Platform Reads', triggerWord: 'pl4t.v2' } as never);
      const { app, done } = h.startWorker({ WORKER_EXIT_WHEN_IDLE: 'true' });
      const jobs = (await app).container.resolve(TrainingJobRepository);
      // The job as the platform reads it after the charge, just before RUNNING, and as RUNNING writes it.
      let charged: TrainingJobDoc | undefined;
      let running: TrainingJobDoc | undefined;
      const transition = jobs.transition.bind(jobs);
      jobs.transition = async (lease, to, fields) => {
        if (to === 'RUNNING' && !charged) charged = await h.job(lease.jobId);
        const ok = await transition(lease, to, fields);
        if (to === 'RUNNING' && !running) running = await h.job(lease.jobId);
        return ok;
      };
      await done;

      const job = await h.job(jobId);
      expect(job.status).toBe('COMPLETED');
      const record = await h.db.collection('trainingJobAttempts').findOne({ _id: `${jobId}:0` as never });
      const quote = record?.state.quote as { points: number; gpuUsdPerHour: number; platformFee: number };
      const costRow = { estimatedCostPoints: quote.points, gpuType: 'CPU', gpuHourlyRate: Math.round(quote.gpuUsdPerHour * (1 + quote.platformFee) * 10_000) / 10_000 };
      expect(quote.points).toBeGreaterThan(0);
      expect(costRow.gpuHourlyRate).toBeGreaterThan(quote.gpuUsdPerHour);
      // Right after the charge, still PROVISIONING: what was taken up front and the cost row.
      expect(charged).toMatchObject({ status: 'PROVISIONING', ...costRow });
      expect(running).toMatchObject({ status: 'RUNNING', ...costRow });
      expect(job).toMatchObject(costRow);
      expect((await h.ledger.jobSummary(jobId)).charged).toBe(job.estimatedCostPoints);
      // Prepare's warning is in the log tail the user reads (before the engine's lines push it out).
      expect(charged?.logTail).toContain(`[worker] warning: ${warning}`);
      // The word the LoRA answers to, cleaned for the platform's tokenizer, on the job and the model.
      expect(job.triggerWord).toBe('pl4t_v2');
      expect(job.triggerWords).toEqual(['pl4t_v2']);
      const model = await h.db.collection('loraModels').findOne({ _id: job.loraModelId });
      expect(model?.triggerWords).toEqual(['pl4t_v2']);
    } finally {
      prepare.mockRestore();
    }
  });

  it('runs two jobs at once on two slots', async () => {
    const { owner, wallet } = await h.seedAccount(5000);
    const datasetId = await h.seedDataset(owner);
    const a = await h.enqueue({ ownerAccountId: owner, datasetId, walletAddress: wallet, name: 'slot-a', parameters: { steps: 30 } } as never);
    const b = await h.enqueue({ ownerAccountId: owner, datasetId, walletAddress: wallet, name: 'slot-b', parameters: { steps: 30 } } as never);
    const { done } = h.startWorker({ CPU_SLOTS: '2', WORKER_EXIT_WHEN_IDLE: 'true' });
    // Both are RUNNING at the same moment.
    let overlapped = false;
    const watch = (async () => {
      while (!overlapped) {
        const [ja, jb] = await Promise.all([h.job(a), h.job(b)]);
        if (ja.status === 'RUNNING' && jb.status === 'RUNNING') overlapped = true;
        if (['COMPLETED', 'FAILED'].includes(ja.status) && ['COMPLETED', 'FAILED'].includes(jb.status)) break;
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    await done;
    await watch;
    expect(overlapped).toBe(true);
    expect((await h.job(a)).status).toBe('COMPLETED');
    expect((await h.job(b)).status).toBe('COMPLETED');
  });

  it('shares one queue between two workers: every job runs exactly once', async () => {
    const { owner, wallet } = await h.seedAccount(10_000);
    const datasetId = await h.seedDataset(owner);
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push(await h.enqueue({ ownerAccountId: owner, datasetId, walletAddress: wallet, name: `shared-${i}` } as never));
    const w1 = h.startWorker({ WORKER_ID: 'worker-one', WORKER_EXIT_WHEN_IDLE: 'true' });
    const w2 = h.startWorker({ WORKER_ID: 'worker-two', WORKER_EXIT_WHEN_IDLE: 'true' });
    await Promise.all([w1.done, w2.done]);
    const jobs = await Promise.all(ids.map((id) => h.job(id)));
    for (const j of jobs) {
      expect(j.status).toBe('COMPLETED');
      expect(j.attempts).toBe(1);
    }
    // One model per job, no duplicates from racing workers.
    expect(new Set(jobs.map((j) => String(j.loraModelId))).size).toBe(3);
    for (const j of jobs) expect(await h.db.collection('loraModels').countDocuments({ _id: j.loraModelId })).toBe(1);
  });
});

describe('training worker: prefetch', () => {
  let h: Harness;
  beforeAll(async () => {
    await ensureSmokeImage();
    h = await createHarness('prefetch');
  });
  afterAll(() => h?.close());

  it('fetches the next queued job\'s dataset while the only slot is busy', async () => {
    const { owner, wallet } = await h.seedAccount(5000);
    const datasetId = await h.seedDataset(owner);
    const first = await h.enqueue({ ownerAccountId: owner, datasetId, walletAddress: wallet, name: 'first', parameters: { steps: 300 } } as never);
    const second = await h.enqueue({ ownerAccountId: owner, datasetId, walletAddress: wallet, name: 'second' } as never);
    const { done } = h.startWorker({ WORKER_EXIT_WHEN_IDLE: 'true', CPU_SLOTS: '1' });
    await h.waitFor(first, (j) => j.status === 'RUNNING');
    // While the first job trains, the second is still QUEUED but its dataset is already on the host.
    const marker = join(h.stateDir, 'jobs', second, 'dataset.json');
    const deadline = Date.now() + 60_000;
    while (!existsSync(marker) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(existsSync(marker)).toBe(true);
    expect((await h.job(second)).status).toBe('QUEUED');
    await done;
    expect((await h.job(first)).status).toBe('COMPLETED');
    expect((await h.job(second)).status).toBe('COMPLETED');
  });
});
