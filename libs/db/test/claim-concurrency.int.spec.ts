import { MongoClient, ObjectId } from 'mongodb';
// Shared test support sits outside every Nx project (the preamble says: import it by relative path).
// eslint-disable-next-line @nx/enforce-module-boundaries
import { serviceEnv } from '../../../tools/testing/support';
import { TrainingJobRepository } from '../src';
import { openTestDb, type TestDb } from './helpers';

const JOBS = Number(process.env.CLAIM_TEST_JOBS ?? 2000);
const CLAIMERS = 8;

describe('claimNext under concurrency (real server)', () => {
  let t: TestDb;
  let repo: TrainingJobRepository;

  beforeAll(async () => {
    t = await openTestDb('db_claim');
    repo = new TrainingJobRepository(t.db);
    await repo.ensureIndexes();
    const now = Date.now();
    const docs = Array.from({ length: JOBS }, (_, i) => ({
      userId: 'u',
      ownerAccountId: 'u',
      name: `job-${i}`,
      datasetId: new ObjectId().toHexString(),
      environment: 'production',
      status: 'QUEUED',
      priority: 0,
      attempts: 0,
      maxAttempts: 3,
      createdAt: new Date(now + i),
      updatedAt: new Date(now + i),
    }));
    for (let i = 0; i < docs.length; i += 500) await t.db.collection('trainingJobs').insertMany(docs.slice(i, i + 500));
  }, 120_000);

  afterAll(() => t.drop());

  it(`${CLAIMERS} claimers over ${JOBS} jobs: each job claimed exactly once, none lost`, async () => {
    const claimedBy = new Map<string, string[]>();
    const attemptIds = new Set<string>();
    // one repository (and connection pool) per claimer, as separate worker processes would have
    const clients = await Promise.all(Array.from({ length: CLAIMERS }, () => MongoClient.connect(serviceEnv().mongoUrl)));
    const claimer = async (w: number) => {
      const workerId = `w${w}`;
      const repo = new TrainingJobRepository(clients[w].db(t.db.databaseName));
      for (;;) {
        const got = await repo.claimNext({ workerId, environment: 'production', leaseMs: 600_000 });
        if (!got) return;
        const list = claimedBy.get(got.lease.jobId) ?? [];
        list.push(workerId);
        claimedBy.set(got.lease.jobId, list);
        attemptIds.add(got.lease.attemptId);
        expect(got.job.status).toBe('PROVISIONING');
        expect(got.job.lease?.attemptId).toBe(got.lease.attemptId);
      }
    };
    try {
      await Promise.all(Array.from({ length: CLAIMERS }, (_, w) => claimer(w)));
    } finally {
      await Promise.all(clients.map((c) => c.close()));
    }

    expect(claimedBy.size).toBe(JOBS);
    expect([...claimedBy.values()].every((l) => l.length === 1)).toBe(true);
    expect(attemptIds.size).toBe(JOBS);
    const jobs = t.db.collection('trainingJobs');
    expect(await jobs.countDocuments({ status: 'QUEUED' })).toBe(0);
    expect(await jobs.countDocuments({ status: 'PROVISIONING', attempts: 1 })).toBe(JOBS);
    // every claimer got work (the claim is not serialised onto one worker)
    const perWorker = new Map<string, number>();
    for (const [w] of claimedBy.values()) perWorker.set(w, (perWorker.get(w) ?? 0) + 1);
    expect(perWorker.size).toBe(CLAIMERS);
  }, 1_200_000);
});
