/**
 * Composition root: the only place that knows every library. Each adapter
 * library owns its port and token; this file binds them to one process's
 * configuration and shared clients.
 */
import 'reflect-metadata';
import { container as rootContainer, DependencyContainer, instanceCachingFactory } from 'tsyringe';
import { MongoClient } from 'mongodb';
import { connectMongo, DatasetRepository, LoraModelRepository, MONGO_DB, TrainingJobRepository, UserCoreReader } from '@stationthis/db';
import { PointsLedger, POINTS_DB } from '@stationthis/points';
import { loadStorageConfig, registerStorage } from '@stationthis/storage';
import { registerDocker } from '@stationthis/docker';
import { ROOT_LOGGER, WORKER_CONFIG } from './tokens';
import type { WorkerConfig } from './config/worker-config';
import { createLogger, Logger, redactUrl } from './observability/logger';
import { WorkerMetrics } from './observability/metrics';

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

  let mongo: MongoClient;
  try {
    const connected = await connectMongo(config.mongoUrl, config.mongoDbName);
    mongo = connected.client;
    container.register(MONGO_DB, { useValue: connected.db });
    container.register(POINTS_DB, { useValue: connected.db });
  } catch (e) {
    throw new Error(`Cannot connect to MongoDB at ${redactUrl(config.mongoUrl)}: ${(e as Error).message}. Start it with tools/services/services.sh up, or set MONGO_URL.`);
  }

  const storageConfig = loadStorageConfig({ ...env, WEIGHT_CACHE_DIR: env.WEIGHT_CACHE_DIR ?? `${config.stateDir}/weights` });
  registerStorage(container, storageConfig);

  // Docker client, hardened runtime, GPU inventory (nvidia-smi or GPU_DEVICES/CPU_SLOTS) and allocator.
  await registerDocker(container, env);

  for (const singleton of [TrainingJobRepository, DatasetRepository, LoraModelRepository, UserCoreReader, PointsLedger]) {
    container.registerSingleton(singleton as never);
  }

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

export async function ensureIndexes(c: DependencyContainer): Promise<void> {
  await c.resolve(TrainingJobRepository).ensureIndexes();
  await c.resolve(LoraModelRepository).ensureIndexes();
  await c.resolve(PointsLedger).ensureIndexes();
}
