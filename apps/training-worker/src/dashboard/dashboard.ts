/**
 * The operator's dashboard, wired from a worker's composition: its data
 * sources, the attempt-activity listener that feeds the live log and the loss series, and
 * the routes the worker's HTTP server mounts (main.ts). Returns null when the
 * configuration leaves it off (then says why, once).
 */
import type { DependencyContainer } from 'tsyringe';
import { MONGO_DB, TrainingAttemptRepository, TrainingJobRepository } from '@stationthis/db';
import { GPU_INVENTORY } from '@stationthis/docker';
import { PointsLedger } from '@stationthis/points';
import { ObjectStorage } from '@stationthis/storage';
import type { WorkerConfig } from '../config/worker-config';
import type { Logger } from '../observability/logger';
import { DashboardData } from './dashboard-data';
import { createDashboardRoutes, type DashboardRoutes } from './dashboard-routes';
import { JobActivity } from './job-activity';
import { tapJobProgress } from './progress-tap';
import { AttemptActivity } from '../pipeline/attempt-activity';

export interface Dashboard extends DashboardRoutes {
  data: DashboardData;
  activity: JobActivity;
}

export function createDashboard(
  container: DependencyContainer,
  config: Pick<WorkerConfig, 'workerId' | 'environment' | 'maxAttempts' | 'dashboard' | 'http'>,
  log: Logger,
  opts: { streamIntervalMs?: number } = {},
): Dashboard | null {
  if (!config.dashboard.enabled) {
    log.warn(`dashboard not served: ${config.dashboard.disabledBecause}`);
    return null;
  }
  const activity = new JobActivity();
  const jobs = container.resolve(TrainingJobRepository);
  const attempts = container.resolve(TrainingAttemptRepository);
  const untap = tapJobProgress(container.resolve(AttemptActivity), attempts, activity, log);
  const data = new DashboardData({
    db: container.resolve(MONGO_DB),
    jobs,
    attempts,
    ledger: container.resolve(PointsLedger),
    storage: container.resolve(ObjectStorage),
    inventory: container.resolve(GPU_INVENTORY),
    activity,
    config,
  });
  const routes = createDashboardRoutes({ data, token: config.dashboard.token, log, streamIntervalMs: opts.streamIntervalMs });
  // The token itself is never logged; only whether one guards the API.
  log.info({ path: '/dashboard', auth: config.dashboard.token ? 'bearer token (DASHBOARD_TOKEN)' : 'none (loopback only)' }, 'dashboard served on the HTTP port');
  return {
    ...routes,
    data,
    activity,
    close() {
      routes.close();
      untap();
    },
  };
}
