/**
 * /healthz (process alive), /readyz (dependencies answer), /metrics (Prometheus),
 * and the routes mounted beside them (the dashboard: src/dashboard).
 */
import { createServer, IncomingMessage, Server, ServerResponse } from 'node:http';
import { WorkerMetrics } from './metrics';

/** A mounted route table: answers the request and returns true, or returns false to pass it on. */
export type MountedRoutes = (req: IncomingMessage, res: ServerResponse) => Promise<boolean>;

export interface HealthProbe {
  name: string;
  check(): Promise<void>;
}

export function startHttpServer(opts: {
  host: string;
  port: number;
  metrics: WorkerMetrics;
  probes: HealthProbe[];
  isStopping: () => boolean;
  routes?: MountedRoutes[];
}): Promise<Server> {
  const server = createServer(async (req, res) => {
    try {
      if (req.url === '/healthz') {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ ok: true }));
      } else if (req.url === '/readyz') {
        const results = await Promise.all(
          opts.probes.map(async (p) => {
            try {
              await p.check();
              return { name: p.name, ok: true };
            } catch (e) {
              return { name: p.name, ok: false, error: (e as Error).message };
            }
          }),
        );
        const ok = results.every((r) => r.ok) && !opts.isStopping();
        res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify({ ok, stopping: opts.isStopping(), checks: results }));
      } else if (req.url === '/metrics') {
        res.writeHead(200, { 'content-type': opts.metrics.registry.contentType }).end(await opts.metrics.registry.metrics());
      } else {
        for (const routes of opts.routes ?? []) if (await routes(req, res)) return;
        res.writeHead(404).end();
      }
    } catch (e) {
      if (res.headersSent) res.destroy();
      else res.writeHead(500).end(String((e as Error).message));
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve(server));
  });
}
