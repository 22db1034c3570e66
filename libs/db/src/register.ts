import type { Db } from 'mongodb';
import { Lifecycle, type DependencyContainer, type InjectionToken } from 'tsyringe';
import { DatasetRepository } from './dataset-repository';
import { LoraModelRepository } from './lora-model-repository';
import { MONGO_DB } from './mongo';
import { TrainingAttemptRepository } from './training-attempt-repository';
import { TrainingJobRepository } from './training-job-repository';
import { resolveTrainingJobOptions, TRAINING_JOB_OPTIONS, type TrainingJobRepositoryOptions } from './training-job-options';
import { UserCoreAccounts, UserCoreReader } from './user-core-reader';

export interface RegisterDbOptions {
  /** The platform database (from connectMongo); the caller owns its client and closes it. */
  db: Db;
  /**
   * The job repository's options (the worker passes WORKER_MAX_ATTEMPTS as
   * `maxAttempts`), validated here once: a bad value fails registration, not
   * the first recovery.
   * @default {} (every TrainingJobRepositoryOptions default)
   */
  trainingJobs?: TrainingJobRepositoryOptions;
}

/**
 * Binds this library into a composition root, each with its lifetime:
 * - MONGO_DB: the given Db; TRAINING_JOB_OPTIONS: the validated options (values).
 * - TrainingJobRepository: singleton per container. It caches the detected
 *   claim strategy and claim candidates; one per process keeps one cache.
 * - TrainingAttemptRepository, DatasetRepository, LoraModelRepository,
 *   UserCoreReader: singletons per container. Stateless (collection handles
 *   only); one instance is enough.
 * - UserCoreAccounts: transient. Only the operator CLI's seed-account writes
 *   accounts, once per command; nothing should hold on to it.
 * Throws if the library was already registered in this container.
 */
export function registerDb(container: DependencyContainer, options: RegisterDbOptions): void {
  if (!options?.db || typeof options.db.collection !== 'function') {
    throw new TypeError('registerDb needs { db }: the Db returned by connectMongo(url, dbName).');
  }
  // Validated before anything is bound: a bad option leaves the container untouched.
  const trainingJobOptions = resolveTrainingJobOptions(options.trainingJobs);
  const tokens = [MONGO_DB, TRAINING_JOB_OPTIONS, TrainingJobRepository, TrainingAttemptRepository, DatasetRepository, LoraModelRepository, UserCoreReader, UserCoreAccounts];
  for (const token of tokens as Array<InjectionToken<unknown>>) {
    if (container.isRegistered(token)) {
      const name = typeof token === 'function' ? token.name : String(token);
      throw new Error(`registerDb: ${name} is already registered in this container; register the db lib once per composition root.`);
    }
  }
  container.register(MONGO_DB, { useValue: options.db });
  container.register(TRAINING_JOB_OPTIONS, { useValue: trainingJobOptions });
  const singleton = { lifecycle: Lifecycle.ContainerScoped } as const;
  container.register(TrainingJobRepository, { useClass: TrainingJobRepository }, singleton);
  container.register(TrainingAttemptRepository, { useClass: TrainingAttemptRepository }, singleton);
  container.register(DatasetRepository, { useClass: DatasetRepository }, singleton);
  container.register(LoraModelRepository, { useClass: LoraModelRepository }, singleton);
  container.register(UserCoreReader, { useClass: UserCoreReader }, singleton);
  container.register(UserCoreAccounts, { useClass: UserCoreAccounts }, { lifecycle: Lifecycle.Transient });
}
