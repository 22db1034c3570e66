/**
 * What `job.pipeline` holds: written step by step through fenced writes, read
 * on resume and by recovery. The one declaration of that shape.
 */
import type { TrainingJobDoc } from '@stationthis/db';

export type SettleOutcome = 'completed' | 'failed' | 'cancelled';

export interface SettleIntent {
  outcome: SettleOutcome;
  usedPoints: number;
  reason: string;
}

export interface UploadState {
  loraUrl: string;
  loraKey: string;
  sha256: string;
  autov2: string;
  bytes: number;
  sampleUrls: string[];
  logUrl?: string;
  configUrl?: string;
}

export interface RecordedQuote {
  points: number;
  estimatedSeconds: number;
  gpuUsdPerHour: number;
  /** Absent on quotes recorded before recipes 0.3.0 (the fee was 0.2 then too). */
  platformFee?: number;
}

export interface ContainerRun {
  step: string;
  startedAt: Date;
  endedAt: Date;
}

export interface PipelineState {
  recipeId?: string;
  recipeVersion?: string;
  /** Fixed at the first attempt, reused by every later one. */
  quote?: RecordedQuote;
  charged?: boolean;
  slug?: string;
  trainSeconds?: number;
  /** Wall-clock spans of each container run (benchmarks: orchestration overhead, GPU idle gaps). */
  containerRuns?: ContainerRun[];
  upload?: UploadState;
  loraModelId?: string;
  settleIntent?: SettleIntent;
  settled?: boolean;
}

/** The job's pipeline state (empty for a job no attempt has touched). */
export function pipelineStateOf(job: Pick<TrainingJobDoc, 'pipeline'>): PipelineState {
  return (job.pipeline ?? {}) as PipelineState;
}
