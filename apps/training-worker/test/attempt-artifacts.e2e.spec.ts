/**
 * Final samples, the engine log and the job spec are stored per platform
 * attempt and claim: after the platform's Retry the second attempt's outputs
 * land beside the first's, never over them. Attempt 0 stores its outputs and
 * then fails (its model registration is made to fail, an `engine` failure:
 * no worker retry), the platform retries, attempt 1 completes. Every object
 * attempt 0 recorded is then still there, byte for byte; the job's fields
 * point at attempt 1's; the dashboard's stored log is attempt 1's; the model
 * file keeps its `loras/<slug>.safetensors` key.
 */
import { createHash } from 'node:crypto';
import { ObjectId } from 'mongodb';
import { LoraModelRepository, TrainingAttemptRepository, type UploadState } from '@stationthis/db';
import { ObjectStorage } from '@stationthis/storage';
import { readResult } from '../src/cli/job-result';
import { DashboardData } from '../src/dashboard/dashboard-data';
import { JobFailure } from '../src/pipeline/failures';
import { PublishStep } from '../src/pipeline/steps/publish-step';
import { createHarness, ensureSmokeImage, Harness } from './harness';

jest.setTimeout(600_000);

describe('training worker: per-attempt keys for samples, logs and the job spec', () => {
  let h: Harness;
  beforeAll(async () => {
    await ensureSmokeImage();
    h = await createHarness('attkeys');
  });
  afterAll(() => h?.close());

  /** The platform's Retry, as it writes it (only FAILED; retryCount + 1). */
  async function platformRetry(id: string): Promise<void> {
    const job = await h.job(id);
    const r = await h.db.collection('trainingJobs').updateOne(
      { _id: new ObjectId(id), status: 'FAILED' },
      { $set: { status: 'QUEUED', error: null, errorMessage: null, retryCount: ((job.retryCount as number | undefined) ?? 0) + 1, progress: 0, currentStep: 0, startedAt: null, completedAt: null, environment: 'development' } },
    );
    expect(r.matchedCount).toBe(1);
  }

  it("keeps attempt 0's samples, log and spec unchanged after the Retry's attempt 1 completes; the job points at attempt 1's", async () => {
    const storage = h.app.container.resolve(ObjectStorage);
    const attempts = h.app.container.resolve(TrainingAttemptRepository);
    const keyOf = (url: string): string => {
      const m = storage.matchOwnUrl(url);
      expect(m?.bucketAlias).toBe('models');
      return m!.key!;
    };
    const read = async (key: string): Promise<Buffer> => {
      const o = await storage.getObjectStream('models', key);
      const chunks: Buffer[] = [];
      for await (const c of o.body) chunks.push(Buffer.from(c as Buffer));
      return Buffer.concat(chunks);
    };
    const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
    const outputsOf = (u: UploadState) => [...u.sampleUrls, u.logUrl!, u.configUrl!].map(keyOf);

    // One dashboard throughout: it caches a finished attempt's stored log, which must not outlive the Retry.
    const dashboard = new DashboardData({
      db: h.db,
      jobs: h.jobs,
      attempts,
      ledger: h.ledger,
      storage,
      inventory: { gpus: [], source: 'none' } as never,
      // No live lines in this process: the stored log is what it shows.
      activity: { tail: () => null } as never,
      config: { workerId: 'attkeys-dashboard', environment: 'development', maxAttempts: 3 },
    });
    const lines = async (key: string) => (await read(key)).toString('utf8').split(/\r?\n/).filter((l) => l.length > 0);
    const shownLog = async () => {
      const detail = await dashboard.job(jobId);
      expect(detail!.log.source).toBe('stored');
      return detail!.log.lines.filter((l) => l.length > 0);
    };

    const { owner, wallet } = await h.seedAccount(5000);
    const datasetId = await h.seedDataset(owner);
    const jobId = await h.enqueue({ ownerAccountId: owner, datasetId, walletAddress: wallet, name: 'Attempt Keys', triggerWord: 'atk3y', parameters: { steps: 10, sampleCount: 2 } } as never);

    // Attempt 0: outputs stored, then the registration fails (not retried by the worker): FAILED, refunded.
    const register = PublishStep.prototype.register;
    PublishStep.prototype.register = async () => {
      throw new JobFailure('engine', 'Registration refused by the test after the outputs were stored.');
    };
    try {
      await h.runWorker();
    } finally {
      PublishStep.prototype.register = register;
    }
    expect(await h.job(jobId)).toMatchObject({ status: 'FAILED', failureClass: 'engine' });
    const up0 = (await attempts.find(jobId, 0))!.state.upload!;
    expect(up0.sampleUrls.length).toBe(2);
    expect(up0.logUrl).toBeTruthy();
    expect(up0.configUrl).toBeTruthy();
    const keys0 = outputsOf(up0);
    for (const k of keys0) expect(k).toMatch(new RegExp(`^training-jobs/${jobId}/(samples|logs|config)/attempt-0/`));
    // Read after attempt 0 ended (its failed-attempt log upload included): these bytes must survive attempt 1.
    const before = new Map(await Promise.all(keys0.map(async (k) => [k, sha(await read(k))] as const)));
    expect(JSON.parse((await read(keyOf(up0.configUrl!))).toString('utf8'))).toMatchObject({ jobId, platformAttempt: 0 });
    const log0 = await lines(keyOf(up0.logUrl!));
    const shown0 = await shownLog();
    expect(shown0.length).toBeGreaterThan(0);
    expect(shown0).toEqual(log0.slice(-shown0.length));

    // Attempt 1: the platform's Retry, trained to COMPLETED.
    await platformRetry(jobId);
    await h.runWorker();
    const job = await h.job(jobId);
    expect(job.failureReason).toBeUndefined();
    expect(job.status).toBe('COMPLETED');
    const up1 = (await attempts.find(jobId, 1))!.state.upload!;
    const keys1 = outputsOf(up1);
    for (const k of keys1) expect(k).toMatch(new RegExp(`^training-jobs/${jobId}/(samples|logs|config)/attempt-1/`));
    expect(keys1.filter((k) => keys0.includes(k))).toEqual([]);
    expect(JSON.parse((await read(keyOf(up1.configUrl!))).toString('utf8'))).toMatchObject({ jobId, platformAttempt: 1 });

    // Attempt 0's objects: all still there, unchanged.
    for (const k of keys0) expect({ key: k, sha256: sha(await read(k)) }).toEqual({ key: k, sha256: before.get(k) });

    // The job's platform-read fields are attempt 1's; the model file keeps its loras/ key.
    expect(job.previewImages).toEqual(up1.sampleUrls);
    expect(job.modelRepoUrl).toBe(up1.loraUrl);
    expect(up1.loraKey).toMatch(/^loras\/[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors$/);
    expect(keyOf(up1.loraUrl)).toBe(up1.loraKey);

    // The dashboard now shows attempt 1's log, not attempt 0's it had read (the two differ: timings at least).
    const log1 = await lines(keyOf(up1.logUrl!));
    expect(log1).not.toEqual(log0);
    const shown1 = await shownLog();
    expect(shown1.length).toBeGreaterThan(0);
    expect(shown1).toEqual(log1.slice(-shown1.length));

    // `cli result` shows attempt 1's samples.
    expect((await readResult({ jobs: h.jobs, attempts, models: h.app.container.resolve(LoraModelRepository), ledger: h.ledger }, jobId))!.sampleUrls).toEqual(up1.sampleUrls);
  });
});
