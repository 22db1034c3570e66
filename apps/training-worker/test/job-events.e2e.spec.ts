/**
 * The job event stream end to end: a real smoke job on a real worker with a
 * webhook subscription to a real local receiver. The receiver gets, signed and
 * in stream order: QUEUED → PROVISIONING → RUNNING → each checkpoint →
 * FINALIZING → COMPLETED → the settlement, each event once (by id), and the
 * outbox holds the same stream a consumer reads with readEvents. Every event
 * carries the job's environment.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { JobEventStore } from '@stationthis/db';
import { verifyWebhook } from '../src/events/webhook-signature';
import { createHarness, ensureSmokeImage, Harness } from './harness';

jest.setTimeout(300_000);

const SECRET = 'e2e-webhook-secret-0123456789abcdef';

describe('training worker: job events and webhooks', () => {
  let h: Harness;
  let server: Server;
  const received: { id: string; timestamp: string; signature: string; body: string }[] = [];

  beforeAll(async () => {
    await ensureSmokeImage();
    server = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString('utf8')));
      req.on('end', () => {
        received.push({ id: String(req.headers['x-stationthis-event-id']), timestamp: String(req.headers['x-stationthis-timestamp']), signature: String(req.headers['x-stationthis-signature']), body });
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/training-events`;
    h = await createHarness('events', {
      WEBHOOK_SUBSCRIPTIONS: JSON.stringify([{ id: 'platform', url, secretEnv: 'E2E_WEBHOOK_SECRET', from: 'start' }]),
      E2E_WEBHOOK_SECRET: SECRET,
      WEBHOOK_POLL_MS: '100',
    });
  });
  afterAll(async () => {
    await h?.close();
    if (server) await new Promise<void>((r) => server.close(() => r()));
  });

  it('delivers the whole life of a smoke job, signed, in order, once per event id', async () => {
    const { owner, wallet } = await h.seedAccount(5000);
    const datasetId = await h.seedDataset(owner);
    const jobId = await h.enqueue({ ownerAccountId: owner, datasetId, walletAddress: wallet, name: 'Events LoRA', triggerWord: 'evt7', parameters: { steps: 30, saveEveryNSteps: 10 } } as never);

    await h.runWorker();
    const job = await h.job(jobId);
    expect(job.status).toBe('COMPLETED');

    // The stopping worker drains its deliveries (a few seconds at most).
    const deadline = Date.now() + 20_000;
    const settledDelivered = () => received.some((r) => JSON.parse(r.body).type === 'settlement.settled');
    while (!settledDelivered() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));

    for (const r of received) expect(verifyWebhook({ secret: SECRET, timestamp: r.timestamp, body: r.body, signature: r.signature })).toBe(true);
    const events = received.map((r) => JSON.parse(r.body) as { id: string; seq: number; type: string; jobId: string; environment: string; payload: Record<string, unknown> });
    for (const [i, r] of received.entries()) expect(r.id).toBe(events[i]!.id);
    const mine = events.filter((e) => e.jobId === jobId);
    // The harness worker and its job are development: every event says so (and the subscription, by default, delivers only those).
    expect(new Set(events.map((e) => e.environment))).toEqual(new Set(['development']));
    // Once per id (a redelivery would repeat an id; none is expected with one healthy receiver) and in stream order.
    expect(new Set(mine.map((e) => e.id)).size).toBe(mine.length);
    expect(mine.map((e) => e.seq)).toEqual([...mine.map((e) => e.seq)].sort((a, b) => a - b));

    const story = mine.map((e) => (e.type === 'job.status' ? String(e.payload['status']) : e.type === 'checkpoint.stored' ? `checkpoint@${e.payload['step']}` : e.type));
    console.log(`[figures] webhook story: ${story.join(' → ')}`);
    expect(story).toEqual(['QUEUED', 'PROVISIONING', 'RUNNING', 'checkpoint@10', 'checkpoint@20', 'FINALIZING', 'COMPLETED', 'settlement.settled']);

    const completed = mine.find((e) => e.type === 'job.status' && e.payload['status'] === 'COMPLETED')!;
    expect(completed.id).toBe(`${jobId}:0:job.status:COMPLETED:1`);
    const checkpoint = mine.find((e) => e.type === 'checkpoint.stored')!;
    expect(checkpoint.payload).toMatchObject({ step: 10, loraUrl: expect.stringContaining(`training-jobs/${jobId}/checkpoints/`), sha256: expect.stringMatching(/^[0-9a-f]{64}$/) });
    const settlement = mine.find((e) => e.type === 'settlement.settled')!;
    const p = settlement.payload as { outcome: string; chargedPoints: number; usedPoints: number; refundedPoints: number };
    expect(p.outcome).toBe('completed');
    expect(p.chargedPoints).toBeGreaterThan(0);
    expect(p.usedPoints + p.refundedPoints).toBe(p.chargedPoints);
    expect(p.usedPoints).toBe(job.actualCostPoints ?? p.usedPoints);

    // The outbox holds the same stream for a consumer that reads instead of receiving webhooks.
    const stored = await h.app.container.resolve(JobEventStore).readEvents({ after: 0, limit: 1000, jobId });
    expect(stored.events.map((e) => e.id)).toEqual(mine.map((e) => e.id));
  });
});
