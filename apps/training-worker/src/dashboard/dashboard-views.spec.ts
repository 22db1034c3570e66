/**
 * The dashboard API's shaping (pure), its access rule, its token check, the
 * live log buffer and the bounded loss series.
 */
import { ObjectId } from 'mongodb';
import { appendLossPoints, type TrainingAttemptDoc, type TrainingJobDoc } from '@stationthis/db';
import { ConfigError, dashboardAccess, isLoopbackHost, loadWorkerConfig } from '../config/worker-config';
import { parseFreeVram } from './dashboard-data';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { bearerMatches, createDashboardRoutes, isLoopbackHostHeader } from './dashboard-routes';
import { eta, isServableImageKey, jobDetail, plainReason, queueView, slotsView, timeline } from './dashboard-views';
import { JobActivity } from './job-activity';
import { createLogger } from '../observability/logger';

const T0 = new Date('2026-12-07T10:00:00.000Z');
const at = (s: number) => new Date(T0.getTime() + s * 1000);

function job(fields: Partial<TrainingJobDoc> = {}): TrainingJobDoc {
  return { _id: new ObjectId('656f00000000000000000001'), userId: 'u', ownerAccountId: 'u', name: 'My LoRA', datasetId: 'd', status: 'QUEUED', createdAt: T0, updatedAt: T0, ...fields } as TrainingJobDoc;
}

function record(fields: Partial<TrainingAttemptDoc['state']> = {}, extra: Partial<TrainingAttemptDoc> = {}): TrainingAttemptDoc {
  return { _id: '656f00000000000000000001:0', jobId: '656f00000000000000000001', platformAttempt: 0, owner: 'lease-1', ownerClaimSeq: 1, baseAttempts: 0, open: false, state: fields, createdAt: T0, updatedAt: T0, ...extra };
}

describe('dashboard: plain-words reasons', () => {
  it('shows the reason the worker wrote for a failed job', () => {
    expect(plainReason(job({ status: 'FAILED', failureReason: 'Training ran out of memory.' }))).toBe('Training ran out of memory.');
  });

  it('falls back to the recorded settle decision', () => {
    expect(plainReason(job({ status: 'CANCELLED', startedAt: at(5) }), { reason: 'Cancelled by the user after 12 s.' })).toBe('Cancelled by the user after 12 s.');
  });

  it('says a job cancelled while queued ran nothing and was charged nothing', () => {
    const r = plainReason(job({ status: 'CANCELLED', cancelRequestedAt: at(30), cancelRequestedBy: 'cli' }));
    expect(r).toBe(`Cancelled by cli at ${at(30).toISOString()} while it was queued: nothing ran and nothing was charged.`);
  });

  it('has no reason for jobs that did not fail', () => {
    expect(plainReason(job({ status: 'COMPLETED', failureReason: 'left over from an earlier attempt' }))).toBeNull();
  });
});

