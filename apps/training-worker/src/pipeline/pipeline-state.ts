/**
 * What one platform attempt's pipeline records, step by step, through fenced
 * writes: the shape is libs/db's attempt record (`trainingJobAttempts`, one
 * per job and platform attempt), never the job document's `pipeline` field,
 * which any client can write (ADR 0002, "Attempt records").
 */
export type { AttemptState as PipelineState, ContainerRun, UploadState } from '@stationthis/db';
