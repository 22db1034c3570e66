/**
 * Signed webhooks against real local HTTP receivers and the real outbox on
 * FerretDB: the signature verifies with the secret and not without it; a
 * receiver that is down, then up, gets every event after retries (at least
 * once, each with its event id); a slow receiver is timed out and retried
 * while another subscription is served at once; type filters; two workers on
 * one subscription deliver each event with one id; environments (a worker
 * delivers its own environment's events by default, through its own cursor;
 * "*" on a dev and a prod worker shares one cursor, each event once); a worker
 * refuses a subscription whose cursor another live worker delivers to another
 * URL, retries, and adopts the cursor (URL changed) once that worker is gone;
 * a legacy un-keyed cursor is adopted once per key; the lease is held through
 * a batch longer than the lease; an event refused for good (400/413/415/422)
 * is set aside as a dead letter, while receiver-wide refusals (401, 404, …)
 * and a receiver that is down never set one aside; the circuit breaker holds
 * a second event refused with the same status; a rewound cursor replays;
 * URLs are logged as their origin only.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { JobEventRecorder, JobEventStore, type JobEventDraft, type TrainingEnvironment } from '@stationthis/db';
import type { WorkerConfig } from '../src/config/worker-config';
import { JobEventsService } from '../src/events/job-events-service';
import { loadJobEventsConfig, WebhookSubscription, type JobEventsConfig } from '../src/events/webhook-config';
import { WEBHOOK_CURSORS_COLLECTION, WebhookCursorConflictError, WebhookCursors, type CursorTarget, type WebhookCursorDoc } from '../src/events/webhook-cursors';
import { WEBHOOK_DEAD_LETTERS_COLLECTION, WebhookDeadLetters } from '../src/events/webhook-dead-letters';
import { WebhookDeliverer } from '../src/events/webhook-deliverer';
import { verifyWebhook } from '../src/events/webhook-signature';
import { createLogger } from '../src/observability/logger';
import { WorkerMetrics } from '../src/observability/metrics';
import { openTestDb, type TestDb } from '../../../tools/testing/support';

jest.setTimeout(60_000);

const SECRET = 'test-secret-0123456789abcdef';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Received {
  id: string | undefined;
  timestamp: string | undefined;
  signature: string | undefined;
  body: string;
  at: number;
}

/** A real HTTP receiver on 127.0.0.1. `behave` decides each answer: a status, or 'hang' for a slow receiver. */
class Receiver {
  readonly received: Received[] = [];
  private server: Server | null = null;
  port = 0;
  behave: (n: number, eventId: string | undefined) => number | 'hang' = () => 200;
  /** Runs before each answer (e.g. to look at the cursor while the request is in flight). */
  onRequest: (() => Promise<void>) | null = null;

