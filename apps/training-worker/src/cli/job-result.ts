/**
 * Reads what `cli follow` and `cli result` show from the repositories: the
 * job's snapshot (with its attempt record's checkpoints) and the result of a
 * finished job (model and sample URLs, points moved, the owner's balance).
 */
import { platformAttemptOf, type LoraModelRepository, type TrainingAttemptRepository, type TrainingJobRepository } from '@stationthis/db';
import type { PointsLedger } from '@stationthis/points';
import { snapshotOf, type FollowSnapshot, type JobResult } from './progress-bar';

export interface ResultSources {
  jobs: TrainingJobRepository;
  attempts: TrainingAttemptRepository;
  models: LoraModelRepository;
  ledger: PointsLedger;
}

export async function readSnapshot(src: Pick<ResultSources, 'jobs' | 'attempts'>, jobId: string): Promise<FollowSnapshot | null> {
  const job = await src.jobs.findById(jobId);
  if (!job) return null;
  const attempt = await src.attempts.find(jobId, platformAttemptOf(job));
  return snapshotOf(job as Record<string, unknown>, attempt?.state.checkpoints?.length);
}

export async function readResult(src: ResultSources, jobId: string): Promise<JobResult | null> {
  const job = await src.jobs.findById(jobId);
  if (!job) return null;
  const platformAttempt = platformAttemptOf(job);
  const [attempt, model, points] = await Promise.all([
    src.attempts.find(jobId, platformAttempt),
    job.loraModelId ? src.models.findById(String(job.loraModelId)) : null,
    src.ledger.jobSummary(jobId),
  ]);
  const checkpoints = attempt?.state.checkpoints ?? [];
  // The final LoRA's samples; a job that ended before its upload shows its last checkpoint's.
  const sampleUrls = attempt?.state.upload?.sampleUrls ?? checkpoints.at(-1)?.sampleUrls ?? [];
  const published = (model as { publishedTo?: { modelFileUrl?: string } } | null)?.publishedTo?.modelFileUrl;
  const owner = job.ownerAccountId ?? job.userId;
  const balance = owner ? await src.ledger.balance({ masterAccountId: String(owner), walletAddress: job.walletAddress ?? null }).catch(() => null) : null;
  const s = snapshotOf(job as Record<string, unknown>, checkpoints.length);
  return {
    jobId,
    status: s.status,
    name: typeof job.name === 'string' ? job.name : null,
    step: s.step,
    total: s.total,
    finalLoss: s.loss,
    failureReason: s.failureReason,
    modelUrl: published ?? (typeof job.modelRepoUrl === 'string' ? job.modelRepoUrl : null),
    sampleUrls,
    checkpoints: checkpoints.length,
    charged: points.charged,
    refunded: points.refunded,
    balance,
    trainSeconds: attempt?.state.trainSeconds ?? null,
  };
}
