/**
 * Each failure class ends with the right status, a plain-words reason and the
 * right points: nothing charged for bad input, a full refund otherwise.
 */
import { createHarness, ensureSmokeImage, Harness, manifestWithSmokeImage } from './harness';
import { ObjectStorage } from '@stationthis/storage';
import { serviceEnv } from '../../../tools/testing/support';

jest.setTimeout(600_000);

describe('training worker: failure classes', () => {
  let h: Harness;
  beforeAll(async () => {
    await ensureSmokeImage();
    h = await createHarness('failures');
  });
  afterAll(() => h?.close());

  async function setup(points = 5000, datasetOpts = {}) {
    const acct = await h.seedAccount(points);
    const datasetId = await h.seedDataset(acct.owner, datasetOpts);
    return { ...acct, datasetId };
  }

  async function expectFailed(jobId: string, failureClass: string, reason: RegExp, owner: string, wallet: string, startBalance: number) {
    const job = await h.job(jobId);
    expect(job.status).toBe('FAILED');
    expect(job.failureClass).toBe(failureClass);
    expect(job.failureReason).toMatch(reason);
    expect(await h.balance(owner, wallet)).toBe(startBalance); // nothing charged, or fully refunded
    expect(await h.containersFor(jobId)).toEqual([]);
    return job;
  }

  it('user input: invalid parameters fail before anything is charged', async () => {
    const a = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet, parameters: { steps: -5, bogus: 1 } } as never);
    await h.runWorker();
    const job = await expectFailed(jobId, 'user-input', /Invalid training parameters: .*steps/, a.owner, a.wallet, 5000);
    expect(await h.ledger.history({ jobId })).toEqual([]);
    expect(job.failureReason).toMatch(/bogus/);
  });

  it('user input: insufficient points fail with a clear reason and leave no trace', async () => {
    const a = await setup(1);
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet } as never);
    await h.runWorker();
    await expectFailed(jobId, 'user-input', /Insufficient points/, a.owner, a.wallet, 1);
    expect(await h.ledger.history({ jobId })).toEqual([]);
  });

  it('dataset: another account\'s private dataset is refused', async () => {
    const a = await setup();
    const other = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: other.datasetId, walletAddress: a.wallet } as never);
    await h.runWorker();
    await expectFailed(jobId, 'dataset', /private to another account/, a.owner, a.wallet, 5000);
  });

  it('dataset: a file that is not an image is refused and refunded', async () => {
    const a = await setup(5000, { badImage: true });
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet } as never);
    await h.runWorker();
    await expectFailed(jobId, 'dataset', /dataset could not be used/i, a.owner, a.wallet, 5000);
  });

  it('engine: a trainer that exits non-zero fails the job with the engine output and a refund', async () => {
    const a = await setup();
    // The bare base image has no python3: the engine step exits 127.
    const manifest = await manifestWithSmokeImage(h.stateDir, serviceEnv().baseImage);
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet } as never);
    await h.runWorker({ IMAGE_MANIFEST_PATH: manifest });
    await expectFailed(jobId, 'engine', /training engine failed/, a.owner, a.wallet, 5000);
    // The failed attempt's log is kept for operators under the job's artifact prefix.
    const logs = await h.app.container.resolve(ObjectStorage).listKeys('models', `training-jobs/${jobId}/logs/`);
    expect(logs.length).toBe(1);
  });

  it('engine: a diverging run (NaN loss) fails with advice to lower the learning rate, and a refund', async () => {
    const a = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet, parameters: { steps: 20, simulateFailure: 'nan-loss' } } as never);
    await h.runWorker();
    await expectFailed(jobId, 'engine', /loss became NaN.*Lower the learning rate/, a.owner, a.wallet, 5000);
  });

  it('oom: a container over its memory limit is reported as out of memory', async () => {
    const a = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet } as never);
    await h.runWorker({ CONTAINER_MEMORY_BYTES: String(48 * 1024 * 1024) });
    await expectFailed(jobId, 'oom', /ran out of memory/, a.owner, a.wallet, 5000);
  });

  it('timeout: a run past its deadline is stopped and refunded', async () => {
    const a = await setup();
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet, parameters: { steps: 400 } } as never);
    await h.runWorker({ WORKER_MAX_JOB_MS: '2500' });
    await expectFailed(jobId, 'timeout', /time limit/, a.owner, a.wallet, 5000);
  });

  it('infrastructure: a missing image is retried up to the attempt limit, then refunded', async () => {
    const a = await setup();
    const manifest = await manifestWithSmokeImage(h.stateDir, '127.0.0.1:5000/stationthis/does-not-exist:0.0.0');
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId: a.datasetId, walletAddress: a.wallet, maxAttempts: 2 } as never);
    await h.runWorker({ IMAGE_MANIFEST_PATH: manifest, WORKER_MAX_ATTEMPTS: '2' });
    const job = await expectFailed(jobId, 'infrastructure', /image .* is not available/, a.owner, a.wallet, 5000);
    expect(job.attempts).toBe(2);
  });
});
