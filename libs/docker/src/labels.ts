/**
 * Label keys stamped on every container this library creates. They let a
 * worker find its own containers again after a crash (see `sweepOrphans`).
 */
export const LABELS = {
  /** Constant marker: `ai.stationthis.managed=true` on everything we create. */
  managed: 'ai.stationthis.managed',
  jobId: 'ai.stationthis.job-id',
  attemptId: 'ai.stationthis.attempt-id',
  workerId: 'ai.stationthis.worker-id',
  /**
   * Which job store the attempt belongs to (e.g. `<database>/<environment>`).
   * Workers sharing one Docker engine but different job stores must not judge
   * each other's containers; a sweep only considers containers of its scope.
   */
  scope: 'ai.stationthis.scope',
  /** Pipeline step inside the attempt (e.g. `cache-latents`, `train`), when given. */
  step: 'ai.stationthis.step',
  /** ISO time the container was created, for operators reading `docker ps`. */
  createdAt: 'ai.stationthis.created-at',
  /** Present only when a recipe opted into networking; holds its stated reason. */
  networkReason: 'ai.stationthis.network-reason',
} as const;

export const MANAGED_LABEL_VALUE = 'true';

/** `docker ps --filter` value selecting every container this library manages. */
export const MANAGED_LABEL_FILTER = `${LABELS.managed}=${MANAGED_LABEL_VALUE}`;
