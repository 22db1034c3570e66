import { ConfigError, loadWorkerConfig } from './worker-config';

describe('worker configuration', () => {
  it('defaults to the local services with no environment', () => {
    const c = loadWorkerConfig({});
    expect(c.mongoUrl).toBe('mongodb://127.0.0.1:27017');
    expect(c.mongoDbName).toBe('noema');
    expect(c.environment).toBe('development');
    expect(c.leaseMs).toBe(60_000);
    expect(c.imageRegistry).toBe('127.0.0.1:5000');
  });

  it('reports every bad variable at once, by name', () => {
    let err: unknown;
    try {
      loadWorkerConfig({ MONGO_URL: 'postgres://x', WORKER_LEASE_MS: '5', TRAINING_ENVIRONMENT: 'staging' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const msg = (err as Error).message;
    expect(msg).toMatch(/MONGO_URL/);
    expect(msg).toMatch(/WORKER_LEASE_MS/);
    expect(msg).toMatch(/TRAINING_ENVIRONMENT/);
  });

  it('parses booleans and shares', () => {
    const c = loadWorkerConfig({ WORKER_EXIT_WHEN_IDLE: 'true', DATASET_CREATOR_SHARE: '0.1' });
    expect(c.exitWhenIdle).toBe(true);
    expect(c.shares.datasetCreator).toBe(0.1);
  });

  it('keeps CPU test runs off unless asked, and wants an absolute local weights folder', () => {
    expect(loadWorkerConfig({}).cpuTestRuns).toBe(false);
    expect(loadWorkerConfig({}).weightsLocalDir).toBeUndefined();
    const c = loadWorkerConfig({ WORKER_CPU_TEST_RUNS: '1', WEIGHTS_LOCAL_DIR: '/srv/models' });
    expect(c.cpuTestRuns).toBe(true);
    expect(c.weightsLocalDir).toBe('/srv/models');
    expect(() => loadWorkerConfig({ WEIGHTS_LOCAL_DIR: 'models' })).toThrow(/WEIGHTS_LOCAL_DIR: must be an absolute path/);
  });

  it('enables operator-only recipes only by name, and refuses an unknown id at start-up', () => {
    expect(loadWorkerConfig({}).recipesEnabled).toEqual([]);
    expect(loadWorkerConfig({ RECIPES_ENABLED: ' flux2-klein-lora , ' }).recipesEnabled).toEqual(['flux2-klein-lora']);
    expect(() => loadWorkerConfig({ RECIPES_ENABLED: 'flux2-klein-lora,qwen-image-lora' })).toThrow(/RECIPES_ENABLED: unknown recipe id "qwen-image-lora"; valid ids: /);
  });
});