describe('dashboard: queue and slots', () => {
  it('numbers queued jobs in the order given (claim order) and counts their wait', () => {
    const q = queueView([job({ _id: new ObjectId(), name: 'a', priority: 5 }), job({ _id: new ObjectId(), name: 'b' })], 7, at(90));
    expect(q.total).toBe(7);
    expect(q.jobs.map((j) => [j.position, j.name, j.priority, j.waitingSeconds])).toEqual([
      [1, 'a', 5, 90],
      [2, 'b', 0, 90],
    ]);
  });

  it('puts each held job on the slot its RUNNING write named, and the others under preparing', () => {
    const inventory = { gpus: [{ index: 0, deviceId: '0', name: 'NVIDIA H100', vramGb: 80 }, { index: 1, deviceId: '1', name: 'NVIDIA H100', vramGb: 80 }], cpuSlots: 1, source: 'config' as const };
    const lease = (claimed: number) => ({ workerId: 'w', attemptId: `a${claimed}`, claimedAt: at(claimed), expiresAt: at(claimed + 60) });
    const onGpu = job({ _id: new ObjectId(), name: 'gpu job', status: 'RUNNING', gpuType: 'NVIDIA H100', lease: lease(0), currentStep: 10, totalSteps: 100 });
    const onCpu = job({ _id: new ObjectId(), name: 'cpu job', status: 'RUNNING', gpuType: 'CPU', lease: lease(10) });
    const early = job({ _id: new ObjectId(), name: 'preparing job', status: 'PROVISIONING', lease: lease(20) });
    const { slots, preparing } = slotsView(inventory, [early, onCpu, onGpu], null, at(100));
    expect(slots.map((s) => [s.id, s.job?.name ?? null, s.vramFreeGb])).toEqual([
      ['gpu0', 'gpu job', null],
      ['gpu1', null, null],
      ['cpu0', 'cpu job', null],
    ]);
    expect(slots[0].vramNote).toMatch(/^n\/a: nvidia-smi is not available/);
    expect(slots[0].job).toMatchObject({ leaseAgeSeconds: 100, leaseExpiresInSeconds: -40, step: 10, totalSteps: 100, percent: 10 });
    expect(preparing.map((j) => j!.name)).toEqual(['preparing job']);
  });

  it('shows free VRAM where nvidia-smi answered, and a multi-GPU job on as many cards', () => {
    const inventory = { gpus: [0, 1, 2].map((i) => ({ index: i, deviceId: String(i), name: 'RTX 4090', vramGb: 24 })), cpuSlots: 0, source: 'nvidia-smi' as const };
    const big = job({ _id: new ObjectId(), status: 'RUNNING', gpuType: '2x RTX 4090', lease: { workerId: 'w', attemptId: 'x', claimedAt: at(0), expiresAt: at(60) } });
    const { slots } = slotsView(inventory, [big], parseFreeVram('0, 1024\n1, 2048\n2, 20480\n'), at(1));
    expect(slots.map((s) => [s.id, Boolean(s.job), s.vramFreeGb, s.vramNote])).toEqual([
      ['gpu0', true, 1, null],
      ['gpu1', true, 2, null],
      ['gpu2', false, 20, null],
    ]);
  });
});

describe('dashboard: phase timeline and ETA', () => {
  it('carries the claim time, and RUNNING/FINALIZING times recorded by this claim', () => {
    const j = job({ status: 'FINALIZING', lease: { workerId: 'w', attemptId: 'lease-1', claimedAt: at(10), expiresAt: at(70) } });
    const t = timeline(j, record({ phaseTimes: { claim: 'lease-1', RUNNING: at(20), FINALIZING: at(80) } }));
    expect(t.map((e) => [e.phase, e.state, e.at])).toEqual([
      ['QUEUED', 'done', T0.toISOString()],
      ['PROVISIONING', 'done', at(10).toISOString()],
      ['RUNNING', 'done', at(20).toISOString()],
      ['FINALIZING', 'current', at(80).toISOString()],
      ['COMPLETED', 'pending', null],
    ]);
  });

  it("ignores an earlier claim's phase times", () => {
    const j = job({ status: 'PROVISIONING', lease: { workerId: 'w', attemptId: 'lease-2', claimedAt: at(200), expiresAt: at(260) } });
    const t = timeline(j, record({ phaseTimes: { claim: 'lease-1', RUNNING: at(20), FINALIZING: at(80) } }));
    expect(t.find((e) => e.phase === 'RUNNING')).toEqual({ phase: 'RUNNING', state: 'pending', at: null });
  });

  it('ends with the terminal status and marks phases a job never reached as skipped', () => {
    const t = timeline(job({ status: 'CANCELLED', cancelRequestedAt: at(5), finishedAt: at(5) }), null);
    expect(t.map((e) => [e.phase, e.state])).toEqual([
      ['QUEUED', 'done'],
      ['PROVISIONING', 'skipped'],
      ['RUNNING', 'skipped'],
      ['FINALIZING', 'skipped'],
      ['CANCELLED', 'done'],
    ]);
    expect(t[4].at).toBe(at(5).toISOString());
  });

  it("counts the engine's ETA down from the write that carried it, else uses the pace since RUNNING", () => {
    expect(eta(job({ status: 'RUNNING', etaSeconds: 100, updatedAt: at(0) }), null, at(30)).etaSeconds).toBe(70);
    expect(eta(job({ status: 'RUNNING', currentStep: 10, totalSteps: 40 }), at(0).toISOString(), at(20)).etaSeconds).toBe(60);
    expect(eta(job({ status: 'COMPLETED', etaSeconds: 100 }), null, at(1))).toEqual({ etaSeconds: null, etaAt: null });
  });
});

