/**
 * The job document is input: jobs inserted the way the platform inserts them,
 * with fields a client chose, end refused before the charge, through a real
 * worker, database and ledger. The rule checked every time: the job ends
 * FAILED with a reason the user can act on, after one attempt, and no point
 * moved for anyone (no ledger movement for the job, balances unchanged).
 */
import { ObjectId } from 'mongodb';
import { createHarness, Harness } from './harness';

jest.setTimeout(600_000);

describe('training worker: hostile job documents are refused before any charge', () => {
  let h: Harness;
  // No image needed: every job here must stop before anything runs.
  beforeAll(async () => {
    h = await createHarness('hostile-input');
  });
  afterAll(() => h?.close());

  async function expectRefused(jobId: string, failureClass: string, reason: RegExp, accounts: Array<{ owner: string; wallet: string; points: number }>) {
    const job = await h.job(jobId);
    expect({ status: job.status, failureClass: job.failureClass }).toEqual({ status: 'FAILED', failureClass });
    expect(job.failureReason).toMatch(reason);
    expect(job.failureReason).not.toMatch(/internal error/);
    expect(job.attempts).toBe(1);
    expect(await h.ledger.history({ jobId })).toEqual([]);
    for (const a of accounts) expect(await h.balance(a.owner, a.wallet)).toBe(a.points);
    expect(await h.containersFor(jobId)).toEqual([]);
  }

  it("attack 1: Alice's userId with Bob's ownerAccountId and wallet on Bob's private dataset", async () => {
    const bob = { ...(await h.seedAccount(1000)), points: 1000 };
    const alice = { ...(await h.seedAccount(0)), points: 0 };
    const bobsDataset = await h.seedDataset(bob.owner);
    const jobId = await h.enqueue({ ownerAccountId: bob.owner, walletAddress: bob.wallet, datasetId: bobsDataset } as never);
    // As a client inserting the document itself would write it (the platform puts one account into both fields).
    await h.db.collection('trainingJobs').updateOne({ _id: new ObjectId(jobId) }, { $set: { userId: alice.owner } });
    await h.runWorker();
    await expectRefused(jobId, 'user-input', /two different accounts.*Nothing was charged/, [bob, alice]);
  });

  it("attack 2: a 0-point account puts the victim's wallet on its own job", async () => {
    const victim = { ...(await h.seedAccount(1000)), points: 1000 };
    const attacker = { ...(await h.seedAccount(0)), points: 0 };
    const own = await h.seedDataset(attacker.owner);
    const jobId = await h.enqueue({ ownerAccountId: attacker.owner, walletAddress: victim.wallet, datasetId: own } as never);
    await h.runWorker();
    await expectRefused(jobId, 'user-input', /wallet .* is not linked to account.*Nothing was charged/, [victim, attacker]);
  });

  it('an account the platform does not know cannot train, even on a public dataset', async () => {
    const someone = { ...(await h.seedAccount(1000)), points: 1000 };
    const open = await h.seedDataset(someone.owner, { visibility: 'public' });
    const ghost = '64b00000000000000000dead';
    const jobId = await h.enqueue({ ownerAccountId: ghost, walletAddress: someone.wallet, datasetId: open } as never);
    await h.runWorker();
    await expectRefused(jobId, 'user-input', /does not exist on the platform/, [someone]);
  });

  it('parameters: "steps=30" is a user error after one attempt, not an internal error after three', async () => {
    const a = { ...(await h.seedAccount(1000)), points: 1000 };
    const datasetId = await h.seedDataset(a.owner);
    const jobId = await h.enqueue({ ownerAccountId: a.owner, walletAddress: a.wallet, datasetId, parameters: 'steps=30' } as never);
    await h.runWorker();
    await expectRefused(jobId, 'user-input', /Invalid training parameters: .*"steps=30"/, [a]);
  });

  it('hostile datasets (metadata IP, loopback ports, file://, gopher://, credentials, key traversal) are refused before the charge', async () => {
    const a = { ...(await h.seedAccount(1000)), points: 1000 };
    const ownBucket = new URL((await h.db.collection('datasets').findOne({ _id: new ObjectId(await h.seedDataset(a.owner)) }))!['images'][0]).origin;
    const hostile: Array<[string, unknown, RegExp]> = [
      ['metadata', 'http://169.254.169.254/latest/meta-data/iam/security-credentials/', /cloud metadata address/],
      ['mongo port', 'http://127.0.0.1:27017/x.png', /loopback address/],
      ['registry port', 'http://localhost:5000/v2/_catalog', /this machine/],
      ['file', 'file:///etc/passwd', /scheme 'file:'/],
      ['gopher', 'gopher://127.0.0.1:6379/_INFO', /scheme 'gopher:'/],
      ['credentials', 'https://admin:hunter2@cdn.example/x.png', /carries credentials/],
      ['key traversal', `${ownBucket}/datasets/..%2Fmodels%2Floras%2Fx.safetensors`, /not allowed|neither one of our buckets/],
    ];
    const jobs: Array<[string, RegExp]> = [];
    for (const [name, url, reason] of hostile) {
      const datasetId = await h.seedDataset(a.owner, { count: 2 });
      await h.db.collection('datasets').updateOne({ _id: new ObjectId(datasetId) }, { $push: { images: url } } as never);
      jobs.push([await h.enqueue({ ownerAccountId: a.owner, walletAddress: a.wallet, datasetId, name } as never), reason]);
    }
    await h.runWorker();
    for (const [jobId, reason] of jobs) {
      await expectRefused(jobId, 'dataset', reason, [a]);
      expect((await h.job(jobId)).failureReason).toMatch(/^The dataset cannot be used: Image 3 .*Nothing was charged\.$/);
      expect((await h.job(jobId)).failureReason).not.toMatch(/hunter2/);
    }
  });
});
