/**
 * The one mapper from a platform `trainingJobs` document to a typed training
 * request. The platform's documents carry ids as ObjectId or string, optional
 * and legacy fields (`userId` beside `ownerAccountId`, `triggerWords[]` beside
 * `triggerWord`, `modelType` or `baseModel`): every coercion lives here, so
 * the steps read typed fields only.
 */
import type { TrainingJobDoc } from '@stationthis/db';
import { jobParametersFromPlatformDoc } from '@stationthis/recipes';

export interface TrainingRequest {
  jobId: string;
  /** The model type the user picked ('SDXL', 'FLUX', 'WAN', ...), as the platform wrote it. */
  modelType: string;
  /** The owner's master account id (hex string). */
  ownerAccountId: string;
  walletAddress?: string;
  datasetId?: string;
  captionSetId?: string;
  /** The trigger word as written (sanitized by the prepare step). */
  rawTriggerWord: string;
  /** The model name as written, if any. */
  rawModelName?: string;
  description?: string;
  /** Raw parameters in the platform's fields, for the recipe to validate. */
  rawParameters: Record<string, unknown>;
  /** The trigger words to record on the finished job, as the platform shows them. */
  resultTriggerWords: string[];
  totalSteps?: number;
  currentLoss: number | null;
  attempts: number;
  maxAttempts?: number;
}

const text = (v: unknown): string | undefined => (v === undefined || v === null || v === '' ? undefined : String(v));

export function trainingRequestFromJob(job: TrainingJobDoc): TrainingRequest {
  const triggerWords = Array.isArray(job.triggerWords) ? job.triggerWords : undefined;
  // triggerWord, else the first of triggerWords (else the job name, only when that list exists but is empty).
  const rawTriggerWord = String(job.triggerWord ?? (triggerWords ? (triggerWords[0] ?? job.name) : '') ?? '');
  const first = job.triggerWord ?? triggerWords?.[0];
  return {
    jobId: String(job._id),
    modelType: text(job.modelType) ?? text(job.baseModel) ?? '',
    ownerAccountId: text(job.ownerAccountId) ?? text(job.userId) ?? '',
    walletAddress: text(job.walletAddress),
    datasetId: text(job.datasetId),
    captionSetId: text(job.captionSetId),
    rawTriggerWord,
    rawModelName: text(job.modelName) ?? text(job.name),
    description: text(job.description),
    rawParameters: jobParametersFromPlatformDoc(job as unknown as Record<string, unknown>),
    resultTriggerWords: first ? [String(first)] : [],
    totalSteps: typeof job.totalSteps === 'number' ? job.totalSteps : undefined,
    currentLoss: typeof job.currentLoss === 'number' ? job.currentLoss : null,
    attempts: typeof job.attempts === 'number' ? job.attempts : 1,
    maxAttempts: typeof job.maxAttempts === 'number' ? job.maxAttempts : undefined,
  };
}
