/**
 * Composition root: the only place that knows every library. Each adapter
 * library owns its port and token; this file binds them to one process's
 * configuration and shared clients.
 */
import 'reflect-metadata';
import { container as rootContainer, DependencyContainer, instanceCachingFactory, Lifecycle } from 'tsyringe';
import type { Db, MongoClient } from 'mongodb';
import { connectMongo, DatasetRepository, JobEventRecorder, JobEventStore, LoraModelRepository, registerDb, TrainingAttemptRepository, TrainingJobRepository, UserCoreReader } from '@stationthis/db';
import { PointsLedger, POINTS_LEDGER, registerPoints } from '@stationthis/points';
import { loadStorageConfig, registerStorage, STORAGE_BINDINGS } from '@stationthis/storage';
import { CONTAINER_RUNTIME, GpuAllocator, registerDocker, type NvidiaSmiRunner } from '@stationthis/docker';
import { ROOT_LOGGER, WORKER_CONFIG } from './tokens';
import type { WorkerConfig } from './config/worker-config';
import { createLogger, Logger, redactUrl } from './observability/logger';
import { WorkerMetrics } from './observability/metrics';
import { JOB_EVENTS_CONFIG } from './events/tokens';
import { loadJobEventsConfig } from './events/webhook-config';
import { JobEventsService } from './events/job-events-service';

export interface Composition {
  container: DependencyContainer;
  mongo: MongoClient;
  log: Logger;
  close(): Promise<void>;
}

export async function compose(config: WorkerConfig, env: NodeJS.ProcessEnv = process.env, log = createLogger(config.logLevel)): Promise<Composition> {
  const container = rootContainer.createChildContainer();
  container.register(WORKER_CONFIG, { useValue: config });
  container.register(ROOT_LOGGER, { useValue: log });
  container.register(WorkerMetrics, { useFactory: instanceCachingFactory(() => new WorkerMetrics()) });

  let connected: Awaited<ReturnType<typeof connectMongo>>;
  try {
    connected = await connectMongo(config.mongoUrl, config.mongoDbName);
  } catch (e) {
    throw new Error(`Cannot connect to MongoDB at ${redactUrl(config.mongoUrl)}: ${(e as Error).message}. Start it with tools/services/services.sh up, or set MONGO_URL.`, {
      cause: e,
    });
  }
  const mongo: MongoClient = connected.client;
  await registerWorkerLibraries(container, { config, env, db: connected.db });

  assertBindings(container);
  return {
    container,
    mongo,
    log,
    async close() {
      await mongo.close();
      container.dispose();
    },
  };
}

export interface WorkerLibrariesOptions {
  config: WorkerConfig;
  env: NodeJS.ProcessEnv;
  /** The platform database (from connectMongo); the caller owns its client. */
  db: Db;
  /** nvidia-smi, replaceable in tests. @default libs/docker's runner */
  smi?: NvidiaSmiRunner;
}

/**
 * Binds every adapter library through its own register function (each throws
 * if registered twice) and applies the worker's settings to them. Separate from
 * `compose` so the bindings can be checked without connecting to anything.
 */
export async function registerWorkerLibraries(container: DependencyContainer, { config, env, db, smi }: WorkerLibrariesOptions): Promise<void> {
  // Repositories, attempt records and the points ledger share the one platform database.
  // WORKER_MAX_ATTEMPTS reaches the job lifecycle here and nowhere else (a job document's maxAttempts is never read).
  registerDb(container, { db, trainingJobs: { maxAttempts: config.maxAttempts } });
  registerPoints(container, { db });

  const storageConfig = loadStorageConfig({ ...env, WEIGHT_CACHE_DIR: env.WEIGHT_CACHE_DIR ?? `${config.stateDir}/weights` });
  registerStorage(container, storageConfig);

  // Docker client, hardened runtime, GPU inventory (nvidia-smi or GPU_DEVICES/CPU_SLOTS) and allocator.
  await registerDocker(container, env, smi);

  registerJobEvents(container, env);
}

/**
 * The job event outbox and webhooks (ADR 0010): one store and one recorder per
 * container (the store keeps this process's append order and known head), the
 * job repository's write observer feeding the recorder, and the webhook
 * settings from the environment (JOB_EVENTS=off turns all of it off).
 */
function registerJobEvents(container: DependencyContainer, env: NodeJS.ProcessEnv): void {
  const eventsConfig = loadJobEventsConfig(env);
  container.register(JOB_EVENTS_CONFIG, { useValue: eventsConfig });
  const singleton = { lifecycle: Lifecycle.ContainerScoped } as const;
  container.register(JobEventStore, { useClass: JobEventStore }, singleton);
  container.register(JobEventRecorder, { useClass: JobEventRecorder }, singleton);
  container.register(JobEventsService, { useClass: JobEventsService }, singleton);
  if (!eventsConfig.enabled) return;
  // Metrics and logs of the recorder are bound by JobEventsService (it has them); this binding needs only the db.
  const recorder = container.resolve(JobEventRecorder);
  container.resolve(TrainingJobRepository).observeWrites((job, kind) => recorder.onJobWritten(job, kind), JobEventRecorder.observedFields);
}

export async function ensureIndexes(c: DependencyContainer): Promise<void> {
  await c.resolve(TrainingJobRepository).ensureIndexes();
  await c.resolve(TrainingAttemptRepository).ensureIndexes();
  await c.resolve(LoraModelRepository).ensureIndexes();
  await c.resolve(PointsLedger).ensureIndexes();
  await c.resolve(JobEventRecorder).ensureIndexes();
}

/** Every port the worker resolves, with the library call that binds it (named in the start-up error). */
export const REQUIRED_BINDINGS: ReadonlyArray<readonly [token: unknown, providedBy: string]> = [
  [TrainingJobRepository, 'libs/db registerDb()'],
  [TrainingAttemptRepository, 'libs/db registerDb()'],
  [DatasetRepository, 'libs/db registerDb()'],
  [LoraModelRepository, 'libs/db registerDb()'],
  [UserCoreReader, 'libs/db registerDb()'],
  [PointsLedger, 'libs/points registerPoints()'],
  [POINTS_LEDGER, 'libs/points registerPoints()'],
  ...STORAGE_BINDINGS.map(([token]) => [token, 'libs/storage registerStorage()'] as const),
  [CONTAINER_RUNTIME, 'libs/docker registerDocker()'],
  [GpuAllocator, 'libs/docker registerDocker()'],
];

/**
 * Resolve every required port once at start, so a missing or broken binding
 * fails the process before it claims a job, naming the library that should
 * provide it, instead of failing the first attempt halfway.
 */
export function assertBindings(c: DependencyContainer): void {
  const problems: string[] = [];
  for (const [token, providedBy] of REQUIRED_BINDINGS) {
    try {
      c.resolve(token as never);
    } catch (e) {
      const name = typeof token === 'function' ? token.name : typeof token === 'symbol' ? (token.description ?? String(token)) : String(token);
      problems.push(`  - ${name} (from ${providedBy}): ${(e as Error).message.split('\n')[0]}`);
    }
  }
  if (problems.length) throw new Error(`The worker's composition is incomplete:\n${problems.join('\n')}\nRegister the libraries above in composition.ts.`);
}
