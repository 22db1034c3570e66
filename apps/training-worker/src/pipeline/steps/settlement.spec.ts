/**
 * SettleStep against in-memory fakes of its ports (no services): the order of
 * the completion (COMPLETED first, then the decision and its points), the
 * cancel that lands before COMPLETED, the decision in force being followed,
 * and a stale owner moving nothing. The real adapters run in
 * test/platform-writes.e2e.spec.ts.
 */
import { ObjectId } from 'mongodb';
import type { DatasetRepository, Lease, SettleDecision, TrainingAttemptRepository, TrainingJobDoc, TrainingJobRepository, UserCoreReader } from '@stationthis/db';
import type { SettleInput, CreditInput } from '@stationthis/points';
import { InMemoryPointsLedger } from '@stationthis/points/testing';
import { loadStorageConfig } from '@stationthis/storage';
import { InMemoryModelUpload } from '@stationthis/storage/testing';
import { usedPoints } from '@stationthis/recipes';
import { loadWorkerConfig } from '../../config/worker-config';
import { createLogger } from '../../observability/logger';
import { WorkerMetrics } from '../../observability/metrics';
import { AttemptWriter } from '../attempt-writer';
import { LeaseLost } from '../failures';
import { JobContext } from '../job-context';
import { trainingRequestFromJob } from '../training-request';
import type { Attempt } from './attempt';
import { SettleStep } from './settle-step';

const OWNER = '64b000000000000000000001';
const CREATOR = '64b000000000000000000002';
const quote = { points: 500, estimatedSeconds: 600, gpuUsdPerHour: 0.35, platformFee: 0.2 };
const log = createLogger('silent');
const START_BALANCE = 10_000;

class World {
  calls: string[] = [];
  status = 'FINALIZING';
  decision: (SettleDecision & { _id: string }) | null = null;
  owner = 'a1';
  completedWith: Record<string, unknown> | null = null;
  jobs = {
    complete: async (_l: Lease, fields: Record<string, unknown>) => {
      if (this.status !== 'FINALIZING') return false;
      this.completedWith = fields;
      this.calls.push(`job:COMPLETED:${fields['actualCostPoints']}`);
      this.status = 'COMPLETED';
      return true;
    },
    transition: async (_l: Lease, to: string) => {
      if (!['PROVISIONING', 'RUNNING', 'FINALIZING'].includes(this.status)) return false;
      this.calls.push(`job:${to}`);
      this.status = to;
      return true;
    },
    cancelComplete: async (_l: Lease, fields: Record<string, unknown>) => {
      this.calls.push(`job:CANCELLED:${fields['actualCostPoints']}`);
      this.status = 'CANCELLED';
      return true;
    },
    leaseState: async () => (this.status === 'CANCELLED' ? 'cancelled' : 'lost'),
    recordSettled: async () => true,
    findById: async () => ({ status: this.status }),
    restoreCompleted: async () => {
      this.calls.push('job:restore');
      this.status = 'COMPLETED';
      return true;
    },
    updateProgress: async () => true,
  };
  attempts = {
    setState: async (_r: unknown, patch: Record<string, unknown>) => (this.calls.push(`record:${Object.keys(patch).join(',')}`), true),
    decide: async (_j: string, _p: number, d: SettleDecision, by: { owner?: string }) => {
      if (by.owner && by.owner !== this.owner) return null;
      if (this.decision) return { decision: this.decision, ours: false };
      this.decision = { ...d, _id: 'x' };
      this.calls.push(`decide:${d.outcome}:${d.usedPoints}`);
      return { decision: this.decision, ours: true };
    },
    markSettled: async () => void this.calls.push('record:settled'),
    withdrawModel: async () => (this.calls.push('model:withdrawn'), true),
  };
  ledger = new OrderedLedger(this.calls).deposit(OWNER, START_BALANCE);
}

/** The ledger fake, also noting each settle and credit in the world's call order. */
class OrderedLedger extends InMemoryPointsLedger {
  constructor(private readonly order: string[]) {
    super();
  }
  override async settle(i: SettleInput) {
    this.order.push(`ledger:settle:${i.usedPoints}:pa${i.platformAttempt}`);
    return super.settle(i);
  }
  override async credit(i: CreditInput) {
    this.order.push(`ledger:credit:${i.kind}:${i.points}:pa${i.platformAttempt}`);
    return super.credit(i);
  }
}