describe('dashboard: job detail', () => {
  const id = '656f00000000000000000001';
  const ck = (step: number, deleted = false) => ({
    step, loss: 0.5, loraKey: `training-jobs/${id}/checkpoints/attempt-0/step-${step}.safetensors`, loraUrl: 'u', sha256: 's', autov2: 'a', bytes: 2048,
    sampleKeys: [`training-jobs/${id}/checkpoints/attempt-0/step-${step}/s_${step}_00.png`], sampleUrls: [], storedAt: at(step), ...(deleted ? { deletedAt: at(999) } : {}),
  });
  const rec = record({
    checkpoints: [ck(10), ck(20, true)],
    upload: { loraUrl: 'u', loraKey: 'k', sha256: 's', autov2: 'a', bytes: 1, sampleUrls: [`http://127.0.0.1:9000/models/training-jobs/${id}/samples/final_00.png`] },
    lossSeries: { stride: 1, points: [{ step: 1, loss: 0.9 }, { step: 2, loss: 0.7 }] },
  }, { baseAttempts: 1 });

  it('serves only images recorded for the job, never other keys of the bucket', () => {
    expect(isServableImageKey(id, `training-jobs/${id}/checkpoints/attempt-0/step-10/s_10_00.png`, [rec])).toBe(true);
    expect(isServableImageKey(id, `training-jobs/${id}/samples/final_00.png`, [rec])).toBe(true);
    // A deleted checkpoint's samples are gone; a LoRA is not an image; another job's key is not this job's.
    expect(isServableImageKey(id, `training-jobs/${id}/checkpoints/attempt-0/step-20/s_20_00.png`, [rec])).toBe(false);
    expect(isServableImageKey(id, `training-jobs/${id}/checkpoints/attempt-0/step-10.safetensors`, [rec])).toBe(false);
    expect(isServableImageKey('656f00000000000000000002', `training-jobs/${id}/samples/final_00.png`, [rec])).toBe(false);
  });

  it('shapes a failed job with its class, loss series, checkpoints, points and log', () => {
    const j = job({ status: 'FAILED', failureReason: 'Training diverged (loss became NaN).', failureClass: 'engine', attempts: 2, currentStep: 2, totalSteps: 10, progress: 20 });
    const d = jobDetail({
      job: j, records: [rec], decision: null,
      summary: { jobId: id, charged: 100, refunded: 100, credited: { 'dataset-creator': 0, trainer: 0 }, totalCredited: 0 },
      movements: [{ key: 'k', jobId: id, platformAttempt: 0, kind: 'charge', accountId: 'u', points: 100, reason: 'quote', state: 'applied', createdAt: at(1), appliedAt: at(2) }],
      log: { source: 'stored', seq: null, lines: ['step 1', 'step 2'] }, workerId: 'w', maxAttempts: 3, now: at(50),
    });
    expect(d.outcome).toEqual({ status: 'FAILED', reason: 'Training diverged (loss became NaN).', failureClass: 'engine', failureClassMeaning: expect.stringContaining('NaN'), decidedBy: null });
    expect(d.lossSeries).toEqual({ stride: 1, steps: [1, 2], losses: [0.9, 0.7] });
    expect(d.checkpoints.map((c) => [c.step, c.deleted, c.samples.length])).toEqual([[10, false, 1], [20, true, 0]]);
    expect(d.checkpoints[0].samples[0].url).toBe(`/api/jobs/${id}/object?key=${encodeURIComponent(`training-jobs/${id}/checkpoints/attempt-0/step-10/s_10_00.png`)}`);
    expect(d.finalSamples.map((s) => s.key)).toEqual([`training-jobs/${id}/samples/final_00.png`]);
    expect(d.attempts).toEqual({ platformAttempt: 0, workerAttemptsUsed: 1, workerAttemptsMax: 3 });
    expect(d.points.movements).toEqual([{ at: at(2).toISOString(), kind: 'charge', creditKind: null, points: 100, platformAttempt: 0, state: 'applied', reason: 'quote' }]);
    expect(d.progress).toMatchObject({ step: 2, totalSteps: 10, percent: 20, etaSeconds: null });
    expect(d.lease).toBeNull();
  });
});

