/**
 * SIGKILL the worker process at random points in 10 runs. After a restart
 * every job ends terminal, balances are exact and no container is left.
 */
import { createHarness, ensureSmokeImage, Harness } from './harness';

jest.setTimeout(1_200_000);

const RUNS = Number(process.env.CRASH_RUNS ?? 10);

describe('training worker: crash at random points', () => {
  let h: Harness;
  beforeAll(async () => {
    await ensureSmokeImage();
    h = await createHarness('crash', { WORKER_LEASE_MS: '3000', WORKER_MAINTENANCE_MS: '1000' });
  });
  afterAll(() => h?.close());

  it(`survives SIGKILL at random points (${RUNS} runs)`, async () => {
    // A deterministic spread of kill points from just after claim to the end of training.
    const killAfterMs = Array.from({ length: RUNS }, (_, i) => 300 + Math.round((i / Math.max(1, RUNS - 1)) * 9000));
    for (const [run, delay] of killAfterMs.entries()) {
      const a = await h.seedAccount(5000);
      const creator = await h.seedAccount(0);
      const datasetId = await h.seedDataset(creator.owner, { visibility: 'public' });
      const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId, walletAddress: a.wallet, name: `crash-${run}`, parameters: { steps: 20 } } as never);

      const child = h.spawnWorker();
      await new Promise((r) => setTimeout(r, delay));
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));

      // Restart: the new worker recovers orphans and the expired lease, then finishes the job.
      const restarted = h.spawnWorker();
      const job = await h.waitFor(jobId, (j) => ['COMPLETED', 'FAILED', 'CANCELLED'].includes(j.status) && !j.refundDue, 240_000);
      restarted.kill('SIGTERM');
      await new Promise((r) => restarted.once('exit', r));

      const summary = await h.ledger.jobSummary(jobId);
      const used = summary.charged - summary.refunded;
      if (job.status === 'COMPLETED') {
        expect(used).toBe(job.actualCostPoints);
        const trainer = Math.floor(used * 0.02);
        expect(await h.balance(a.owner, a.wallet)).toBe(5000 - used + trainer);
        expect(await h.balance(creator.owner, creator.wallet)).toBe(Math.floor(used * 0.05));
        expect(await h.db.collection('loraModels').countDocuments({ _id: job.loraModelId })).toBe(1);
      } else {
        expect(used).toBe(0);
        expect(await h.balance(a.owner, a.wallet)).toBe(5000);
      }
      expect(await h.containersFor(jobId)).toEqual([]);
    }
  });
});