  async start(port = 0): Promise<this> {
    this.server = createServer((req: IncomingMessage, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString('utf8')));
      req.on('end', () => {
        const n = this.received.length;
        this.received.push({
          id: req.headers['x-stationthis-event-id'] as string | undefined,
          timestamp: req.headers['x-stationthis-timestamp'] as string | undefined,
          signature: req.headers['x-stationthis-signature'] as string | undefined,
          body,
          at: Date.now(),
        });
        const answer = this.behave(n, req.headers['x-stationthis-event-id'] as string | undefined);
        void (this.onRequest ?? (async () => undefined))().then(() => {
          if (answer === 'hang') setTimeout(() => res.writeHead(200).end('late'), 1500).unref();
          else res.writeHead(answer).end();
        });
      });
    });
    await new Promise<void>((r) => this.server!.listen(port, '127.0.0.1', () => r()));
    this.port = (this.server!.address() as AddressInfo).port;
    return this;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}/hooks`;
  }

  /** Ids of the accepted (2xx) deliveries, in arrival order. */
  acceptedIds(): string[] {
    return this.received.filter((r, n) => {
      const a = this.behave(n, r.id);
      return typeof a === 'number' && a < 300;
    }).map((r) => r.id!);
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (s) await new Promise<void>((r) => { s.closeAllConnections(); s.close(() => r()); });
  }
}

/** A free port that nothing listens on (yet). */
async function closedPort(): Promise<number> {
  const r = await new Receiver().start();
  const port = r.port;
  await r.stop();
  return port;
}

describe('job event webhooks (real receivers, real outbox)', () => {
  let t: TestDb;
  let store: JobEventStore;
  const receivers: Receiver[] = [];
  const services: JobEventsService[] = [];
  const log = createLogger('silent');
  let n = 0;

  beforeAll(async () => {
    t = await openTestDb('worker_webhooks');
    store = new JobEventStore(t.db);
    await store.ensureIndexes();
  });
  afterEach(async () => {
    for (const s of services.splice(0)) await s.stop().catch(() => undefined);
    for (const r of receivers.splice(0)) await r.stop();
  });
  afterAll(() => t.drop());

  async function receiver(): Promise<Receiver> {
    const r = await new Receiver().start();
    receivers.push(r);
    return r;
  }

  function events(count: number, type: JobEventDraft['type'] = 'job.status', environment: TrainingEnvironment = 'production'): JobEventDraft[] {
    return Array.from({ length: count }, () => {
      n++;
      return { id: `job-${n}:0:${type}:${n}`, type, jobId: `job-${n}`, environment, attempt: 0, at: new Date(), payload: { n } };
    });
  }

  function service(
    subscriptions: object[],
    extra: Record<string, string> = {},
    workerId = 'w1',
    environment: TrainingEnvironment = 'production',
    logger = log,
  ): { svc: JobEventsService; metrics: WorkerMetrics; config: JobEventsConfig } {
    const config = loadJobEventsConfig({
      WEBHOOK_SUBSCRIPTIONS: JSON.stringify(subscriptions),
      WEBHOOK_POLL_MS: '50',
      WEBHOOK_RETRY_BASE_MS: '50',
      WEBHOOK_RETRY_MAX_MS: '400',
      WEBHOOK_TIMEOUT_MS: '300',
      JOB_EVENTS_RECONCILE_MS: '60000',
      ...extra,
    });
    const metrics = new WorkerMetrics();
    const svc = new JobEventsService(config, { workerId, environment } as WorkerConfig, logger, t.db, store, new JobEventRecorder(t.db, store), metrics);
    services.push(svc);
    return { svc, metrics, config };
  }

  async function untilAsync(what: string, pred: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await pred())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
      await sleep(25);
    }
  }

  /** A deliverer without the service loop: the test calls tick() itself. */
  function deliverer(subscription: WebhookSubscription, workerId = 'direct'): { d: WebhookDeliverer; metrics: WorkerMetrics } {
    const metrics = new WorkerMetrics();
    const config = { timeoutMs: 300, retryBaseMs: 20, retryMaxMs: 60, pollMs: 20, refusedRetryMs: 200 };
    const d = new WebhookDeliverer(subscription, store, new WebhookCursors(t.db, workerId, 30_000), new WebhookDeadLetters(t.db, workerId), 'production', config, metrics, log);
    return { d, metrics };
  }

  async function until(what: string, pred: () => boolean, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
      await sleep(25);
    }
  }

  const sub = (id: string, url: string, extra: object = {}) => ({ id, url, secret: SECRET, from: 'now', ...extra });
  const metric = async (m: WorkerMetrics, name: string, labels: Record<string, string>) =>
    (await m.registry.getSingleMetric(name)!.get()).values.find((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val))?.value ?? 0;

  it('signs each delivery: verifies with the secret, fails with a wrong one or a changed body', async () => {
    const r = await receiver();
    const { svc } = service([sub('signed', r.url)]);
    svc.start();
    await sleep(200); // the cursor starts at the head ("from": "now")
    const drafts = events(2);
    await store.append(drafts, 'test');
    await until('2 deliveries', () => r.received.length >= 2);
    for (const [i, got] of r.received.entries()) {
      const body = JSON.parse(got.body);
      expect(got.id).toBe(drafts[i]!.id);
      expect(body).toMatchObject({ id: drafts[i]!.id, type: 'job.status', jobId: drafts[i]!.jobId, environment: 'production', attempt: 0, payload: { n: drafts[i]!.payload['n'] } });
      expect(typeof body.seq).toBe('number');
      expect(got.signature).toMatch(/^sha256=[0-9a-f]{64}$/);
      expect(verifyWebhook({ secret: SECRET, timestamp: got.timestamp, body: got.body, signature: got.signature })).toBe(true);
      expect(verifyWebhook({ secret: 'another-secret-0123456789', timestamp: got.timestamp, body: got.body, signature: got.signature })).toBe(false);
      expect(verifyWebhook({ secret: SECRET, timestamp: got.timestamp, body: got.body.replace('"attempt":0', '"attempt":1'), signature: got.signature })).toBe(false);
      expect(verifyWebhook({ secret: SECRET, timestamp: String(Number(got.timestamp) + 1), body: got.body, signature: got.signature })).toBe(false);
      // A replay of an old delivery is refused by its timestamp.
      expect(verifyWebhook({ secret: SECRET, timestamp: got.timestamp, body: got.body, signature: got.signature, nowSeconds: Number(got.timestamp) + 3600 })).toBe(false);
    }
  });

  it('a receiver down, then answering 500, then up gets every event, in order, each with its id', async () => {
    const port = await closedPort();
    const url = `http://127.0.0.1:${port}/hooks`;
    const { svc, metrics } = service([sub('flaky', url, { from: 'start' })]);
    const head = await store.head();
    // Start from the current head so earlier tests' events are not part of this one.
    await t.db.collection(WEBHOOK_CURSORS_COLLECTION).insertOne({ _id: 'production:flaky' as never, position: head, owner: null, leaseExpiresAt: new Date(0), updatedAt: new Date() });
    const drafts = events(3);
    await store.append(drafts, 'test');
    svc.start();
    await sleep(700); // down: connection refused, retried with backoff
    const failedWhileDown = await metric(metrics, 'training_webhook_deliveries_total', { subscription: 'flaky', outcome: 'failed' });
    expect(failedWhileDown).toBeGreaterThanOrEqual(2);
    const r = new Receiver();
    r.behave = (k) => (k < 2 ? 500 : 200);
    await r.start(port);
    receivers.push(r);
    await until('all 3 accepted', () => r.acceptedIds().length >= 3);
    expect(r.acceptedIds()).toEqual(drafts.map((d) => d.id));
    // The two 500s were the first event, sent again with the same id.
    expect(r.received.slice(0, 3).map((x) => x.id)).toEqual([drafts[0]!.id, drafts[0]!.id, drafts[0]!.id]);
    await svc.stop(); // the round in flight finishes: its metrics, cursor and lag are written
    expect(await metric(metrics, 'training_webhook_deliveries_total', { subscription: 'flaky', outcome: 'delivered' })).toBe(3);
    const cursor = await t.db.collection(WEBHOOK_CURSORS_COLLECTION).findOne({ _id: 'production:flaky' as never });
    expect(cursor).toMatchObject({ position: head + 3, consecutiveFailures: 0, lastError: null, owner: null });
    expect(await metric(metrics, 'training_webhook_lag_events', { subscription: 'flaky' })).toBe(0);
  });

  it('times out a slow receiver and retries it, while another subscription is served at once', async () => {
    const slow = await receiver();
    slow.behave = (k) => (k < 3 ? 'hang' : 200);
    const fast = await receiver();
    const { svc, metrics } = service([sub('slow', slow.url), sub('fast', fast.url)]);
    svc.start();
    await sleep(300);
    const drafts = events(3);
    const stored = Date.now();
    await store.append(drafts, 'test');
    await until('fast got all 3', () => fast.received.length >= 3, 5000);
    const fastDone = Date.now() - stored;
    await until('slow got all 3', () => slow.acceptedIds().length >= 3);
    expect(slow.acceptedIds()).toEqual(drafts.map((d) => d.id));
    // Three timed-out tries of the first event (300 ms each, then a backoff), the same id each time...
    expect(slow.received.slice(0, 3).map((x) => x.id)).toEqual([drafts[0]!.id, drafts[0]!.id, drafts[0]!.id]);
    // ...while the other subscription had everything before the slow one got its first event through.
    expect(Math.max(...fast.received.map((x) => x.at))).toBeLessThan(slow.received[3]!.at);
    expect(fast.received.map((x) => x.id)).toEqual(drafts.map((d) => d.id));
    expect(fastDone).toBeLessThan(1500);
    expect(await metric(metrics, 'training_webhook_deliveries_total', { subscription: 'slow', outcome: 'failed' })).toBe(3);
    expect(await metric(metrics, 'training_webhook_deliveries_total', { subscription: 'fast', outcome: 'failed' })).toBe(0);
  });

  it('delivers only the types a subscription asked for, and moves its cursor past the others', async () => {
    const r = await receiver();
    const { svc } = service([sub('ckpt-only', r.url, { types: ['checkpoint.stored', 'settlement.settled'] })]);
    svc.start();
    await sleep(200);
    const mixed = [...events(1), ...events(1, 'checkpoint.stored'), ...events(1, 'job.failed'), ...events(1, 'settlement.settled')];
    await store.append(mixed, 'test');
    const head = await store.head();
    const deadline = Date.now() + 5000;
    let cursor: { position?: number } | null = null;
    while (Date.now() < deadline) {
      cursor = await t.db.collection<{ _id: string; position: number }>(WEBHOOK_CURSORS_COLLECTION).findOne({ _id: 'production:ckpt-only' });
      if (cursor?.position === head) break;
      await sleep(50);
    }
    expect(cursor?.position).toBe(head);
    expect(r.received.map((x) => JSON.parse(x.body).type)).toEqual(['checkpoint.stored', 'settlement.settled']);
  });

  it('two workers on one subscription: one delivers, each event arrives with one id', async () => {
    const r = await receiver();
    const subscriptions = [sub('shared', r.url)];
    const a = service(subscriptions, {}, 'worker-a');
    const b = service(subscriptions, {}, 'worker-b');
    a.svc.start();
    b.svc.start();
    await sleep(300);
    const drafts = events(10);
    await store.append(drafts, 'test');
    await until('10 distinct ids', () => new Set(r.received.map((x) => x.id)).size >= 10);
    await sleep(300);
    expect([...new Set(r.received.map((x) => x.id))]).toEqual(drafts.map((d) => d.id));
    const cursor = await t.db.collection(WEBHOOK_CURSORS_COLLECTION).findOne({ _id: 'production:shared' as never });
    expect(['worker-a', 'worker-b']).toContain(cursor?.['owner']);
    // For the report: duplicates (allowed, same id) from the two workers.
    console.log(`two workers: ${r.received.length} deliveries for ${drafts.length} events`);
  });

  it('delivers its own environment by default, any listed with "environments", each environment through its own cursor', async () => {
    const prodR = await receiver();
    const devR = await receiver();
    const allR = await receiver();
    const prod = service([sub('platform', prodR.url), sub('everything', allR.url, { environments: '*' })], {}, 'prod-w', 'production');
    // The dev worker names the same subscription id with its own URL: a cursor of its own, no conflict.
    const dev = service([sub('platform', devR.url)], {}, 'dev-w', 'development');
    prod.svc.start();
    dev.svc.start();
    await sleep(300);
    const mixed = [...events(1, 'job.status', 'production'), ...events(1, 'job.status', 'development'), ...events(1, 'job.failed', 'production'), ...events(1, 'job.failed', 'development')];
    await store.append(mixed, 'test');
    await until('all deliveries', () => prodR.received.length >= 2 && devR.received.length >= 2 && allR.received.length >= 4);
    await sleep(200);
    const envOf = (r: Receiver) => r.received.map((x) => [x.id, JSON.parse(x.body).environment]);
    expect(envOf(prodR)).toEqual(mixed.filter((d) => d.environment === 'production').map((d) => [d.id, 'production']));
    expect(envOf(devR)).toEqual(mixed.filter((d) => d.environment === 'development').map((d) => [d.id, 'development']));
    expect(envOf(allR)).toEqual(mixed.map((d) => [d.id, d.environment]));
    const cursors = t.db.collection<{ _id: string; owner: string }>(WEBHOOK_CURSORS_COLLECTION);
    expect((await cursors.findOne({ _id: 'production:platform' }))?.owner).toBe('prod-w');
    expect((await cursors.findOne({ _id: 'development:platform' }))?.owner).toBe('dev-w');
  });

  it('refuses a subscription while another live worker delivers its cursor to another URL, retries, and adopts the cursor once that worker is gone (URL changed)', async () => {
    const theirs = await receiver();
    const mine = await receiver();
    const cursors = t.db.collection<WebhookCursorDoc>(WEBHOOK_CURSORS_COLLECTION);
    const first = service([sub('clash', theirs.url)], {}, 'worker-1');
    first.svc.start();
    await untilAsync('worker-1 owns the cursor', async () => (await cursors.findOne({ _id: 'production:clash' }))?.owner === 'worker-1');
    const lines: string[] = [];
    const sink = new Writable({ write: (chunk, _enc, done) => (lines.push(String(chunk)), done()) });
    // The same subscription id with a rotated token in its URL, on a second worker.
    const second = service([sub('clash', `${mine.url}?token=receiver-secret-token`)], { WEBHOOK_REFUSED_RETRY_MS: '150' }, 'worker-2', 'production', createLogger('info', sink));
    second.svc.start();
    await until('refused', () => second.svc.deliverers[0]!.isRefused, 5000);
    const early = events(1);
    await store.append(early, 'test');
    await until('worker-1 delivered to its URL', () => theirs.received.some((x) => x.id === early[0]!.id));
    await sleep(600); // worker-2 tries again every 150 ms and is refused each time while worker-1's lease holds
    expect(mine.received).toEqual([]);
    expect(second.svc.deliverers[0]!.isRefused).toBe(true);
    expect(await metric(second.metrics, 'training_webhook_deliveries_total', { subscription: 'clash', outcome: 'refused' })).toBeGreaterThanOrEqual(3);
    const before = await cursors.findOne({ _id: 'production:clash' });
    expect(before).toMatchObject({ owner: 'worker-1', urlHash: first.config.subscriptions[0]!.urlHash });
    const refusal = lines.map((l) => JSON.parse(l)).find((l) => /refused/.test(l.msg));
    expect(refusal).toMatchObject({ level: 'error', subscription: 'clash', cursor: 'production:clash' });
    expect(refusal.err.message).toMatch(/another URL/);

    // The old configuration goes away: worker-2 adopts the cursor at its position, for its URL, without a restart.
    await first.svc.stop();
    await until('no longer refused', () => !second.svc.deliverers[0]!.isRefused, 5000);
    const late = events(2);
    await store.append(late, 'test');
    await until('worker-2 delivered to the new URL', () => mine.received.length >= 2);
    await sleep(100);
    expect(mine.received.map((x) => x.id)).toEqual(late.map((d) => d.id));
    expect(theirs.received.map((x) => x.id)).not.toContain(late[0]!.id);
    expect(await cursors.findOne({ _id: 'production:clash' })).toMatchObject({ owner: 'worker-2', urlHash: second.config.subscriptions[0]!.urlHash, urlOrigin: `http://127.0.0.1:${mine.port}`, position: await store.head() });
    const changed = lines.map((l) => JSON.parse(l)).find((l) => /URL changed/.test(l.msg));
    expect(changed).toMatchObject({ level: 'warn', cursor: 'production:clash', url: `http://127.0.0.1:${mine.port}`, previousUrl: `http://127.0.0.1:${theirs.port}`, position: before!.position });
    // No log line carries either URL's path or query.
    expect(lines.join('\n')).not.toContain('receiver-secret-token');
    expect(lines.join('\n')).not.toContain('/hooks');
  });

  it('adopts a cursor written for another URL when its lease lapsed or is its own; conflicts only with another worker\'s live lease', async () => {
    const cursors = t.db.collection<WebhookCursorDoc>(WEBHOOK_CURSORS_COLLECTION);
    const key = 'production:rotated';
    const target: CursorTarget = { key, legacyKey: 'rotated', urlHash: 'new-hash-0000001', safeUrl: 'https://new.example' };
    const adopter = new WebhookCursors(t.db, 'adopter', 30_000);
    const start = async () => 999;
    await cursors.insertOne({ _id: key, urlHash: 'old-hash-0000001', urlOrigin: 'https://old.example', position: 41, owner: 'gone', leaseExpiresAt: new Date(Date.now() - 1000), updatedAt: new Date() });
    expect(await adopter.acquire(target, start)).toEqual({ position: 41, urlChangedFrom: { origin: 'https://old.example', urlHash: 'old-hash-0000001' } });
    expect(await cursors.findOne({ _id: key })).toMatchObject({ owner: 'adopter', urlHash: target.urlHash, urlOrigin: 'https://new.example', position: 41 });
    // Its own unexpired lease (the same worker restarted with the new URL): adopted too.
    await cursors.updateOne({ _id: key }, { $set: { urlHash: 'old-hash-0000001' } });
    expect(await adopter.acquire(target, start)).toMatchObject({ position: 41, urlChangedFrom: { urlHash: 'old-hash-0000001' } });
    expect(await adopter.acquire(target, start)).toEqual({ position: 41 });
    // Another worker while the lease is live: another URL conflicts and leaves the cursor alone; the same URL just waits.
    const other = new WebhookCursors(t.db, 'other', 30_000);
    await expect(other.acquire({ ...target, urlHash: 'other-hash-00001' }, start)).rejects.toThrow(WebhookCursorConflictError);
    expect(await other.acquire(target, start)).toBeNull();
    expect(await cursors.findOne({ _id: key })).toMatchObject({ owner: 'adopter', urlHash: target.urlHash, position: 41 });
  });

  it('a cursor from before environment keys gives its position to each keyed cursor once; a deleted cursor does not take it again', async () => {
    const cursors = t.db.collection<WebhookCursorDoc>(WEBHOOK_CURSORS_COLLECTION);
    await cursors.insertOne({ _id: 'old-sub', position: 7, owner: null, leaseExpiresAt: new Date(0), updatedAt: new Date() });
    const w = new WebhookCursors(t.db, 'legacy-w', 30_000);
    const target = (key: string): CursorTarget => ({ key, legacyKey: 'old-sub', urlHash: 'hash-legacy-0001', safeUrl: 'https://a.example' });
    const start = async () => 500;
    expect(await w.acquire(target('production:old-sub'), start)).toEqual({ position: 7, adoptedLegacy: true });
    expect((await cursors.findOne({ _id: 'old-sub' }))?.adoptedBy).toEqual(['production:old-sub']);
    // An operator resets the cursor (deletes it): it starts over per "from", not at the legacy position again.
    await cursors.deleteOne({ _id: 'production:old-sub' });
    expect(await w.acquire(target('production:old-sub'), start)).toEqual({ position: 500, adoptedLegacy: false });
    // Another key adopts it once as well.
    expect(await w.acquire(target('development:old-sub'), start)).toEqual({ position: 7, adoptedLegacy: true });
    await cursors.deleteOne({ _id: 'development:old-sub' });
    expect(await w.acquire(target('development:old-sub'), start)).toEqual({ position: 500, adoptedLegacy: false });
    expect((await cursors.findOne({ _id: 'old-sub' }))?.adoptedBy).toEqual(['production:old-sub', 'development:old-sub']);
  });

  it('"environments": "*" on a dev and a prod worker: one cursor, each event delivered once', async () => {
    const r = await receiver();
    const subscriptions = [sub('both-envs', r.url, { environments: '*' })];
    const prod = service(subscriptions, {}, 'prod-w', 'production');
    const dev = service(subscriptions, {}, 'dev-w', 'development');
    prod.svc.start();
    dev.svc.start();
    await sleep(300);
    const mixed = [...events(3, 'job.status', 'production'), ...events(3, 'job.status', 'development')];
    await store.append(mixed, 'test');
    await until('every event', () => new Set(r.received.map((x) => x.id)).size >= mixed.length);
    await sleep(500); // room for a second delivery of each, had there been a second cursor
    expect(r.received.map((x) => x.id)).toEqual(mixed.map((d) => d.id));
    const cursors = t.db.collection<WebhookCursorDoc>(WEBHOOK_CURSORS_COLLECTION);
    expect(await cursors.findOne({ _id: '*:both-envs' })).toMatchObject({ position: await store.head() });
    expect(await cursors.countDocuments({ _id: { $in: ['production:both-envs', 'development:both-envs'] } })).toBe(0);
  });

  it('holds the cursor lease through a batch that takes longer than the lease', async () => {
    const r = await receiver();
    const LEASE_MS = 3000;
    const cursors = new WebhookCursors(t.db, 'lease-holder', LEASE_MS);
    const config = { timeoutMs: 300, retryBaseMs: 50, retryMaxMs: 400, pollMs: 50, refusedRetryMs: 1000 };
    const subscription = loadJobEventsConfig({ WEBHOOK_SUBSCRIPTIONS: JSON.stringify([sub('long-batch', r.url)]) }).subscriptions[0]!;
    const deliverer = new WebhookDeliverer(subscription, store, cursors, new WebhookDeadLetters(t.db, 'lease-holder'), 'production', config, new WorkerMetrics(), log);
    expect(await deliverer.tick()).toBeGreaterThan(0); // creates the cursor at the head
    const drafts = events(24);
    await store.append(drafts, 'test');
    // While each request is in flight, the cursor must be this worker's with at least the request timeout left.
    const leaseLeftAtRequest: number[] = [];
    r.onRequest = async () => {
      const c = await t.db.collection<{ _id: string; owner: string; leaseExpiresAt: Date }>(WEBHOOK_CURSORS_COLLECTION).findOne({ _id: 'production:long-batch' });
      leaseLeftAtRequest.push(c?.owner === 'lease-holder' ? c.leaseExpiresAt.getTime() - Date.now() : -1);
      await sleep(200);
    };
    const started = Date.now();
    let rounds = 0;
    while (r.received.length < drafts.length && Date.now() - started < 30_000) {
      await deliverer.tick();
      rounds++;
    }
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThan(LEASE_MS * 1.2);
    expect(r.received.map((x) => x.id)).toEqual(drafts.map((d) => d.id));
    expect(Math.min(...leaseLeftAtRequest)).toBeGreaterThan(config.timeoutMs);
    console.log(`lease ${LEASE_MS} ms held through ${drafts.length} deliveries in ${elapsed} ms (${rounds} rounds); least lease left at a request: ${Math.min(...leaseLeftAtRequest)} ms`);
  });

  it('sets aside an event refused for good (permanent 4xx) as a dead letter and delivers the next; 429 is retried, not set aside', async () => {
    const r = await receiver();
    const [poison, throttled, fine] = events(3);
    let throttledTries = 0;
    r.behave = (_n, id) => {
      if (id === poison!.id) return 400;
      if (id === throttled!.id) return ++throttledTries <= 3 ? 429 : 200;
      return 200;
    };
    const { svc, metrics } = service([sub('poison', r.url, { deadLetter: { afterFailures: 2 } })]);
    svc.start();
    await sleep(300);
    await store.append([poison!, throttled!, fine!], 'test');
    await until('the events after the poison one', () => r.received.some((x) => x.id === fine!.id), 15_000);
    // Once per try: re-evaluating behave in acceptedIds would count the 429s again.
    expect(r.received.filter((x) => x.id === poison!.id)).toHaveLength(2);
    expect(r.received.filter((x) => x.id === throttled!.id)).toHaveLength(4);
    const letters = await new WebhookDeadLetters(t.db, 'test').list('production:poison');
    expect(letters.map((l) => [l.eventId, l.seq, l.failures])).toEqual([[poison!.id, expect.any(Number), 2]]);
    expect(letters[0]!.reason).toMatch(/refused it 2 times with HTTP 400/);
    expect(letters[0]!.event).toMatchObject({ id: poison!.id, environment: 'production' });
    expect(await t.db.collection(WEBHOOK_DEAD_LETTERS_COLLECTION).countDocuments({ eventId: throttled!.id })).toBe(0);
    expect(await metric(metrics, 'training_webhook_deliveries_total', { subscription: 'poison', outcome: 'dead_lettered' })).toBe(1);
    await svc.stop();
    const cursor = await t.db.collection(WEBHOOK_CURSORS_COLLECTION).findOne({ _id: 'production:poison' as never });
    expect(cursor).toMatchObject({ position: await store.head(), consecutiveFailures: 0 });
  });

  it('never sets an event aside for a receiver-wide refusal (401, 403, 404, 405, 410, a redirect) or while the receiver is down or busy, however long it fails', async () => {
    const port = await closedPort();
    // The most eager policy: one per-event refusal, or 1 ms of failing, would set an event aside.
    const subscription = new WebhookSubscription('receiver-wide', `http://127.0.0.1:${port}/hooks`, SECRET, [], 'now', null, { afterFailures: 1, maxAgeMs: 1, breakerAfter: 1 });
    const { d, metrics } = deliverer(subscription);
    await d.tick(); // creates the cursor at the head
    const start = await store.head();
    const drafts = events(2);
    await store.append(drafts, 'test');
    const tickFor = async (ms: number, done: () => boolean = () => false) => {
      const until = Date.now() + ms;
      while (Date.now() < until && !done()) await sleep(Math.min(await d.tick(), 30));
    };
    await tickFor(1200); // connection refused, again and again
    const failedWhileDown = await metric(metrics, 'training_webhook_deliveries_total', { subscription: 'receiver-wide', outcome: 'failed' });
    expect(failedWhileDown).toBeGreaterThanOrEqual(3);
    const answers = [401, 403, 404, 405, 410, 302, 500, 503, 408, 429];
    const r = new Receiver();
    r.behave = (k) => answers[k] ?? 200;
    await r.start(port);
    receivers.push(r);
    await tickFor(15_000, () => r.received.length >= answers.length + drafts.length);
    expect(r.received.slice(0, answers.length).map((x) => x.id)).toEqual(answers.map(() => drafts[0]!.id));
    expect(r.received.slice(answers.length).map((x) => x.id)).toEqual(drafts.map((x) => x.id));
    expect(await new WebhookDeadLetters(t.db, 'test').list('production:receiver-wide')).toEqual([]);
    expect(await metric(metrics, 'training_webhook_deliveries_total', { subscription: 'receiver-wide', outcome: 'dead_lettered' })).toBe(0);
    expect(await t.db.collection(WEBHOOK_CURSORS_COLLECTION).findOne({ _id: 'production:receiver-wide' as never })).toMatchObject({ position: start + 2 });
  });

  it('circuit breaker: a second event in a row refused with the same status is held, not set aside, until a delivery succeeds; a rewound cursor replays', async () => {
    const r = await receiver();
    const [a, b, c, d] = events(4);
    const [e] = events(1);
    let fixed = false;
    r.behave = (_n, id) => {
      if (id === e!.id) return 400; // bad on its own, after the receiver is fixed
      if (fixed) return 200;
      if (id === a!.id) return 400;
      return 422; // b: another status than a's, so set aside too; c: 422 again, so the receiver refuses everything
    };
    const lines: string[] = [];
    const sink = new Writable({ write: (chunk, _enc, done) => (lines.push(String(chunk)), done()) });
    const { svc, metrics } = service([sub('breaker', r.url, { deadLetter: { afterFailures: 1 } })], {}, 'w1', 'production', createLogger('info', sink));
    const cursors = t.db.collection<WebhookCursorDoc>(WEBHOOK_CURSORS_COLLECTION);
    const letters = async () => (await new WebhookDeadLetters(t.db, 'test').list('production:breaker')).map((l) => [l.eventId, l.status]);
    svc.start();
    await sleep(300);
    await store.append([a!, b!, c!, d!], 'test');
    await until('c tried three times', () => r.received.filter((x) => x.id === c!.id).length >= 3);
    expect(await letters()).toEqual([[a!.id, 400], [b!.id, 422]]);
    expect(await metric(metrics, 'training_webhook_deliveries_total', { subscription: 'breaker', outcome: 'held' })).toBe(1);
    const bSeq = (await new WebhookDeadLetters(t.db, 'test').list('production:breaker'))[1]!.seq;
    expect(await cursors.findOne({ _id: 'production:breaker' })).toMatchObject({ position: bSeq, deadLetterStreak: { status: 422, events: 1 } });
    expect(r.received.some((x) => x.id === d!.id)).toBe(false);
    const held = lines.map((l) => JSON.parse(l)).find((l) => /circuit breaker/.test(l.msg));
    expect(held).toMatchObject({ level: 'error', eventId: c!.id, status: 422 });

    // The receiver is fixed: c and d are delivered, and the streak is over.
    fixed = true;
    await until('c and d delivered', () => r.received.some((x) => x.id === d!.id));
    await untilAsync('streak reset', async () => (await cursors.findOne({ _id: 'production:breaker' }))?.deadLetterStreak === null);
    // Replay (docs/job-events.md): set the cursor back to just before the first dead letter.
    const [first] = await new WebhookDeadLetters(t.db, 'test').list('production:breaker');
    const mark = r.received.length;
    await cursors.updateOne({ _id: 'production:breaker' }, { $set: { position: first!.seq - 1 } });
    await until('a, b, c, d again', () => r.received.length >= mark + 4);
    expect(r.received.slice(mark, mark + 4).map((x) => x.id)).toEqual([a!.id, b!.id, c!.id, d!.id]);

    // After deliveries, one bad event is set aside again.
    await store.append([e!], 'test');
    await untilAsync('e set aside', async () => (await letters()).length === 3);
    expect(await letters()).toEqual([[a!.id, 400], [b!.id, 422], [e!.id, 400]]);
    await svc.stop();
    expect(await cursors.findOne({ _id: 'production:breaker' })).toMatchObject({ position: await store.head(), deadLetterStreak: { status: 400, events: 1 } });
  });
});
