/**
 * The job repository's options: one resolved set per repository, fixed at
 * construction, bound by registerDb (no server: a client that never connects).
 */
import { MongoClient } from 'mongodb';
import { container } from 'tsyringe';
import { DEFAULT_MAX_ATTEMPTS, MONGO_DB, registerDb, resolveTrainingJobOptions, TRAINING_JOB_OPTIONS, TrainingJobRepository } from '../src';

describe('training job options', () => {
  const client = new MongoClient('mongodb://127.0.0.1:1', { serverSelectionTimeoutMS: 100 });
  const db = client.db('training_job_options_spec');
  afterAll(() => client.close());

  it('fills the documented defaults', () => {
    expect(resolveTrainingJobOptions()).toEqual({ claimStrategy: 'auto', maxAttempts: DEFAULT_MAX_ATTEMPTS, tokenStaleMs: 30_000, claimBatch: 128, candidateTtlMs: 5000 });
    expect(DEFAULT_MAX_ATTEMPTS).toBe(3);
    expect(resolveTrainingJobOptions({ candidateTtlMs: 0, maxAttempts: 5 })).toMatchObject({ candidateTtlMs: 0, maxAttempts: 5, claimBatch: 128 });
  });

  it('refuses bad and unknown options, naming each', () => {
    expect(() => resolveTrainingJobOptions({ maxAttempts: 0 })).toThrow(/maxAttempts: expected an integer >= 1/);
    expect(() => resolveTrainingJobOptions({ claimBatch: 1.5, tokenStaleMs: -1 })).toThrow(/claimBatch: .*tokenStaleMs: /);
    expect(() => resolveTrainingJobOptions({ claimStrategy: 'fastest' as never })).toThrow(/claimStrategy: expected one of auto/);
    expect(() => resolveTrainingJobOptions({ maxAttempt: 2 } as never)).toThrow(/maxAttempt: unknown option/);
  });

  it('new TrainingJobRepository(db[, options]): defaults without options, the given ones with', () => {
    expect(new TrainingJobRepository(db).maxAttempts).toBe(DEFAULT_MAX_ATTEMPTS);
    expect(new TrainingJobRepository(db, { maxAttempts: 7 }).maxAttempts).toBe(7);
    expect(() => new TrainingJobRepository(db, { maxAttempts: -1 })).toThrow(/Invalid training job options/);
    // A container holding only MONGO_DB builds one with every default.
    const bare = container.createChildContainer();
    bare.register(MONGO_DB, { useValue: db });
    expect(bare.resolve(TrainingJobRepository).maxAttempts).toBe(DEFAULT_MAX_ATTEMPTS);
  });

  it('registerDb binds the options the container\'s one repository is built with, and validates them at registration', () => {
    const c = container.createChildContainer();
    registerDb(c, { db, trainingJobs: { maxAttempts: 5 } });
    expect(c.resolve(TRAINING_JOB_OPTIONS)).toMatchObject({ maxAttempts: 5 });
    expect(c.resolve(TrainingJobRepository).maxAttempts).toBe(5);
    const plain = container.createChildContainer();
    registerDb(plain, { db });
    expect(plain.resolve(TrainingJobRepository).maxAttempts).toBe(DEFAULT_MAX_ATTEMPTS);
    const refused = container.createChildContainer();
    expect(() => registerDb(refused, { db, trainingJobs: { maxAttempts: 0 } })).toThrow(/maxAttempts/);
    expect(refused.isRegistered(MONGO_DB)).toBe(false);
  });
});
