/**
 * The job lifecycle in the platform UI's vocabulary (TrainingStudio's active
 * set is QUEUED, PROVISIONING, RUNNING, FINALIZING). This module is the one
 * place where allowed transitions are defined; the repository filters every
 * status write on `status ∈ allowedFrom(to)`, so the check is also atomic.
 */
export const JOB_STATUSES = [
  'QUEUED',
  'PROVISIONING',
  'RUNNING',
  'FINALIZING',
  'COMPLETED',
  'FAILED',
  'CANCELLED',
] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];

export const TERMINAL_STATUSES: readonly JobStatus[] = ['COMPLETED', 'FAILED', 'CANCELLED'];
/** Statuses in which a worker holds a lease. */
export const LEASED_STATUSES: readonly JobStatus[] = ['PROVISIONING', 'RUNNING', 'FINALIZING'];
/** What the platform UI shows as active. */
export const ACTIVE_STATUSES: readonly JobStatus[] = ['QUEUED', 'PROVISIONING', 'RUNNING', 'FINALIZING'];

const TRANSITIONS: Readonly<Record<JobStatus, readonly JobStatus[]>> = {
  // claim; cancel before start; insufficient balance or bad input found by an admin tool
  QUEUED: ['PROVISIONING', 'CANCELLED', 'FAILED'],
  // QUEUED again = lease released on shutdown or recovered after expiry
  PROVISIONING: ['RUNNING', 'FAILED', 'CANCELLED', 'QUEUED'],
  RUNNING: ['FINALIZING', 'FAILED', 'CANCELLED', 'QUEUED'],
  FINALIZING: ['COMPLETED', 'FAILED', 'CANCELLED', 'QUEUED'],
  COMPLETED: [],
  // the platform's user "retry" (TrainingService.js:157-196) re-queues a failed job
  FAILED: ['QUEUED'],
  CANCELLED: [],
};

export function isJobStatus(value: unknown): value is JobStatus {
  return typeof value === 'string' && (JOB_STATUSES as readonly string[]).includes(value);
}

export function isTerminal(status: JobStatus): boolean {
  return TERMINAL_STATUSES.includes(status);
}

export function canTransition(from: JobStatus, to: JobStatus): boolean {
  return TRANSITIONS[from]?.includes(to) ?? false;
}

export class InvalidTransitionError extends Error {
  constructor(
    readonly from: string,
    readonly to: string,
  ) {
    super(
      `A training job cannot move from ${from} to ${to}. Allowed from ${from}: ` +
        `${isJobStatus(from) ? TRANSITIONS[from].join(', ') || 'nothing (terminal)' : 'see the table in job-status.ts'}.`,
    );
    this.name = 'InvalidTransitionError';
  }
}

export function assertTransition(from: JobStatus, to: JobStatus): void {
  if (!canTransition(from, to)) throw new InvalidTransitionError(from, to);
}

/** Every status from which `to` may be reached: the filter that makes a status write atomic and valid. */
export function allowedFrom(to: JobStatus): JobStatus[] {
  return JOB_STATUSES.filter((from) => canTransition(from, to));
}
