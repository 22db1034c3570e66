import { ObjectId } from 'mongodb';
import { TrainingJobRepository, type Lease } from '../src';
import { KeyedWriteSerializer } from '../src/job-write-serializer';
import { openTestDb, type TestDb } from './helpers';

/**
 * The worker's own writes to one job never overwrite each other, on FerretDB
 * too (which applies an update as read-then-write and, without the serializer,
 * lost the COMPLETED write to a concurrent heartbeat in 83 of 200 tries here).
 */
describe('one write at a time per job (real server)', () => {
  let t: TestDb;
  let repo: TrainingJobRepository;
  const jobs = () => t.db.collection('trainingJobs');

  beforeAll(async () => {
    t = await openTestDb('db_job_writes');
    repo = new TrainingJobRepository(t.db, { candidateTtlMs: 0 });
    await repo.ensureIndexes();
  });
  afterAll(() => t.drop());

  async function finalizingJob(): Promise<Lease> {
    await repo.enqueue({ ownerAccountId: new ObjectId(), datasetId: new ObjectId(), name: 'race', baseModel: 'SDXL' });
    const claimed = await repo.claimNext({ workerId: 'w', environment: 'production', leaseMs: 60_000 });
    if (!claimed) throw new Error('no job claimed');
    for (const to of ['RUNNING', 'FINALIZING'] as const) expect(await repo.transition(claimed.lease, to)).toBe(true);
    return claimed.lease;
  }

  it('a heartbeat, a progress write and the COMPLETED write at the same moment: all three land, 60 times out of 60', async () => {
    const lost: string[] = [];
    for (let i = 0; i < 60; i++) {
      const lease = await finalizingJob();
      const [beat, progress, completed] = await Promise.all([
        repo.heartbeat(lease, 120_000),
        repo.updateProgress(lease, { progress: 99, logLines: [`line ${i}`] }),
        repo.complete(lease, { triggerWord: 'pl4t_v2', triggerWords: ['pl4t_v2'] }),
      ]);
      const doc = await jobs().findOne({ _id: new ObjectId(lease.jobId) });
      // Queued in call order: the heartbeat and the progress write land on FINALIZING, then COMPLETED.
      expect([beat, progress, completed]).toEqual([true, true, true]);
      if (doc?.['status'] !== 'COMPLETED' || doc['triggerWord'] !== 'pl4t_v2' || !(doc['logTail'] as string[]).includes(`line ${i}`)) lost.push(lease.jobId);
    }
    expect(lost).toEqual([]);
  });

  it('runs writes under one key in call order, keeps going after a failed one, and forgets idle keys', async () => {
    const serializer = new KeyedWriteSerializer();
    const order: string[] = [];
    const slow = (name: string, ms: number, fail = false) => () =>
      new Promise<string>((resolve, reject) =>
        setTimeout(() => {
          order.push(name);
          if (fail) reject(new Error(name));
          else resolve(name);
        }, ms),
      );
    const a = serializer.run('job-1', slow('a', 30));
    const b = serializer.run('job-1', slow('b', 1, true));
    const c = serializer.run('job-1', slow('c', 1));
    const other = serializer.run('job-2', slow('other', 1));
    expect(serializer.pendingKeys).toBe(2);
    await expect(a).resolves.toBe('a');
    await expect(b).rejects.toThrow('b');
    await expect(c).resolves.toBe('c');
    await other;
    // job-2 did not wait for job-1; job-1's writes ran one after another in call order.
    expect(order).toEqual(['other', 'a', 'b', 'c']);
    await new Promise((r) => setImmediate(r));
    expect(serializer.pendingKeys).toBe(0);
  });
});