describe('dashboard: bounded loss series (libs/db appendLossPoints)', () => {
  it('keeps every point while there is room, skipping non-finite losses', () => {
    const s = appendLossPoints(undefined, [{ step: 1, loss: 1 }, { step: 2, loss: Number.NaN }, { step: 3, loss: 0.5 }]);
    expect(s).toEqual({ stride: 1, points: [{ step: 1, loss: 1 }, { step: 3, loss: 0.5 }] });
  });

  it('halves the resolution when full: never more than the limit, the whole run still covered', () => {
    let s = appendLossPoints(undefined, []);
    for (let step = 1; step <= 5000; step++) s = appendLossPoints(s, [{ step, loss: 1 / step }], 500);
    expect(s.points.length).toBeLessThanOrEqual(500);
    expect(s.points.length).toBeGreaterThan(250);
    expect(s.points[0].step).toBe(1);
    expect(s.points[s.points.length - 1].step).toBeGreaterThan(5000 - s.stride);
    const gaps = s.points.slice(1).map((p, i) => p.step - s.points[i].step);
    expect(Math.max(...gaps)).toBe(s.stride);
  });

  it("replaces the steps a resumed claim trains again with the new claim's values", () => {
    const before = appendLossPoints(undefined, [1, 2, 3, 4, 5].map((step) => ({ step, loss: 1 })));
    const after = appendLossPoints(before, [{ step: 3, loss: 0.2 }, { step: 4, loss: 0.1 }]);
    expect(after.points).toEqual([{ step: 1, loss: 1 }, { step: 2, loss: 1 }, { step: 3, loss: 0.2 }, { step: 4, loss: 0.1 }]);
  });
});

