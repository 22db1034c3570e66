/**
 * The dashboard's HTTP routes, mounted on the worker's HTTP server:
 * - `/dashboard` and its static assets (plain HTML/CSS/JS, uPlot from
 *   node_modules): no data in them, served without a token so `?token=` works;
 * - the JSON API, every route behind `Authorization: Bearer <DASHBOARD_TOKEN>`:
 *   `/api/overview` (alias `/api/queue`): slots, queue, running and recent jobs;
 *   `/api/jobs/:id`: one job; `/api/jobs/:id/object?key=`: one of its images;
 *   `/api/stream[?job=:id]`: server-sent events with both, every few seconds.
 * Read-only: nothing here writes.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import type { Logger } from '../observability/logger';
import type { DashboardData } from './dashboard-data';

/** A route table entry point: true when it answered the request. */
export type RouteHandler = (req: IncomingMessage, res: ServerResponse) => Promise<boolean>;

export interface DashboardRoutes {
  handle: RouteHandler;
  /** Ends the open event streams (the server's close waits for open connections). */
  close(): void;
}

export interface DashboardRoutesOptions {
  data: DashboardData;
  /** Bearer token the API requires; null only on a loopback host (see dashboardAccess). */
  token: string | null;
  log: Logger;
  /** Seconds between stream events. @default 2 */
  streamIntervalMs?: number;
}

const SECURITY_HEADERS = {
  'x-content-type-options': 'nosniff',
  // The page is opened once with ?token=: never send that URL on to anyone.
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cache-control': 'no-store',
};
const JOB_ID = /^[A-Za-z0-9_-]{1,64}$/;
const PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/** The static files, by URL path. uPlot's build ships in node_modules (no build step here). */
function staticFiles(): Record<string, { file: string; type: string }> {
  const own = staticDir();
  const uplot = dirname(require.resolve('uplot/dist/uPlot.iife.min.js'));
  return {
    '/dashboard': { file: join(own, 'index.html'), type: 'text/html; charset=utf-8' },
    '/dashboard/': { file: join(own, 'index.html'), type: 'text/html; charset=utf-8' },
    '/dashboard/app.js': { file: join(own, 'app.js'), type: 'text/javascript; charset=utf-8' },
    '/dashboard/app.css': { file: join(own, 'app.css'), type: 'text/css; charset=utf-8' },
    '/dashboard/vendor/uPlot.iife.min.js': { file: join(uplot, 'uPlot.iife.min.js'), type: 'text/javascript; charset=utf-8' },
    '/dashboard/vendor/uPlot.min.css': { file: join(uplot, 'uPlot.min.css'), type: 'text/css; charset=utf-8' },
  };
}

/** `static/` beside this module in the sources; from the build (dist/dashboard) the sources' copy (tsc copies no assets). */
export function staticDir(): string {
  const candidates = [join(__dirname, 'static'), resolve(__dirname, '../../src/dashboard/static')];
  const found = candidates.find((d) => existsSync(join(d, 'index.html')));
  if (!found) throw new Error(`The dashboard's static files are missing (looked in ${candidates.join(', ')}). Run the worker from a checkout of the repository.`);
  return found;
}

/** Constant-time comparison of the request's bearer token with ours (hashes first: equal lengths). */
export function bearerMatches(header: string | undefined, token: string): boolean {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  if (!m) return false;
  const a = createHash('sha256').update(m[1]).digest();
  const b = createHash('sha256').update(token).digest();
  return timingSafeEqual(a, b);
}

/** Whether a Host header names a loopback address (any port): 127.0.0.1 (127/8), localhost, [::1]. */
export function isLoopbackHostHeader(host: string | undefined): boolean {
  if (!host) return false;
  const name = host.startsWith('[') ? host.slice(0, host.indexOf(']') + 1) : host.replace(/:\d+$/, '');
  return name === 'localhost' || name === '[::1]' || /^127(\.\d{1,3}){3}$/.test(name);
}

