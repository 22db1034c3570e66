/**
 * The one mapper from a platform `trainingJobs` document to a typed training
 * request. The platform's documents carry ids as ObjectId or string, optional
 * and legacy fields (`userId` beside `ownerAccountId`, `triggerWords[]` beside
 * `triggerWord`, `modelType` or `baseModel`): every coercion lives here, so
 * the steps read typed fields only.
 */
import type { TrainingJobDoc } from '@stationthis/db';
import { PLATFORM_FEE, jobParametersFromPlatformDoc, sanitizeTriggerWord, type Quote } from '@stationthis/recipes';

export interface TrainingRequest {
  jobId: string;
  /** The model type the user picked ('SDXL', 'FLUX', 'WAN', ...), as the platform wrote it. */
  modelType: string;
  /**
   * The owner's master account id (hex string) as the job names it: a claim
   * the prepare step checks against the platform's account records
   * (`userCore`) before anything is charged, never trusted on its own.
   */
  ownerAccountId: string;
  /** `userId` as written (the platform writes the same masterAccountId into both). */
  userId?: string;
  /** As written; the prepare step accepts it only when it is one of the account's wallets. */
  walletAddress?: string;
  datasetId?: string;
  captionSetId?: string;
  /** The control set (an embellishment id) of a KONTEXT concept job; unset: the platform's choice (first completed). */
  controlSetId?: string;
  /** The trigger word as written (sanitized by the prepare step). */
  rawTriggerWord: string;
  /** The model name as written, if any. */
  rawModelName?: string;
  description?: string;
  /** Raw parameters in the platform's fields, for the recipe to validate. */
  rawParameters: Record<string, unknown>;
  /** Why the parameters could not even be read (e.g. `parameters: "steps=30"`); the prepare step refuses the job with it. */
  parametersError?: string;
  /** The trigger words to record on the finished job, as the platform shows them. */
  resultTriggerWords: string[];
  totalSteps?: number;
  currentLoss: number | null;
  attempts: number;
}

const text = (v: unknown): string | undefined => (v === undefined || v === null || v === '' ? undefined : String(v));

/** The trigger word as the LoRA is registered and the captions carry it; the raw word when it has no usable characters. */
function cleanedTriggerWord(raw: string): string {
  try {
    return sanitizeTriggerWord(raw);
  } catch {
    return raw;
  }
}

/**
 * Never throws: whatever a client wrote into the document, the attempt gets a
 * request, and the prepare step turns what is wrong into a user error before
 * any charge (a throw here would surface as an internal error, retried).
 */
export function trainingRequestFromJob(job: TrainingJobDoc): TrainingRequest {
  const triggerWords = Array.isArray(job.triggerWords) ? job.triggerWords : undefined;
  // triggerWord, else the first of triggerWords (else the job name, only when that list exists but is empty).
  const rawTriggerWord = String(job.triggerWord ?? (triggerWords ? (triggerWords[0] ?? job.name) : '') ?? '');
  const first = job.triggerWord ?? triggerWords?.[0];
  let rawParameters: Record<string, unknown> = {};
  let parametersError: string | undefined;
  try {
    rawParameters = jobParametersFromPlatformDoc(job as unknown as Record<string, unknown>);
  } catch (e) {
    parametersError = `${(e as Error).message} (got ${describeValue((job as Record<string, unknown>)['parameters'])})`;
  }
  return {
    jobId: String(job._id),
    modelType: text(job.modelType) ?? text(job.baseModel) ?? '',
    ownerAccountId: text(job.ownerAccountId) ?? text(job.userId) ?? '',
    userId: text(job.userId),
    walletAddress: text(job.walletAddress),
    datasetId: text(job.datasetId),
    captionSetId: text(job.captionSetId),
    controlSetId: text((job as unknown as Record<string, unknown>)['controlSetId']),
    rawTriggerWord,
    rawModelName: text(job.modelName) ?? text(job.name),
    description: text(job.description),
    rawParameters,
    parametersError,
    // What the platform shows and the resolver matches: the cleaned word, the one the LoRA answers to.
    resultTriggerWords: first ? [cleanedTriggerWord(String(first))] : [],
    totalSteps: typeof job.totalSteps === 'number' ? job.totalSteps : undefined,
    currentLoss: typeof job.currentLoss === 'number' ? job.currentLoss : null,
    attempts: typeof job.attempts === 'number' ? job.attempts : 1,
  };
}

function describeValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (Array.isArray(v)) return 'an array';
  return v === null ? 'null' : typeof v;
}

/**
 * The `trainingJobs` fields the platform's training UI reads about a charged
 * job, as we must write them (the other direction of this mapper):
 * `estimatedCostPoints` (what was taken up front, right after the charge) and
 * the live cost row, which TrainingStudio.js `_renderTrainingCard` draws for
 * an active job with a `gpuType`: the GPU's name and "cost so far" =
 * `gpuHourlyRate` × hours since `startedAt`. The rate is the one the user is
 * billed per hour (the quote's GPU rate plus the platform fee, as
 * `usedPoints` settles), so the row matches the final charge.
 *
 * `device` is the GPU the attempt got (its nvidia-smi name), `'cpu'` for a
 * CPU recipe or a CPU test run, or undefined before allocation (the quote's
 * VRAM class is named then).
 */
export interface PlatformCostFields {
  estimatedCostPoints: number;
  gpuType: string;
  gpuHourlyRate: number;
}

export function platformCostFields(quote: Pick<Quote, 'points' | 'gpuUsdPerHour'> & { platformFee?: number }, recipe: { gpu: { count: number; recommendedVramGb: number } }, device?: { name: string } | 'cpu'): PlatformCostFields {
  const gpuType = device === 'cpu' || recipe.gpu.count === 0 ? 'CPU' : (device?.name ?? `${recipe.gpu.recommendedVramGb} GB GPU`);
  const gpuHourlyRate = Math.round(quote.gpuUsdPerHour * (1 + (quote.platformFee ?? PLATFORM_FEE)) * 10_000) / 10_000;
  return { estimatedCostPoints: quote.points, gpuType, gpuHourlyRate };
}
