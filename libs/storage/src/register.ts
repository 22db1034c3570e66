import type { DependencyContainer } from 'tsyringe';
import { S3_CLIENT, createS3Client } from './client';
import { STORAGE_CONFIG, loadStorageConfig, type R2Config } from './config';

/**
 * Binds STORAGE_CONFIG and S3_CLIENT in a container (the classes are
 * @injectable and resolve from there). Pass a config to skip the env.
 */
export function registerStorage(container: DependencyContainer, config: R2Config = loadStorageConfig(process.env)): R2Config {
  container.register(STORAGE_CONFIG, { useValue: config });
  container.register(S3_CLIENT, { useValue: createS3Client(config) });
  return config;
}
