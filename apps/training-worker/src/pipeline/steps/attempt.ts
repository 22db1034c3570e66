/**
 * What every step of one attempt works on: the context (lease, signal, log),
 * the attempt record it owns, the fenced writer, the typed request, the
 * recorded state (from the attempt record, never from the job document), and,
 * after the prepare step, the validated job.
 */
import type { AttemptRef, DatasetRepository } from '@stationthis/db';
import type { ControlImagesNeed, ControlPairing, Quote, Recipe } from '@stationthis/recipes';
import type { AttemptWriter } from '../attempt-writer';
import type { JobContext } from '../job-context';
import type { PipelineState } from '../pipeline-state';
import type { TrainingRequest } from '../training-request';

export interface Attempt {
  ctx: JobContext;
  /** The attempt record this claim owns: the job and its platform attempt (the job's retryCount). */
  ref: AttemptRef;
  writer: AttemptWriter;
  request: TrainingRequest;
  /** The attempt record's state, mutated as steps record progress (each change also written through `writer`). */
  state: PipelineState;
  /** When this claim's pipeline started (ms since the epoch): the resume's time-to-first-step is measured from it. */
  openedAt?: number;
  /**
   * Training seconds of earlier claims that this claim builds on: the seconds
   * recorded with the engine state it resumed from (0 when it trains from step
   * 0). Time an earlier claim spent after its last stored state is redone
   * here and never billed twice.
   */
  priorTrainSeconds?: number;
  /** When this claim's training started (ms since the epoch); set while it trains. */
  trainStartedAt?: number;
}

/** The job after validation: the recipe, typed parameters, sanitized names, the dataset and the quote. */
export interface Prepared {
  recipe: Recipe;
  parameters: Record<string, unknown>;
  triggerWord: string;
  outputName: string;
  dataset: NonNullable<Awaited<ReturnType<DatasetRepository['findById']>>>;
  quote: Quote;
  /**
   * Who pays, from the platform's account records (`userCore`), never from the
   * job's fields: the charge and refunds must use these, not the request's.
   */
  payer: Payer;
  /** Lines for the job log: the job runs (e.g. fewer images than recommended). */
  warnings: string[];
  /** Control images the recipe needs beside the dataset (FLUX.1 Kontext), with the pairs checked before the charge. */
  controls?: { need: ControlImagesNeed; pairing?: ControlPairing };
}

/** The paying account and the wallet its points are keyed on, as userCore links them. */
export interface Payer {
  masterAccountId: string;
  /** Lower-case; the job's wallet when it is one of the account's, else the account's primary wallet. */
  walletAddress: string | null;
}

/** A base-model file held in the weight cache for this attempt. */
export interface WeightHandle {
  role: string;
  fileName: string;
  path: string;
  release(): Promise<void>;
}
