/**
 * The job event outbox on the real server (ADR 0010): dense positions and no
 * missed event with many concurrent writers on separate connections while a
 * reader follows; each event id stored once; the write observer's events for
 * every status our writes pass through; the reconciler recovering an event
 * lost to a kill and writing the event of a platform-written CANCELLED;
 * filtered reads (type, job, environment); the reconciler's bounds (paging by
 * (updatedAt, _id), watching only leased jobs, rotating a capped watch set,
 * not deriving unchanged jobs again); stall detection armed from step 1.
 */
import { MongoClient, ObjectId, type Db } from 'mongodb';
import {
  JobEventRecorder,
  JobEventStore,
  TrainingJobRepository,
  type JobEvent,
  type JobEventDraft,
} from '../src';
import { openTestDb, type TestDb } from './helpers';
import { serviceEnv } from '../../../tools/testing/support';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function draft(id: string, jobId = 'job-x', type: JobEventDraft['type'] = 'job.status', environment: JobEventDraft['environment'] = 'production'): JobEventDraft {
  return { id, type, jobId, environment, attempt: 0, at: new Date(), payload: { n: id } };
}

describe('job event outbox (real server)', () => {
  let t: TestDb;
  const clients: MongoClient[] = [];

  beforeAll(async () => {
    t = await openTestDb('db_events');
    await new JobEventStore(t.db).ensureIndexes();
  });
  afterAll(async () => {
    for (const c of clients) await c.close().catch(() => undefined);
    await t.drop();
  });

  /** A store on its own connection: a separate writer, as another process would be. */
  async function separateStore(): Promise<JobEventStore> {
    const c = await MongoClient.connect(serviceEnv().mongoUrl);
    clients.push(c);
    return new JobEventStore(c.db(t.db.databaseName) as Db);
  }

  it('gives dense, unique positions to concurrent writers, and a follower misses none', async () => {
    const WRITERS = 6;
    const PER_WRITER = 30;
    const stores = await Promise.all(Array.from({ length: WRITERS }, () => separateStore()));
    const reader = new JobEventStore(t.db);
    const seen: JobEvent[] = [];
    let done = false;
    // The follower reads while the writers write, from its last position, as a consumer would.
    const following = (async () => {
      let after = 0;
      for (;;) {
        // Only a read that began after every write finished may end the follow.
        const writersFinished = done;
        const { events, position } = await reader.readEvents({ after, limit: 40 });
        seen.push(...events);
        after = position;
        if (writersFinished && events.length === 0) break;
        if (events.length === 0) await sleep(5);
      }
    })();
    const started = Date.now();
    await Promise.all(
      stores.map(async (store, w) => {
        for (let i = 0; i < PER_WRITER; i++) {
          // Every writer also re-emits one shared event: it must be stored once.
          await store.append([draft(`w${w}:e${i}`), ...(i === 7 ? [draft('shared:event')] : [])], `writer-${w}`);
        }
      }),
    );
    const elapsed = Date.now() - started;
    done = true;
    await following;

    const all = (await reader.readEvents({ after: 0, limit: 10_000 })).events;
    const total = WRITERS * PER_WRITER + 1;
    expect(all.map((e) => e.seq)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    expect(new Set(all.map((e) => e.id)).size).toBe(total);
    expect(all.filter((e) => e.id === 'shared:event')).toHaveLength(1);
    // The follower saw exactly the stored stream, in order, without a gap.
    expect(seen.map((e) => e.seq)).toEqual(all.map((e) => e.seq));
    expect(seen.map((e) => e.id)).toEqual(all.map((e) => e.id));
    // Each writer's own events keep its order.
    for (let w = 0; w < WRITERS; w++) {
      const mine = all.filter((e) => e.id.startsWith(`w${w}:`)).map((e) => Number(e.id.split(':e')[1]));
      expect(mine).toEqual([...mine].sort((a, b) => a - b));
    }
    expect(await reader.head()).toBe(total);
    // For the report: appends per second with this many writers on this server.
    console.log(`outbox: ${total} events from ${WRITERS} concurrent writers in ${elapsed} ms (${Math.round((total / elapsed) * 1000)}/s)`);
  }, 120_000);

  it('filters by type and job, moving the position past what it skips', async () => {
    const store = new JobEventStore(t.db);
    const head = await store.head();
    await store.append([draft('f:1', 'job-a'), draft('f:2', 'job-b', 'checkpoint.stored'), draft('f:3', 'job-a', 'checkpoint.stored'), draft('f:4', 'job-b')], 'test');
    const byType = await store.readEvents({ after: head, types: ['checkpoint.stored'] });
    expect(byType.events.map((e) => e.id)).toEqual(['f:2', 'f:3']);
    expect(byType.position).toBe(head + 4);
    const byJob = await store.readEvents({ after: head, jobId: 'job-b' });
    expect(byJob.events.map((e) => e.id)).toEqual(['f:2', 'f:4']);
    const limited = await store.readEvents({ after: head, limit: 1, jobId: 'job-b' });
    expect(limited.events.map((e) => e.id)).toEqual(['f:2']);
    expect(limited.position).toBe(head + 2);
    // A follower that stored position head+4 reads nothing more.
    expect((await store.readEvents({ after: head + 4 })).events).toEqual([]);
  });

  it('filters by environment (an event stored without one reads as production)', async () => {
    const store = new JobEventStore(t.db);
    const head = await store.head();
    await store.append([draft('env:1', 'job-p'), draft('env:2', 'job-d', 'job.status', 'development'), draft('env:3', 'job-p2')], 'test');
    // An event from before environments were recorded: no field at all.
    await t.db.collection('trainingJobEvents').insertOne({ _id: head + 4, eventId: 'env:legacy', type: 'job.status', jobId: 'job-old', attempt: 0, at: new Date(), payload: {}, recordedAt: new Date(), source: 'test' } as never);
    const dev = await store.readEvents({ after: head, environments: ['development'] });
    expect(dev.events.map((e) => [e.id, e.environment])).toEqual([['env:2', 'development']]);
    expect(dev.position).toBe(head + 4);
    const prod = await store.readEvents({ after: head, environments: ['production'] });
    expect(prod.events.map((e) => [e.id, e.environment])).toEqual([
      ['env:1', 'production'],
      ['env:3', 'production'],
      ['env:legacy', 'production'],
    ]);
    expect((await store.readEvents({ after: head })).events).toHaveLength(4);
  });

  describe('recording', () => {
    let db: Db;
    let repo: TrainingJobRepository;
    let store: JobEventStore;
    let recorder: JobEventRecorder;
    const jobs = () => db.collection('trainingJobs');
    const statusEvents = async (jobId: string) =>
      (await store.readEvents({ after: 0, limit: 10_000, jobId })).events.filter((e) => e.type === 'job.status').map((e) => e.payload['status']);

    beforeEach(async () => {
      db = t.client.db(`${t.db.databaseName}_rec_${Math.random().toString(36).slice(2, 8)}`);
      repo = new TrainingJobRepository(db);
      store = new JobEventStore(db);
      recorder = new JobEventRecorder(db, store);
      await recorder.ensureIndexes();
    });
    afterEach(() => db.dropDatabase().catch(() => undefined));

    const enqueue = () => repo.enqueue({ ownerAccountId: new ObjectId(), datasetId: new ObjectId(), name: 'lora', baseModel: 'SMOKE', modelType: 'SMOKE' });

    it('stores every status our writes pass through, in order, however fast they follow each other', async () => {
      repo.observeWrites((job, kind) => recorder.onJobWritten(job, kind), JobEventRecorder.observedFields);
      const id = await enqueue();
      const claimed = (await repo.claimNext({ workerId: 'w1', environment: 'production', leaseMs: 60_000 }))!;
      // No awaits in between that would let a reader catch up: the observer reads in the write's own slot.
      const writes = [repo.transition(claimed.lease, 'RUNNING'), repo.transition(claimed.lease, 'FINALIZING'), repo.complete(claimed.lease, { modelRepoUrl: 'http://m/x' })];
      expect(await Promise.all(writes)).toEqual([true, true, true]);
      await recorder.flush();
      expect(await statusEvents(id)).toEqual(['QUEUED', 'PROVISIONING', 'RUNNING', 'FINALIZING', 'COMPLETED']);
      const completed = (await store.readEvents({ after: 0, jobId: id })).events.at(-1)!;
      expect(completed.id).toBe(`${id}:0:job.status:COMPLETED:1`);
      expect(completed.payload['modelUrl']).toBe('http://m/x');
      expect(completed.environment).toBe('production');
      // The reconciler derives the same ids: nothing new.
      expect((await recorder.reconcile()).stored).toEqual([]);
    });

    it('stores job.failed with the failure class and reason', async () => {
      repo.observeWrites((job, kind) => recorder.onJobWritten(job, kind), JobEventRecorder.observedFields);
      const id = await enqueue();
      const claimed = (await repo.claimNext({ workerId: 'w1', environment: 'production', leaseMs: 60_000 }))!;
      await repo.fail(claimed.lease, { failureClass: 'dataset', failureReason: 'The dataset has no images.' });
      await recorder.flush();
      const failed = (await store.readEvents({ after: 0, jobId: id, types: ['job.failed'] })).events;
      expect(failed).toHaveLength(1);
      expect(failed[0]!.payload).toMatchObject({ failureClass: 'dataset', reason: 'The dataset has no images.' });
    });

    it('reconciles an event lost to a kill, and a CANCELLED written by the platform', async () => {
      // No observer: a worker killed right after its write never stored the event.
      const id = await enqueue();
      expect((await recorder.reconcile()).stored.map((e) => e.payload['status'])).toEqual(['QUEUED']);
      const claimed = (await repo.claimNext({ workerId: 'w1', environment: 'production', leaseMs: 60_000 }))!;
      await repo.transition(claimed.lease, 'RUNNING');
      expect((await recorder.reconcile()).stored.map((e) => e.id)).toEqual([`${id}:0:job.status:RUNNING:1`]);
      // The platform's Cancel: `$set status` only, without touching updatedAt (the watched set still sees it).
      await jobs().updateOne({ _id: new ObjectId(id) }, { $set: { status: 'CANCELLED' } });
      const r = await recorder.reconcile();
      expect(r.stored.map((e) => [e.id, e.payload['status']])).toEqual([[`${id}:0:job.status:CANCELLED:1`, 'CANCELLED']]);
      // Our own later CANCELLED write of the same claim is the same event.
      repo.observeWrites((job, kind) => recorder.onJobWritten(job, kind), JobEventRecorder.observedFields);
      expect(await repo.cancelComplete(claimed.lease, { failureReason: 'Cancelled by the user.' })).toBe(true);
      await recorder.flush();
      expect(await statusEvents(id)).toEqual(['QUEUED', 'RUNNING', 'CANCELLED']);
    });

    it('puts the job\'s environment on every event it implies', async () => {
      repo.observeWrites((job, kind) => recorder.onJobWritten(job, kind), JobEventRecorder.observedFields);
      const dev = await repo.enqueue({ ownerAccountId: new ObjectId(), datasetId: new ObjectId(), name: 'lora', baseModel: 'SMOKE', modelType: 'SMOKE', environment: 'development' });
      const claimed = (await repo.claimNext({ workerId: 'w1', environment: 'development', leaseMs: 60_000 }))!;
      await repo.fail(claimed.lease, { failureClass: 'dataset', failureReason: 'No images.' });
      await recorder.flush();
      const mine = (await store.readEvents({ after: 0, limit: 100, jobId: dev })).events;
      expect(mine.map((e) => e.type)).toEqual(['job.status', 'job.status', 'job.status', 'job.failed']);
      expect(new Set(mine.map((e) => e.environment))).toEqual(new Set(['development']));
      expect((await store.readEvents({ after: 0, limit: 100, jobId: dev, environments: ['production'] })).events).toEqual([]);
    });

    it('pages by (updatedAt, _id): a full batch of jobs sharing one updatedAt skips none', async () => {
      const ids: string[] = [];
      for (let i = 0; i < 7; i++) ids.push(await enqueue());
      const same = new Date(Date.now() - 5 * 60_000);
      await jobs().updateMany({}, { $set: { updatedAt: same } });
      const checked: number[] = [];
      for (let pass = 0; pass < 4; pass++) checked.push((await recorder.reconcile({ batch: 3 })).jobsChecked);
      const queued = (await store.readEvents({ after: 0, limit: 100 })).events.filter((e) => e.payload['status'] === 'QUEUED').map((e) => e.jobId);
      expect(new Set(queued)).toEqual(new Set(ids));
      expect(checked.slice(0, 3)).toEqual([3, 3, 1]);
    });

    it('watches only leased jobs, at most maxWatched a pass in turn, and derives only jobs that changed', async () => {
      const leased: string[] = [];
      for (let i = 0; i < 3; i++) {
        await enqueue();
        const c = (await repo.claimNext({ workerId: 'w1', environment: 'production', leaseMs: 60_000 }))!;
        await repo.transition(c.lease, 'RUNNING');
        leased.push(c.lease.jobId);
      }
      const queuedOnly = await enqueue();
      const derive = jest.spyOn(recorder as unknown as { implied: (...a: unknown[]) => Promise<unknown> }, 'implied');
      const t0 = Date.now();
      expect((await recorder.reconcile({ now: new Date(t0) })).jobsChecked).toBe(4);
      expect(derive).toHaveBeenCalledTimes(4);
      derive.mockClear();
      const later = (k: number) => new Date(t0 + 10 * 60_000 + k * 1000);
      // The same jobs again (still inside the overlap), unchanged: nothing derived again.
      expect((await recorder.reconcile({ now: later(0) })).jobsChecked).toBe(4);
      // No recent change now: only watched (leased) jobs are re-read by _id, 2 a pass.
      for (let k = 1; k <= 3; k++) {
        const r = await recorder.reconcile({ now: later(k), maxWatched: 2 });
        expect(r.jobsChecked).toBe(2);
        expect(r.stored).toEqual([]);
      }
      expect(derive).not.toHaveBeenCalled();
      // The platform's bare `$set status` (updatedAt untouched) on a watched job is still seen and derived.
      await jobs().updateOne({ _id: new ObjectId(leased[2]) }, { $set: { status: 'CANCELLED' } });
      // Within two passes of 2, whatever the rotation's turn (without rotation the third job is never re-read).
      const cancelled: string[] = [];
      for (let k = 4; k < 6; k++) cancelled.push(...(await recorder.reconcile({ now: later(k), maxWatched: 2 })).stored.map((e) => e.id));
      expect(cancelled).toEqual([`${leased[2]}:0:job.status:CANCELLED:${(await jobs().findOne({ _id: new ObjectId(leased[2]) }))!['claimSeq']}`]);
      expect((recorder as unknown as { watched: Set<string> }).watched.has(leased[2]!)).toBe(false);
      expect((recorder as unknown as { watched: Set<string> }).watched.has(queuedOnly)).toBe(false);
    });

    it('pages through more changed jobs than one pass takes, each pass bounded', async () => {
      const ids: string[] = [];
      for (let i = 0; i < 7; i++) ids.push(await enqueue());
      const checked: number[] = [];
      for (let pass = 0; pass < 6; pass++) checked.push((await recorder.reconcile({ batch: 3 })).jobsChecked);
      expect(Math.max(...checked)).toBeLessThanOrEqual(3 + 7); // the batch, plus jobs watched since an earlier pass
      expect(checked[0]).toBe(3);
      const queued = (await store.readEvents({ after: 0, limit: 100 })).events.filter((e) => e.payload['status'] === 'QUEUED').map((e) => e.jobId);
      expect(new Set(queued)).toEqual(new Set(ids));
      expect(queued).toHaveLength(7);
    });

    it('emits job.stalled once per claim and step when RUNNING stops moving', async () => {
      const id = await enqueue();
      const claimed = (await repo.claimNext({ workerId: 'w1', environment: 'production', leaseMs: 60_000 }))!;
      await repo.transition(claimed.lease, 'RUNNING');
      await repo.updateProgress(claimed.lease, { currentStep: 5, totalSteps: 10 });
      const t0 = new Date();
      await recorder.reconcile({ stallMs: 60_000, now: t0 });
      expect((await recorder.reconcile({ stallMs: 60_000, now: new Date(t0.getTime() + 30_000) })).stored).toEqual([]);
      const stalled = (await recorder.reconcile({ stallMs: 60_000, now: new Date(t0.getTime() + 61_000) })).stored;
      expect(stalled.map((e) => e.id)).toEqual([`${id}:0:job.stalled:1:5`]);
      expect(stalled[0]!.payload).toMatchObject({ step: 5, totalSteps: 10 });
      expect((await recorder.reconcile({ stallMs: 60_000, now: new Date(t0.getTime() + 120_000) })).stored).toEqual([]);
    });

    it('does not call a job stalled before its first step (latent and text encoder caching)', async () => {
      await enqueue();
      const claimed = (await repo.claimNext({ workerId: 'w1', environment: 'production', leaseMs: 60_000 }))!;
      await repo.transition(claimed.lease, 'RUNNING');
      await repo.updateProgress(claimed.lease, { currentStep: 0, totalSteps: 10 });
      const t0 = new Date();
      for (const minutes of [0, 2, 10, 60]) {
        expect((await recorder.reconcile({ stallMs: 60_000, now: new Date(t0.getTime() + minutes * 60_000) })).stored.filter((e) => e.type === 'job.stalled')).toEqual([]);
      }
      // From step 1 on the window counts.
      await repo.updateProgress(claimed.lease, { currentStep: 1, totalSteps: 10 });
      const t1 = new Date(t0.getTime() + 61 * 60_000);
      await recorder.reconcile({ stallMs: 60_000, now: t1 });
      const stalled = (await recorder.reconcile({ stallMs: 60_000, now: new Date(t1.getTime() + 61_000) })).stored.filter((e) => e.type === 'job.stalled');
      expect(stalled.map((e) => e.payload['step'])).toEqual([1]);
    });
  });
});
