import { InjectionToken } from 'tsyringe';
import type { WorkerConfig } from './config/worker-config';
import type { Logger } from './observability/logger';

export const WORKER_CONFIG = Symbol('WorkerConfig') as InjectionToken<WorkerConfig>;
export const ROOT_LOGGER = Symbol('RootLogger') as InjectionToken<Logger>;
