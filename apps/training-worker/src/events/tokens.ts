import type { InjectionToken } from 'tsyringe';
import type { JobEventsConfig } from './webhook-config';

export const JOB_EVENTS_CONFIG = Symbol('JobEventsConfig') as InjectionToken<JobEventsConfig>;