describe('dashboard: access and token', () => {
  it('is served on a loopback host without a token, elsewhere only with one', () => {
    expect(dashboardAccess('auto', '127.0.0.1', undefined)).toEqual({ enabled: true, token: null, disabledBecause: null });
    expect(dashboardAccess('auto', '0.0.0.0', 'a'.repeat(20))).toEqual({ enabled: true, token: 'a'.repeat(20), disabledBecause: null });
    const off = dashboardAccess('auto', '0.0.0.0', undefined);
    expect(off.enabled).toBe(false);
    expect(off.disabledBecause).toMatch(/WORKER_HTTP_HOST=0\.0\.0\.0 is not a loopback address and DASHBOARD_TOKEN is unset/);
    expect(dashboardAccess('off', '127.0.0.1', 'a'.repeat(20)).enabled).toBe(false);
  });

  it('refuses to start (a configuration error naming the fix) when asked for on a public host without a token', () => {
    expect(() => loadWorkerConfig({ WORKER_HTTP_HOST: '0.0.0.0', WORKER_DASHBOARD: 'on' })).toThrow(ConfigError);
    expect(() => loadWorkerConfig({ WORKER_HTTP_HOST: '0.0.0.0', WORKER_DASHBOARD: 'on' })).toThrow(/Set DASHBOARD_TOKEN/);
    expect(loadWorkerConfig({ WORKER_HTTP_HOST: '0.0.0.0', WORKER_DASHBOARD: 'on', DASHBOARD_TOKEN: 'x'.repeat(24) }).dashboard.enabled).toBe(true);
  });

  it('rejects a short token without echoing it', () => {
    let message = '';
    try {
      loadWorkerConfig({ DASHBOARD_TOKEN: 'secret12' });
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toMatch(/DASHBOARD_TOKEN: must be at least 16 characters/);
    expect(message).not.toContain('secret12');
  });

  it('knows loopback addresses', () => {
    for (const h of ['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]']) expect(isLoopbackHost(h)).toBe(true);
    for (const h of ['0.0.0.0', '::', '10.0.0.5', 'worker.internal', '128.0.0.1']) expect(isLoopbackHost(h)).toBe(false);
  });

  it('compares the bearer token exactly', () => {
    const token = 'tok-0123456789abcdef';
    expect(bearerMatches(`Bearer ${token}`, token)).toBe(true);
    expect(bearerMatches(`bearer ${token}`, token)).toBe(true);
    expect(bearerMatches(`Bearer ${token}x`, token)).toBe(false);
    expect(bearerMatches(token, token)).toBe(false);
    expect(bearerMatches(undefined, token)).toBe(false);
  });

  it('tells loopback Host headers from others (DNS rebinding)', () => {
    for (const h of ['127.0.0.1', '127.0.0.1:9464', 'localhost:9464', '[::1]:9464', '127.1.2.3']) expect(isLoopbackHostHeader(h)).toBe(true);
    for (const h of [undefined, '', 'rebound.example:9464', 'localhost.example', '127.0.0.1.nip.io', '[::2]:9464', '10.0.0.1']) expect(isLoopbackHostHeader(h)).toBe(false);
  });

  it('without a token, answers the API only for requests addressed to a loopback name', async () => {
    const overview = { queue: [], slots: [] };
    const routes = createDashboardRoutes({ data: { overview: async () => overview } as never, token: null, log: createLogger('silent') });
    const server: Server = createServer((req, res) => void routes.handle(req, res).then((handled) => handled || res.writeHead(404).end()));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    const get = (host: string) =>
      new Promise<number>((resolve, reject) => {
        request({ host: '127.0.0.1', port, path: '/api/overview', headers: { host } }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        })
          .on('error', reject)
          .end();
      });
    try {
      expect(await get(`127.0.0.1:${port}`)).toBe(200);
      expect(await get(`localhost:${port}`)).toBe(200);
      expect(await get(`rebound.example:${port}`)).toBe(403);
    } finally {
      routes.close();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});

describe('dashboard: live log buffer', () => {
  it('keeps the newest lines per job and hands out only lines newer than what a client saw', () => {
    const a = new JobActivity(3, 2);
    a.addLines('j1', ['1', '2']);
    const first = a.tail('j1')!;
    a.addLines('j1', ['3', '4']);
    expect(a.tail('j1')).toEqual({ seq: 4, lines: ['2', '3', '4'] });
    expect(a.tail('j1', first.seq)).toEqual({ seq: 4, lines: ['3', '4'] });
    expect(a.tail('j1', 4)).toEqual({ seq: 4, lines: [] });
  });

  it('forgets the least recently written job beyond its limit', () => {
    const a = new JobActivity(10, 2);
    a.addLines('j1', ['a']);
    a.addLines('j2', ['b']);
    a.addLines('j1', ['c']);
    a.addLines('j3', ['d']);
    expect(a.tail('j2')).toBeNull();
    expect(a.tail('j1')?.lines).toEqual(['a', 'c']);
  });
});
