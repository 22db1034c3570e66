import 'reflect-metadata';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { container, type DependencyContainer } from 'tsyringe';
import { MongoClient } from 'mongodb';
import { TrainingAttemptRepository, TrainingJobRepository } from '@stationthis/db';
import { PointsLedger, POINTS_LEDGER } from '@stationthis/points';
import { DATASET_FETCH_PORT, DatasetFetcher, MODEL_UPLOAD_PORT, ModelUploader, STORAGE_BINDINGS, WEIGHT_CACHE_PORT, WeightCache } from '@stationthis/storage';
import { assertBindings, REQUIRED_BINDINGS, registerWorkerLibraries } from './composition';
import { loadWorkerConfig } from './config/worker-config';

describe('assertBindings', () => {
  it('fails at start naming each missing port and the library that provides it', () => {
    const empty = container.createChildContainer();
    let message = '';
    try {
      assertBindings(empty);
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toMatch(/composition is incomplete/);
    expect(message).toMatch(/TrainingJobRepository \(from libs\/db registerDb\(\)\)/);
    expect(message).toMatch(/TrainingAttemptRepository \(from libs\/db registerDb\(\)\)/);
    expect(message).toMatch(/PointsLedgerPort \(from libs\/points registerPoints\(\)\)/);
    expect(message).toMatch(/WeightCache \(from libs\/storage registerStorage\(\)\)/);
    expect(message).toMatch(/ModelUploadPort \(from libs\/storage registerStorage\(\)\)/);
    expect(message).toMatch(/from libs\/docker registerDocker\(\)/);
  });

  it('requires every port the pipeline injects, and everything registerStorage says it binds', () => {
    const required = REQUIRED_BINDINGS.map(([token]) => token);
    for (const token of [TrainingJobRepository, TrainingAttemptRepository, PointsLedger, POINTS_LEDGER, MODEL_UPLOAD_PORT, DATASET_FETCH_PORT, WEIGHT_CACHE_PORT]) {
      expect(required).toContain(token);
    }
    for (const [token] of STORAGE_BINDINGS) expect(required).toContain(token);
  });
});

describe('registerWorkerLibraries', () => {
  // A Db handle of a client that never connects: binding and resolving touch no server.
  const client = new MongoClient('mongodb://127.0.0.1:1', { serverSelectionTimeoutMS: 100 });
  const db = client.db('composition_spec');
  const noGpu = async () => null;
  let stateDir: string;
  let c: DependencyContainer;

  beforeEach(() => {
    stateDir = mkdtempSync(join(tmpdir(), 'st-composition-'));
    c = container.createChildContainer();
  });
  afterEach(() => rmSync(stateDir, { recursive: true, force: true }));
  afterAll(() => client.close());

  const env = () => ({ WORKER_STATE_DIR: stateDir, WORKER_MAX_ATTEMPTS: '5', CPU_SLOTS: '1', GPU_DEVICES: '' });

  it('binds every required port through the libraries own register functions', async () => {
    await registerWorkerLibraries(c, { config: loadWorkerConfig(env()), env: env(), db, smi: noGpu });
    expect(() => assertBindings(c)).not.toThrow();
    // The port and the class are one instance, so the maintenance's replay and the steps' charges share one ledger.
    expect(c.resolve(POINTS_LEDGER)).toBe(c.resolve(PointsLedger));
    expect(c.resolve(MODEL_UPLOAD_PORT)).toBe(c.resolve(ModelUploader));
    expect(c.resolve(DATASET_FETCH_PORT)).toBe(c.resolve(DatasetFetcher));
    expect(c.resolve(WEIGHT_CACHE_PORT)).toBe(c.resolve(WeightCache));
    expect(c.resolve(TrainingJobRepository)).toBe(c.resolve(TrainingJobRepository));
  });

  it('applies WORKER_MAX_ATTEMPTS to the one job repository', async () => {
    await registerWorkerLibraries(c, { config: loadWorkerConfig(env()), env: env(), db, smi: noGpu });
    const options = (c.resolve(TrainingJobRepository) as unknown as { options: { maxAttempts?: number } }).options;
    expect(options.maxAttempts).toBe(5);
  });

  it('refuses a second registration instead of silently replacing the bindings', async () => {
    await registerWorkerLibraries(c, { config: loadWorkerConfig(env()), env: env(), db, smi: noGpu });
    await expect(registerWorkerLibraries(c, { config: loadWorkerConfig(env()), env: env(), db, smi: noGpu })).rejects.toThrow(/already registered/);
  });
});
