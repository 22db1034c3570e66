/**
 * Cancel at each stage, and graceful shutdown handing a job back.
 */
import { createServer, Server } from 'node:http';
import { AddressInfo } from 'node:net';
import { encodePng } from '../src/cli/demo-images';
import { createHarness, ensureSmokeImage, Harness } from './harness';

jest.setTimeout(600_000);

describe('training worker: cancel and shutdown', () => {
  let h: Harness;
  let slowHost: Server;
  let slowBase: string;
  beforeAll(async () => {
    await ensureSmokeImage();
    // A dataset host on loopback that answers slowly, so a job stays in PROVISIONING (fetching) long enough to cancel.
    const png = encodePng(16, 16, new Uint8Array(16 * 16 * 3).fill(128));
    slowHost = createServer((_req, res) => setTimeout(() => res.writeHead(200, { 'content-type': 'image/png' }).end(png), 8000).unref());
    await new Promise<void>((r) => slowHost.listen(0, '127.0.0.1', r));
    slowBase = `http://127.0.0.1:${(slowHost.address() as AddressInfo).port}`;
    h = await createHarness('cancel', { DATASET_ALLOWED_HOSTS: new URL(slowBase).host });
  });
  afterAll(async () => {
    slowHost?.closeAllConnections();
    slowHost?.close();
    await h?.close();
  });

  it('cancel while QUEUED: CANCELLED at once, nothing charged', async () => {
    const a = await h.seedAccount(5000);
    const datasetId = await h.seedDataset(a.owner);
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId, walletAddress: a.wallet } as never);
    await h.jobs.requestCancel(jobId, 'test');
    await h.runWorker();
    expect((await h.job(jobId)).status).toBe('CANCELLED');
    expect(await h.balance(a.owner, a.wallet)).toBe(5000);
    expect(await h.ledger.history({ jobId })).toEqual([]);
  });

  for (const stage of ['PROVISIONING', 'RUNNING'] as const) {
    it(`cancel while ${stage}: the container stops within seconds and points are settled`, async () => {
      const a = await h.seedAccount(5000);
      const datasetId = stage === 'PROVISIONING'
        ? await h.seedDataset(a.owner, { imageUrls: [1, 2, 3, 4].map((i) => `${slowBase}/img-${i}.png`) })
        : await h.seedDataset(a.owner);
      const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId, walletAddress: a.wallet, parameters: { steps: 2000 } } as never);
      const { done } = h.startWorker({ WORKER_EXIT_WHEN_IDLE: 'true' });
      await h.waitFor(jobId, (j) => j.status === stage && (stage !== 'RUNNING' || (j.currentStep ?? 0) > 0), 120_000);
      // The charge is recorded on the worker's attempt record (trainingJobAttempts), not on the job document.
      while (stage === 'PROVISIONING' && !(await h.db.collection('trainingJobAttempts').findOne({ _id: `${jobId}:0` as never, 'state.charged': true }))) await new Promise((r) => setTimeout(r, 100));
      const asked = Date.now();
      await h.jobs.requestCancel(jobId, 'test');
      const job = await h.waitFor(jobId, (j) => j.status === 'CANCELLED', 60_000);
      const stoppedInMs = Date.now() - asked;
      await done;
      expect(stoppedInMs).toBeLessThan(20_000);
      expect(await h.containersFor(jobId)).toEqual([]);
      const summary = await h.ledger.jobSummary(jobId);
      // Policy: charge the time used, refund the rest.
      expect(summary.charged - summary.refunded).toBe(job.actualCostPoints ?? 0);
      expect(await h.balance(a.owner, a.wallet)).toBe(5000 - (job.actualCostPoints ?? 0));
      expect(job.actualCostPoints ?? 0).toBeLessThanOrEqual(summary.charged);
    });
  }

  it('SIGTERM past the grace period hands the running job back to the queue without using an attempt', async () => {
    const a = await h.seedAccount(5000);
    const datasetId = await h.seedDataset(a.owner);
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId, walletAddress: a.wallet, parameters: { steps: 300 } } as never);
    const { worker, done } = h.startWorker({ WORKER_SHUTDOWN_GRACE_MS: '500' });
    await h.waitFor(jobId, (j) => j.status === 'RUNNING', 120_000);
    await (await worker).stop();
    await done;
    const job = await h.job(jobId);
    expect(job.status).toBe('QUEUED');
    expect(job.attempts ?? 0).toBe(0);
    expect(await h.containersFor(jobId)).toEqual([]);
    // The charge stays with the job; the next attempt does not charge again.
    const summary = await h.ledger.jobSummary(jobId);
    await h.runWorker();
    const finished = await h.job(jobId);
    expect(finished.failureReason).toBeUndefined();
    expect(finished.status).toBe('COMPLETED');
    expect(finished.attempts).toBe(1);
    expect((await h.ledger.jobSummary(jobId)).charged).toBe(summary.charged);
  });
});