async function setUp(world: World, platformAttempt = 0): Promise<{ step: SettleStep; a: Attempt; uploader: InMemoryModelUpload }> {
  const config = loadWorkerConfig({ WORKER_STATE_DIR: '/tmp/stationthis-settlement-spec' });
  const users = { findById: async () => null, primaryWallet: () => undefined } as unknown as UserCoreReader;
  const datasets = { findById: async () => null } as unknown as DatasetRepository;
  const uploader = new InMemoryModelUpload(loadStorageConfig({}));
  const step = new SettleStep(config, world.jobs as unknown as TrainingJobRepository, world.attempts as unknown as TrainingAttemptRepository, datasets, users, world.ledger, uploader, new WorkerMetrics());
  const doc = { _id: new ObjectId(), status: world.status, modelType: 'SMOKE', ownerAccountId: OWNER, triggerWord: 'sks', attempts: 1 } as unknown as TrainingJobDoc;
  const ctx = new JobContext(doc, { jobId: String(doc._id), attemptId: 'a1', workerId: 'w1' }, log);
  const ref = { jobId: String(doc._id), platformAttempt, owner: 'a1' };
  const writer = new AttemptWriter(world.jobs as unknown as TrainingJobRepository, world.attempts as unknown as TrainingAttemptRepository, ctx, ref, 1000);
  const state = {
    quote,
    charged: true,
    trainSeconds: 3600,
    accounts: { ownerAccountId: OWNER, walletAddress: '0xowner', datasetCreatorId: CREATOR },
    upload: { loraUrl: 'https://m/x.safetensors', loraKey: 'loras/x.safetensors', sha256: 's', autov2: 'a', bytes: 1, sampleUrls: [] },
    loraModelId: new ObjectId().toHexString(),
  };
  // The attempt's charge, as ChargeStep made it.
  await world.ledger.charge({ jobId: ref.jobId, platformAttempt, masterAccountId: OWNER, points: quote.points, reason: 'quote' });
  return { step, uploader, a: { ctx, ref, writer, request: trainingRequestFromJob(doc), state } };
}

describe('SettleStep', () => {
  const used = usedPoints(quote, 3600);

  it('completion: COMPLETED first, then the decision, the refund and the credits of this platform attempt', async () => {
    const w = new World();
    const { step, a } = await setUp(w, 2);
    await step.complete(a);
    expect(w.calls).toEqual([
      `job:COMPLETED:${used}`,
      'record:completedWrittenAt',
      `decide:completed:${used}`,
      `ledger:settle:${used}:pa2`,
      `ledger:credit:dataset-creator:${Math.floor(used * 0.05)}:pa2`,
      `ledger:credit:trainer:${Math.floor(used * 0.02)}:pa2`,
      'record:settled',
    ]);
    const creator = Math.floor(used * 0.05);
    const trainer = Math.floor(used * 0.02);
    expect(await w.ledger.balance({ masterAccountId: OWNER })).toBe(START_BALANCE - used + trainer);
    expect(await w.ledger.balance({ masterAccountId: CREATOR })).toBe(creator);
    // The sweep settling the same attempt again (its decision in force) moves nothing more.
    if (!w.decision) throw new Error('no decision was recorded');
    await step.settlePoints(a.ref.jobId, 2, a.state, w.decision);
    expect(await w.ledger.balance({ masterAccountId: OWNER })).toBe(START_BALANCE - used + trainer);
    expect(await w.ledger.balance({ masterAccountId: CREATOR })).toBe(creator);
  });

  it("COMPLETED carries prepare's cleaned trigger word as the platform reads it (triggerWord and triggerWords)", async () => {
    const w = new World();
    const { step, a } = await setUp(w);
    await step.complete(a, 'pl4t_v2');
    expect(w.completedWith).toMatchObject({ triggerWord: 'pl4t_v2', triggerWords: ['pl4t_v2'], modelRepoUrl: 'https://m/x.safetensors' });
  });

  it('a cancel that landed before COMPLETED wins: the model is withdrawn, the time trained is paid, nothing is credited', async () => {
    const w = new World();
    w.status = 'CANCELLED'; // the platform's write, our lease still on the job
    const { step, a } = await setUp(w);
    await step.complete(a);
    expect(w.calls).toEqual(['model:withdrawn', 'record:modelWithdrawnAt', `decide:cancelled:${used}`, `ledger:settle:${used}:pa0`, 'record:settled', `job:CANCELLED:${used}`]);
    expect(await w.ledger.balance({ masterAccountId: OWNER })).toBe(START_BALANCE - used);
    expect(await w.ledger.balance({ masterAccountId: CREATOR })).toBe(0);
  });

  it('a decision already in force is followed (the sweep decided first): its points, its status', async () => {
    const w = new World();
    w.decision = { _id: 'x', outcome: 'failed', usedPoints: 0, reason: 'the sweep refunded it', failureClass: 'infrastructure' };
    w.status = 'RUNNING';
    const { step, a } = await setUp(w);
    await step.cancel(a, 'cancelled by user', 120);
    expect(w.calls).toContain('ledger:settle:0:pa0');
    expect(w.calls.some((c) => c.startsWith('decide:'))).toBe(false);
    expect(await w.ledger.balance({ masterAccountId: OWNER })).toBe(START_BALANCE);
  });

  it('a worker that no longer owns the attempt record moves no points and writes nothing', async () => {
    const w = new World();
    w.owner = 'newer-claim';
    const { step, a } = await setUp(w);
    await expect(step.fail(a, 'boom', 'engine')).rejects.toBeInstanceOf(LeaseLost);
    expect(w.calls).toEqual([]);
    expect(a.ctx.stopReason).toBe('lease-lost');
    // The charge stands, for the record's owner to settle.
    expect(await w.ledger.balance({ masterAccountId: OWNER })).toBe(START_BALANCE - quote.points);
  });

  it('attempts used up: the repository wrote FAILED; only the full refund remains', async () => {
    const w = new World();
    w.status = 'FAILED';
    const { step, a } = await setUp(w);
    await step.fail(a, 'host trouble', 'infrastructure', { alreadyEnded: true });
    expect(w.calls).toEqual(['decide:failed:0', 'ledger:settle:0:pa0', 'record:settled']);
    expect(await w.ledger.balance({ masterAccountId: OWNER })).toBe(START_BALANCE);
  });
});
