/**
 * Intermediate saves on the real services: a smoke job that saves every N
 * steps ends with one checkpoint record per planned save, each LoRA and
 * sample really in the models bucket (sha256 as recorded), the job document's
 * summary matching, and the engine state recorded while it trained and
 * removed once the final LoRA was stored.
 */
import { createHash } from 'node:crypto';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { TrainingAttemptRepository, type CheckpointRecord } from '@stationthis/db';
import { parseSafetensorsHeader } from '@stationthis/recipes';
import { ObjectStorage, S3_CLIENT, loadStorageConfig, resumeStatePrefix } from '@stationthis/storage';
import { createHarness, ensureSmokeImage, Harness } from './harness';

jest.setTimeout(300_000);

const STEPS = 40;
const EVERY = 10;

describe('training worker: checkpoints with samples', () => {
  let h: Harness;
  beforeAll(async () => {
    await ensureSmokeImage();
    h = await createHarness('ckpt');
  });
  afterAll(() => h?.close());

  it(`stores and records a checkpoint every ${EVERY} steps with its samples`, async () => {
    const { owner, wallet } = await h.seedAccount(5000);
    const datasetId = await h.seedDataset(owner);
    const jobId = await h.enqueue({ ownerAccountId: owner, datasetId, walletAddress: wallet, name: 'Checkpoint LoRA', triggerWord: 'ckp7', parameters: { steps: STEPS, saveEveryNSteps: EVERY } } as never);

    await h.runWorker();
    const job = await h.job(jobId);
    expect(job.failureReason).toBeUndefined();
    expect(job.status).toBe('COMPLETED');

    const record = (await h.app.container.resolve(TrainingAttemptRepository).find(jobId, 0))!;
    const checkpoints = record.state.checkpoints ?? [];
    const planned = [10, 20, 30];
    expect(checkpoints.map((c) => c.step)).toEqual(planned);

    const config = loadStorageConfig(h.env);
    const s3 = h.app.container.resolve(S3_CLIENT);
    const storage = h.app.container.resolve(ObjectStorage);
    const modelsBase = config.buckets.models.publicBaseUrl.replace(/\/$/, '');
    const read = async (key: string) => Buffer.from(await (await s3.send(new GetObjectCommand({ Bucket: config.buckets.models.bucket, Key: key }))).Body!.transformToByteArray());
    for (const c of checkpoints) {
      expect(c.loraKey).toMatch(new RegExp(`^training-jobs/${jobId}/checkpoints/attempt-0/step-${String(c.step).padStart(8, '0')}-`));
      expect(c.loraUrl).toBe(`${modelsBase}/${c.loraKey}`);
      const body = await read(c.loraKey);
      expect(body.length).toBe(c.bytes);
      expect(createHash('sha256').update(body).digest('hex')).toBe(c.sha256);
      expect(c.autov2).toBe(c.sha256.slice(0, 10));
      const header = parseSafetensorsHeader(body);
      // The engine's step count and our metadata (a promoted checkpoint loads like the final LoRA).
      expect(header.metadata['ss_steps']).toBe(String(c.step));
      expect(Object.values(header.metadata).join(' ')).toContain('ckp7');
      expect(typeof c.loss).toBe('number');
      // One sample per default prompt, each stored under the checkpoint's key.
      expect(c.sampleKeys.length).toBeGreaterThan(0);
      expect(c.sampleUrls).toEqual(c.sampleKeys.map((k) => `${modelsBase}/${k}`));
      for (const k of c.sampleKeys) {
        expect(k).toMatch(new RegExp(`_${String(c.step).padStart(6, '0')}_\\d{2}\\.png$`));
        expect((await storage.headObject('models', k))?.bytes).toBeGreaterThan(50);
      }
    }

    // The platform's summary on the job document, and the log tail.
    const summary = (job as unknown as { checkpoints: unknown }).checkpoints;
    expect(summary).toEqual(checkpoints.map((c: CheckpointRecord) => ({ step: c.step, loss: c.loss, loraUrl: c.loraUrl, sampleUrls: c.sampleUrls })));
    expect(job.logTail?.some((l) => l.includes(`checkpoint 3 of 3 stored (step 30, loss `))).toBe(true);

    // The state of the newest save was recorded (this claim uploaded it) and removed once the final LoRA was stored.
    expect(record.state.resumeState).toMatchObject({ step: 30, uploadedBy: expect.any(String), engine: expect.stringMatching(/^smoke-cpu@/) });
    expect(await storage.listKeys('uploads', resumeStatePrefix(jobId))).toEqual([]);
    // No resume happened: one claim.
    expect(record.state.resumes ?? []).toEqual([]);

    // The model's previews are the final samples, not a checkpoint's.
    const model = await h.db.collection('loraModels').findOne({ _id: job.loraModelId });
    expect((model!.previewImages as string[]).length).toBeGreaterThan(0);
    for (const url of model!.previewImages as string[]) expect(url).toMatch(new RegExp(`_${String(STEPS).padStart(6, '0')}_\\d{2}\\.png$`));

    const lora = checkpoints.map((c) => c.bytes);
    const samples = await Promise.all(checkpoints.flatMap((c) => c.sampleKeys).map(async (k) => (await storage.headObject('models', k))!.bytes));
    // Figures for the report (smoke recipe, defaults: rank 4, fp16).
    console.log(`[figures] checkpoint LoRA bytes: ${lora.join(', ')}; samples per checkpoint: ${checkpoints[0]!.sampleKeys.length}, sample bytes avg ${Math.round(samples.reduce((x, y) => x + y, 0) / samples.length)}; state bytes at step ${record.state.resumeState!.step}: ${record.state.resumeState!.bytes}`);
    expect(await h.containersFor(jobId)).toEqual([]);
  });
});
