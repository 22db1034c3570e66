/**
 * training-worker entry point (`nx serve training-worker`).
 * With no environment set it uses the local services from tools/services.
 */
import 'reflect-metadata';
import { ConfigError, loadWorkerConfig } from './config/worker-config';
import { compose, ensureIndexes } from './composition';
import { createLogger, redactUrl } from './observability/logger';
import { startHttpServer } from './observability/http-server';
import { WorkerMetrics } from './observability/metrics';
import { TrainingWorker } from './training-worker';
import { createDashboard } from './dashboard/dashboard';

async function main(): Promise<number> {
  let config;
  try {
    config = loadWorkerConfig();
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n`);
    return e instanceof ConfigError ? 78 : 1;
  }
  const log = createLogger(config.logLevel);
  log.info({ mongo: redactUrl(config.mongoUrl), db: config.mongoDbName, workerId: config.workerId, stateDir: config.stateDir }, 'starting training worker');
  const app = await compose(config, process.env, log);
  await ensureIndexes(app.container);
  const worker = app.container.resolve(TrainingWorker);
  const metrics = app.container.resolve(WorkerMetrics);
  // Before the first claim: the dashboard's activity listener sees every job from its start.
  const dashboard = createDashboard(app.container, config, log);
  const server = await startHttpServer({
    host: config.http.host,
    port: config.http.port,
    metrics,
    isStopping: () => worker.isStopping,
    probes: [{ name: 'mongo', check: async () => void (await app.mongo.db('admin').command({ ping: 1 })) }],
    routes: dashboard ? [dashboard.handle] : [],
  }).catch((e) => {
    log.warn({ err: e }, `metrics endpoint and dashboard disabled: cannot listen on ${config.http.host}:${config.http.port}`);
    return null;
  });
  let signals = 0;
  const onSignal = (sig: string) => {
    signals++;
    if (signals > 1) {
      log.warn(`second ${sig}: exiting now; leases expire and recovery takes over`);
      process.exit(130);
    }
    log.info(`${sig} received: graceful shutdown`);
    void worker.stop();
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
  await worker.run();
  dashboard?.close();
  server?.close();
  await app.close();
  log.info({ processed: worker.jobsProcessed }, 'worker stopped');
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`training-worker failed: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);