export function createDashboardRoutes(opts: DashboardRoutesOptions): DashboardRoutes {
  const files = staticFiles();
  const cache = new Map<string, Buffer>();
  const streams = new Set<ServerResponse>();
  const interval = opts.streamIntervalMs ?? 2000;

  const json = (res: ServerResponse, status: number, body: unknown) => {
    res.writeHead(status, { ...SECURITY_HEADERS, 'content-type': 'application/json; charset=utf-8' }).end(JSON.stringify(body));
  };

  const authorized = (req: IncomingMessage, res: ServerResponse): boolean => {
    if (opts.token === null) {
      // No token is allowed on a loopback host only; a browser page on another site could still reach
      // 127.0.0.1 through a rebound DNS name, so the request must also name a loopback host.
      if (isLoopbackHostHeader(req.headers.host)) return true;
      json(res, 403, {
        error: 'forbidden',
        message: 'Without DASHBOARD_TOKEN the dashboard API answers only requests addressed to 127.0.0.1, localhost or [::1]. Open it at one of those, or set DASHBOARD_TOKEN.',
      });
      return false;
    }
    if (bearerMatches(req.headers.authorization, opts.token)) return true;
    res.setHeader('www-authenticate', 'Bearer realm="training-worker dashboard"');
    json(res, 401, {
      error: 'unauthorized',
      message: 'This API needs the header "Authorization: Bearer <DASHBOARD_TOKEN>". Open /dashboard?token=<DASHBOARD_TOKEN> once in the browser; the page keeps it for the session.',
    });
    return false;
  };

  const serveStatic = async (path: string, res: ServerResponse): Promise<boolean> => {
    const f = files[path];
    if (!f) return false;
    let body = cache.get(f.file);
    if (!body) {
      body = await readFile(f.file);
      cache.set(f.file, body);
    }
    res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': f.type, 'content-security-policy': PAGE_CSP, 'cache-control': 'no-cache' }).end(body);
    return true;
  };

  const stream = (req: IncomingMessage, res: ServerResponse, jobId: string | null) => {
    res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': 'text/event-stream; charset=utf-8', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    res.write('retry: 3000\n\n');
    streams.add(res);
    let logSeq: number | undefined;
    let busy = false;
    const send = async () => {
      if (busy || res.destroyed) return;
      busy = true;
      try {
        const overview = await opts.data.overview();
        res.write(`event: overview\ndata: ${JSON.stringify(overview)}\n\n`);
        if (jobId) {
          const job = await opts.data.job(jobId, { logSince: logSeq });
          if (job) {
            // After the first event only new live lines are sent (`log.append`); stored logs are sent whole.
            const append = logSeq !== undefined && job.log.source === 'live';
            if (job.log.seq !== null) logSeq = job.log.seq;
            res.write(`event: job\ndata: ${JSON.stringify({ ...job, log: { ...job.log, append } })}\n\n`);
          } else res.write(`event: job-missing\ndata: ${JSON.stringify({ id: jobId })}\n\n`);
        }
      } catch (err) {
        opts.log.warn({ err }, 'dashboard: stream update failed');
        res.write(`event: problem\ndata: ${JSON.stringify({ message: (err as Error).message })}\n\n`);
      } finally {
        busy = false;
      }
    };
    void send();
    const timer = setInterval(() => void send(), interval);
    const end = () => {
      clearInterval(timer);
      streams.delete(res);
    };
    req.on('close', end);
    res.on('close', end);
  };

  const handle: RouteHandler = async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://dashboard.local');
    const path = url.pathname;
    if (path === '/dashboard' || path.startsWith('/dashboard/')) {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        json(res, 405, { error: 'read-only' });
        return true;
      }
      if (await serveStatic(path, res)) return true;
      json(res, 404, { error: 'not-found' });
      return true;
    }
    if (!path.startsWith('/api/')) return false;
    if (req.method !== 'GET') {
      json(res, 405, { error: 'read-only', message: 'The dashboard API only reads (GET).' });
      return true;
    }
    if (!authorized(req, res)) return true;
    if (path === '/api/overview' || path === '/api/queue') {
      json(res, 200, await opts.data.overview());
      return true;
    }
    if (path === '/api/stream') {
      const job = url.searchParams.get('job');
      if (job !== null && !JOB_ID.test(job)) {
        json(res, 400, { error: 'bad-request', message: 'job must be a job id.' });
        return true;
      }
      stream(req, res, job);
      return true;
    }
    const m = /^\/api\/jobs\/([^/]+)(\/object)?$/.exec(path);
    if (m && !JOB_ID.test(m[1])) {
      json(res, 400, { error: 'bad-request', message: 'A job id is letters, digits, "_" and "-".' });
      return true;
    }
    if (m && !m[2]) {
      const since = url.searchParams.get('logSince');
      const job = await opts.data.job(m[1], { logSince: since !== null && /^\d+$/.test(since) ? Number(since) : undefined });
      if (!job) json(res, 404, { error: 'not-found', message: `No training job ${m[1]}.` });
      else json(res, 200, job);
      return true;
    }
    if (m && m[2]) {
      const key = url.searchParams.get('key') ?? '';
      const image = await opts.data.image(m[1], key);
      if (!image) {
        json(res, 404, { error: 'not-found', message: 'Not one of this job\'s recorded sample images.' });
        return true;
      }
      res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': image.contentType, 'content-length': String(image.bytes), 'cache-control': 'private, max-age=300' });
      image.body.on('error', () => res.destroy());
      image.body.pipe(res);
      return true;
    }
    json(res, 404, { error: 'not-found', message: 'Routes: /api/overview, /api/queue, /api/jobs/:id, /api/jobs/:id/object?key=, /api/stream?job=:id' });
    return true;
  };

  return {
    handle,
    close() {
      for (const res of streams) res.end();
      streams.clear();
    },
  };
}
