/**
 * The operator's dashboard in a real browser: headless Chromium (the Debian
 * package, driven by puppeteer-core) opens /dashboard on the worker's HTTP
 * server while the worker runs real smoke jobs on the local services. The
 * page must show the queue with positions, a job's live log while it runs,
 * its loss curve (read from uPlot's own data), its checkpoints' sample
 * images loaded through the token-guarded proxy, and a cancelled job's reason;
 * the API must refuse requests without the token. Screenshots go to
 * .state/artifacts/dashboard/.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import type { Server } from 'node:http';
import Module from 'node:module';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { Browser, Page, PuppeteerNode } from 'puppeteer-core' with { 'resolution-mode': 'import' };
import { loadWorkerConfig } from '../src/config/worker-config';
import { createDashboard, type Dashboard } from '../src/dashboard/dashboard';
import type { JobDetailView, OverviewView } from '../src/dashboard/dashboard-views';
import { createLogger } from '../src/observability/logger';
import { startHttpServer } from '../src/observability/http-server';
import { WorkerMetrics } from '../src/observability/metrics';
import { createHarness, ensureSmokeImage, Harness, REPO_ROOT } from './harness';

jest.setTimeout(420_000);

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
// puppeteer-core is ES modules only, and Jest loads ES modules only under --experimental-vm-modules (its own
// require and createRequire refuse them). Node's own loader (which requires ES modules since Node 22.12) loads it
// outside Jest's module registry instead.
const puppeteer = ((Module as unknown as { _load(request: string, parent: null, isMain: boolean): unknown })._load(require.resolve('puppeteer-core'), null, false) as { default: PuppeteerNode }).default;
// The page's globals as far as the callbacks run in it read them (the worker's tsconfig has no DOM library).
interface PageElement {
  textContent: string | null;
  className: string;
  hidden: boolean;
  getAttribute(name: string): string | null;
  click(): void;
}
interface PageImage extends PageElement {
  complete: boolean;
  naturalWidth: number;
}
declare const document: { querySelector(selector: string): PageElement | null; querySelectorAll(selector: string): ArrayLike<PageImage>; getElementById(id: string): PageElement | null };
declare const window: { __dashboard: { chart?: { data: ArrayLike<number>[] } } };

const ARTIFACTS = join(REPO_ROOT, '.state/artifacts/dashboard');
const TOKEN = `e2e-${randomBytes(16).toString('hex')}`;
const STEPS = 40;
const EVERY = 10;

describe('training worker: the operator dashboard in a real browser', () => {
  let h: Harness;
  let dashboard: Dashboard | null = null;
  let server: Server | null = null;
  let browser: Browser | null = null;
  let base = '';

  const api = async <T>(path: string, token: string | null = TOKEN): Promise<{ status: number; body: T }> => {
    const r = await fetch(`${base}${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
    return { status: r.status, body: (await r.json()) as T };
  };
  // A click in the page itself: the lists refresh every few hundred ms, and a row replaced between puppeteer's
  // locating and clicking it would swallow a synthetic mouse click.
  const open = (page: Page, selector: string) => page.evaluate((sel) => document.querySelector(sel)?.click(), selector);
  const shot = (page: Page, name: string) => page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`Chromium is not installed at ${CHROMIUM}: apt-get install chromium (or set CHROMIUM_PATH).`);
    await ensureSmokeImage();
    await mkdir(ARTIFACTS, { recursive: true });
    h = await createHarness('dash', { DASHBOARD_TOKEN: TOKEN });
    // The worker in-process, wired as main.ts wires it: the dashboard on its HTTP server, installed before any job exists.
    const started = h.startWorker();
    const app = await started.app;
    await started.worker;
    const config = loadWorkerConfig(h.env);
    dashboard = createDashboard(app.container, config, createLogger('silent'), { streamIntervalMs: 400 });
    if (!dashboard) throw new Error('the dashboard was not created');
    server = await startHttpServer({ host: '127.0.0.1', port: 0, metrics: app.container.resolve(WorkerMetrics), probes: [], isStopping: () => false, routes: [dashboard.handle] });
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'] });
  });

  afterAll(async () => {
    await browser?.close().catch(() => undefined);
    dashboard?.close();
    server?.closeAllConnections();
    await new Promise((r) => (server ? server.close(r) : r(undefined)));
    await h?.close();
  });

  it('refuses the API without the bearer token, and serves the page itself to anyone', async () => {
    expect((await api('/api/overview', null)).status).toBe(401);
    expect((await api('/api/queue', `${TOKEN}x`)).status).toBe(401);
    expect((await api('/api/jobs/656f00000000000000000001', null)).status).toBe(401);
    const stream = await fetch(`${base}/api/stream`);
    expect(stream.status).toBe(401);
    expect((await api<OverviewView>('/api/overview')).status).toBe(200);
    const page = await fetch(`${base}/dashboard`);
    expect(page.status).toBe(200);
    expect(page.headers.get('referrer-policy')).toBe('no-referrer');
    expect(await page.text()).toContain('/dashboard/vendor/uPlot.iife.min.js');
    expect((await fetch(`${base}/dashboard/vendor/uPlot.iife.min.js`)).status).toBe(200);
  });

  it('shows the queue, a running job live, its loss curve and samples, and a cancelled job with its reason', async () => {
    const { owner, wallet } = await h.seedAccount(5000);
    const datasetId = await h.seedDataset(owner);
    const trained = await h.enqueue({ ownerAccountId: owner, datasetId, walletAddress: wallet, name: 'Dashboard LoRA', triggerWord: 'dsh7', parameters: { steps: STEPS, saveEveryNSteps: EVERY } } as never);
    const waiting = await h.enqueue({ ownerAccountId: owner, datasetId, walletAddress: wallet, name: 'Waiting LoRA', triggerWord: 'wai7' } as never);
    const diverging = await h.enqueue({ ownerAccountId: owner, datasetId, walletAddress: wallet, name: 'Diverging LoRA', triggerWord: 'div7', parameters: { steps: 20, simulateFailure: 'nan-loss' } } as never);

    const page = await browser!.newPage();
    await page.setViewport({ width: 1400, height: 1000 });
    const consoleErrors: string[] = [];
    page.on('pageerror', (e) => consoleErrors.push(String(e)));
    await page.goto(`${base}/dashboard?token=${TOKEN}#job=${trained}`, { waitUntil: 'domcontentloaded' });
    // The token leaves the address bar (and so the history) at once; the page keeps it for the session.
    expect(page.url()).not.toContain(TOKEN);

    // The other jobs wait behind the first (one CPU slot), numbered in claim order.
    await page.waitForSelector(`#queue tr[data-job-id="${diverging}"]`, { timeout: 60_000 });
    // Once the worker has claimed the first job (until then it is position 1 itself).
    await page.waitForFunction((id) => !document.querySelector(`#queue tr[data-job-id="${id}"]`), { timeout: 120_000 }, trained);
    const position = (id: string) => page.evaluate((jobId) => document.querySelector(`#queue tr[data-job-id="${jobId}"] td`)?.textContent, id);
    expect([await position(waiting), await position(diverging)]).toEqual(['1', '2']);

    // The trained job runs: its phase is live on the page, with this worker's live log and its slot.
    await page.waitForFunction((id) => document.querySelector(`#job-detail[data-job-id="${id}"]`)?.getAttribute('data-status') === 'RUNNING', { timeout: 120_000 }, trained);
    await page.waitForFunction(() => /live/.test(document.getElementById('log-source')?.textContent ?? '') && (document.getElementById('log')?.textContent ?? '').length > 0, { timeout: 60_000 });
    const slotRow = await page.$(`#slots tr[data-job-id="${trained}"]`);
    expect(slotRow).not.toBeNull();
    // The loss curve grows while it runs, with no reload.
    await page.waitForFunction(
      (id) => document.querySelector(`#job-detail[data-job-id="${id}"]`)?.getAttribute('data-status') === 'RUNNING' && (window.__dashboard.chart?.data[0].length ?? 0) >= 3,
      { timeout: 120_000 },
      trained,
    );
    await shot(page, 'running');

    // Cancel the waiting job while it is queued (what the platform's Cancel does first).
    expect(await h.jobs.requestCancel(waiting, 'dashboard-e2e')).toBe('cancelled');

    await page.waitForFunction((id) => document.querySelector(`#job-detail[data-job-id="${id}"]`)?.getAttribute('data-status') === 'COMPLETED', { timeout: 240_000 }, trained);
    // The loss curve, read from the uPlot instance the page drew.
    await page.waitForFunction(() => (window.__dashboard.chart?.data[0].length ?? 0) >= 2, { timeout: 30_000 });
    const plotted = await page.evaluate(() => {
      const data = window.__dashboard.chart?.data ?? [[], []];
      return { steps: Array.from(data[0]), losses: Array.from(data[1]) };
    });
    expect(plotted.steps.length).toBeGreaterThanOrEqual(2);
    expect(plotted.losses.every((l) => Number.isFinite(l))).toBe(true);
    expect(plotted.steps).toEqual([...plotted.steps].sort((a, b) => a - b));
    // A checkpoint's sample image, streamed from the private bucket through the API, decoded by the browser.
    await page.waitForFunction(() => Array.from(document.querySelectorAll('#checkpoints img')).some((i) => i.complete && i.naturalWidth > 0), { timeout: 30_000 });
    const images = await page.evaluate(() => Array.from(document.querySelectorAll('#checkpoints img, #final-samples img')).map((i) => i.naturalWidth));
    expect(images.filter((w) => w > 0).length).toBeGreaterThan(0);
    expect(await page.evaluate(() => Array.from(document.querySelectorAll('#checkpoints .checkpoint')).map((e) => e.getAttribute('data-step')))).toEqual(['10', '20', '30']);
    expect(await page.evaluate(() => document.querySelector('#timeline li[data-phase="RUNNING"]')?.className)).toBe('done');
    expect(await page.evaluate(() => document.querySelector('#movements tbody')?.textContent)).toMatch(/charge/);
    await shot(page, 'completed');

    // The API's view of the same job: the durable loss series and the recorded phase times.
    const detail = (await api<JobDetailView>(`/api/jobs/${trained}`)).body;
    expect(detail.lossSeries.steps.length).toBe(plotted.steps.length);
    expect(detail.lossSeries.steps[detail.lossSeries.steps.length - 1]).toBeGreaterThan(STEPS / 2);
    const times = Object.fromEntries(detail.timeline.map((t) => [t.phase, t.at ? Date.parse(t.at) : null]));
    for (const phase of ['QUEUED', 'PROVISIONING', 'RUNNING', 'FINALIZING', 'COMPLETED']) expect(times[phase]).toEqual(expect.any(Number));
    expect(times.QUEUED! <= times.PROVISIONING! && times.PROVISIONING! <= times.RUNNING! && times.RUNNING! <= times.FINALIZING! && times.FINALIZING! <= times.COMPLETED!).toBe(true);
    expect(detail.points.movements.map((m) => m.kind)).toEqual(expect.arrayContaining(['charge', 'refund']));
    expect(detail.log.source).toBe('stored');
    // Nothing else of the bucket is reachable through the image proxy.
    expect((await api(`/api/jobs/${trained}/object?key=${encodeURIComponent(`training-jobs/${trained}/config/job-spec.json`)}`)).status).toBe(404);

    // The cancelled job: its plain-words reason, from the recent list.
    await page.waitForSelector(`#recent tr[data-job-id="${waiting}"]`, { timeout: 30_000 });
    await open(page, `#recent tr[data-job-id="${waiting}"]`);
    await page.waitForFunction((id) => document.querySelector(`#job-detail[data-job-id="${id}"]`)?.getAttribute('data-status') === 'CANCELLED', { timeout: 30_000 }, waiting);
    const reason = await page.evaluate(() => document.getElementById('job-reason')?.textContent ?? '');
    expect(reason).toMatch(/^Cancelled by dashboard-e2e at .+ while it was queued: nothing ran and nothing was charged\.$/);
    expect(await page.evaluate(() => document.getElementById('job-outcome')?.hidden)).toBe(false);
    await shot(page, 'cancelled');

    // The diverging job fails after the first: its reason as the worker wrote it, and its failure class.
    const failed = await h.waitFor(diverging, (j) => j.status === 'FAILED', 180_000);
    expect(failed.failureClass).toBe('engine');
    await page.waitForSelector(`#recent tr[data-job-id="${diverging}"]`, { timeout: 30_000 });
    await open(page, `#recent tr[data-job-id="${diverging}"]`);
    await page.waitForFunction((id) => document.querySelector(`#job-detail[data-job-id="${id}"]`)?.getAttribute('data-status') === 'FAILED', { timeout: 30_000 }, diverging);
    expect(await page.evaluate(() => document.getElementById('job-reason')?.textContent)).toBe(failed.failureReason);
    expect(await page.evaluate(() => document.getElementById('job-class')?.textContent)).toMatch(/^Failure class: engine \(.*NaN.*\)$/);
    expect(await page.evaluate((id) => document.querySelector(`#recent tr[data-job-id="${id}"]`)?.textContent, diverging)).toContain('engine');
    await shot(page, 'failed');

    expect(consoleErrors).toEqual([]);
    await page.close();
  });
});
