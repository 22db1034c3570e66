/**
 * The dashboard API's shapes, built from the documents (pure: no I/O, the
 * clock passed in). Every field says what it is in the operator's words;
 * unknown values are null, never guessed.
 */
import type { GpuInventory } from '@stationthis/docker';
import type { JobPointsSummary, LedgerMovement } from '@stationthis/points';
import type { JobStatus, SettlementDecisionDoc, TrainingAttemptDoc, TrainingJobDoc } from '@stationthis/db';

export const PHASES = ['QUEUED', 'PROVISIONING', 'RUNNING', 'FINALIZING'] as const;
const TERMINAL = ['COMPLETED', 'FAILED', 'CANCELLED'];
const LEASED = ['PROVISIONING', 'RUNNING', 'FINALIZING'];

/** What each failure class means for the user, in plain words (the classes are libs/db's JOB_FAILURE_CLASSES). */
export const FAILURE_CLASS_MEANING: Readonly<Record<string, string>> = {
  'user-input': 'the request itself was not valid (parameters, or not enough points); nothing was charged',
  dataset: 'the dataset could not be used (too few images, unreadable files, no access); points refunded',
  engine: 'the training engine failed or produced no valid LoRA (e.g. NaN loss); points refunded',
  oom: 'training ran out of GPU or host memory; points refunded',
  timeout: 'training hit its time limit or stopped making progress; points refunded',
  infrastructure: 'a problem on our side (storage, image, worker crash), retried while attempts remained; points refunded',
  operator: 'this deployment lacks something the job needs (e.g. base weights); points refunded',
  user: 'an older record: the request was not valid',
  'insufficient-points': 'an older record: the account had too few points',
};

export interface TimelineEntry {
  phase: string;
  /** ISO time the job entered the phase, null when not recorded. */
  at: string | null;
  state: 'done' | 'current' | 'pending' | 'skipped';
}

export interface JobSummaryView {
  id: string;
  name: string;
  status: string;
  modelType: string | null;
  ownerAccountId: string | null;
  priority: number;
  createdAt: string | null;
  updatedAt: string | null;
  step: number | null;
  totalSteps: number | null;
  percent: number | null;
  loss: number | null;
  workerId: string | null;
  reason: string | null;
  failureClass: string | null;
}

export interface QueueEntryView extends JobSummaryView {
  position: number;
  waitingSeconds: number | null;
}

export interface SlotView {
  id: string;
  kind: 'gpu' | 'cpu';
  name: string;
  vramTotalGb: number | null;
  /** Free VRAM now, null when it cannot be read (no nvidia-smi: shown as n/a). */
  vramFreeGb: number | null;
  vramNote: string | null;
  job: (JobSummaryView & { leaseAgeSeconds: number | null; leaseExpiresInSeconds: number | null }) | null;
}

export interface OverviewView {
  now: string;
  worker: { id: string; environment: string };
  slots: SlotView[];
  /** Jobs this worker holds that have no slot yet (preparing inputs, waiting for a device). */
  preparing: SlotView['job'][];
  queue: { total: number; jobs: QueueEntryView[] };
  running: JobSummaryView[];
  recent: JobSummaryView[];
}

export interface CheckpointView {
  step: number;
  loss: number | null;
  storedAt: string | null;
  deleted: boolean;
  loraBytes: number;
  samples: { key: string; url: string }[];
}

export interface JobDetailView {
  job: JobSummaryView;
  now: string;
  timeline: TimelineEntry[];
  progress: { step: number | null; totalSteps: number | null; percent: number | null; loss: number | null; etaSeconds: number | null; etaAt: string | null };
  lease: { workerId: string; thisWorker: boolean; ageSeconds: number | null; expiresInSeconds: number | null } | null;
  attempts: { platformAttempt: number; workerAttemptsUsed: number | null; workerAttemptsMax: number };
  lossSeries: { stride: number; steps: number[]; losses: number[] };
  checkpoints: CheckpointView[];
  finalSamples: { key: string; url: string }[];
  outcome: { status: string; reason: string | null; failureClass: string | null; failureClassMeaning: string | null; decidedBy: string | null } | null;
  points: { summary: JobPointsSummary | null; movements: MovementView[] };
  log: { source: 'live' | 'stored' | 'job-document' | 'none'; seq: number | null; lines: string[] };
}

export interface MovementView {
  at: string | null;
  kind: string;
  creditKind: string | null;
  points: number;
  platformAttempt: number;
  state: string;
  reason: string;
}

function iso(d: unknown): string | null {
  if (d instanceof Date && !Number.isNaN(d.getTime())) return d.toISOString();
  if (typeof d === 'string' && !Number.isNaN(Date.parse(d))) return new Date(d).toISOString();
  return null;
}

function ms(d: unknown): number | null {
  const s = iso(d);
  return s ? Date.parse(s) : null;
}

function num(v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

/** Seconds from now until `d` (negative once past), null when unknown. */
function secondsUntil(d: unknown, now: Date): number | null {
  const t = ms(d);
  return t === null ? null : Math.round((t - now.getTime()) / 1000);
}

function seconds(fromMs: number | null, toMs: number): number | null {
  return fromMs === null ? null : Math.max(0, Math.round((toMs - fromMs) / 1000));
}

/**
 * Why a failed or cancelled job ended, in plain words: the reason the worker
 * wrote, else the recorded settle decision's, else what the document shows
 * (a job cancelled while queued carries no reason: nothing ran).
 */
export function plainReason(job: TrainingJobDoc, decision?: Pick<SettlementDecisionDoc, 'reason'> | null): string | null {
  if (job.status !== 'FAILED' && job.status !== 'CANCELLED') return null;
  if (typeof job.failureReason === 'string' && job.failureReason.trim()) return job.failureReason;
  if (decision?.reason) return decision.reason;
  if (job.status === 'CANCELLED') {
    const by = typeof job.cancelRequestedBy === 'string' && job.cancelRequestedBy ? ` by ${job.cancelRequestedBy}` : '';
    const at = iso(job.cancelRequestedAt ?? job['cancelledAt']);
    const started = job.startedAt != null || (typeof job.attempts === 'number' && job.attempts > 0);
    return started
      ? `Cancelled${by}${at ? ` at ${at}` : ''} while it ran.`
      : `Cancelled${by}${at ? ` at ${at}` : ''} while it was queued: nothing ran and nothing was charged.`;
  }
  return 'Failed; no reason was recorded.';
}

export function jobSummary(job: TrainingJobDoc): JobSummaryView {
  const step = num(job.currentStep);
  const total = num(job.totalSteps);
  return {
    id: String(job._id),
    name: String(job.name ?? job.modelName ?? ''),
    status: String(job.status),
    modelType: typeof job.modelType === 'string' ? job.modelType : typeof job.baseModel === 'string' ? job.baseModel : null,
    ownerAccountId: job.ownerAccountId != null ? String(job.ownerAccountId) : null,
    priority: num(job.priority) ?? 0,
    createdAt: iso(job.createdAt),
    updatedAt: iso(job.updatedAt),
    step,
    totalSteps: total,
    percent: num(job.progress) ?? (step !== null && total ? Math.min(100, Math.round((step / total) * 1000) / 10) : null),
    loss: num(job.currentLoss),
    workerId: LEASED.includes(job.status) || job.status === 'CANCELLED' ? (job.lease?.workerId ?? null) : null,
    reason: plainReason(job),
    failureClass: job.status === 'FAILED' && typeof job.failureClass === 'string' ? job.failureClass : null,
  };
}

/** Queued jobs in claim order (the caller sorts: priority desc, then oldest first), numbered from 1. */
export function queueView(sorted: TrainingJobDoc[], total: number, now: Date): OverviewView['queue'] {
  return {
    total,
    jobs: sorted.map((job, i) => ({ ...jobSummary(job), position: i + 1, waitingSeconds: seconds(ms(job.createdAt), now.getTime()) })),
  };
}

/**
 * The worker's slots (its GPUs and CPU slots) and the jobs it holds on them.
 * The device a job got is what the RUNNING write recorded (`gpuType`: the GPU's
 * name, or CPU); a job without it is still preparing and has no slot yet.
 */
export function slotsView(
  inventory: Pick<GpuInventory, 'gpus' | 'cpuSlots' | 'source'>,
  held: TrainingJobDoc[],
  freeVramGb: ReadonlyMap<number, number> | null,
  now: Date,
): { slots: SlotView[]; preparing: SlotView['job'][] } {
  const withLease = (job: TrainingJobDoc) => ({
    ...jobSummary(job),
    leaseAgeSeconds: seconds(ms(job.lease?.claimedAt ?? job.startedAt), now.getTime()),
    leaseExpiresInSeconds: secondsUntil(job.lease?.expiresAt, now),
  });
  const vramNote = inventory.source === 'nvidia-smi' ? null : 'n/a: nvidia-smi is not available on this host (GPUs from GPU_DEVICES)';
  const slots: SlotView[] = [
    ...inventory.gpus.map((g) => ({
      id: `gpu${g.index}`,
      kind: 'gpu' as const,
      name: g.name,
      vramTotalGb: g.vramGb,
      vramFreeGb: freeVramGb?.get(g.index) ?? null,
      vramNote: freeVramGb?.has(g.index) ? null : (vramNote ?? 'n/a: nvidia-smi did not answer'),
      job: null,
    })),
    ...Array.from({ length: inventory.cpuSlots }, (_, i) => ({
      id: `cpu${i}`,
      kind: 'cpu' as const,
      name: `CPU slot ${i + 1}`,
      vramTotalGb: null,
      vramFreeGb: null,
      vramNote: 'n/a: CPU slot',
      job: null,
    })),
  ];
  const preparing: SlotView['job'][] = [];
  const oldestFirst = [...held].sort((a, b) => (ms(a.lease?.claimedAt) ?? 0) - (ms(b.lease?.claimedAt) ?? 0));
  for (const job of oldestFirst) {
    const device = typeof job['gpuType'] === 'string' ? (job['gpuType'] as string) : null;
    const onDevice = job.status !== 'PROVISIONING' && device !== null;
    if (!onDevice) {
      preparing.push(withLease(job));
      continue;
    }
    // `2x NAME` for a multi-GPU job: it holds that many free slots of that card.
    const m = /^(\d+)x (.+)$/.exec(device);
    const count = device === 'CPU' ? 1 : m ? Number(m[1]) : 1;
    const name = m ? m[2] : device;
    const free = slots.filter((s) => !s.job && (device === 'CPU' ? s.kind === 'cpu' : s.kind === 'gpu' && s.name === name)).slice(0, count);
    if (free.length === 0) preparing.push(withLease(job));
    for (const s of free) s.job = withLease(job);
  }
  return { slots, preparing };
}

/** queued → provisioning → running → finalizing → terminal, with the times the documents carry. */
export function timeline(job: TrainingJobDoc, record: TrainingAttemptDoc | null): TimelineEntry[] {
  const status = String(job.status) as JobStatus;
  const terminal = TERMINAL.includes(status);
  const claimedBy = job.lease?.attemptId;
  const phaseTimes = record?.state?.phaseTimes;
  const times: Record<string, string | null> = {
    QUEUED: iso(job.createdAt),
    PROVISIONING: iso(job.lease?.claimedAt ?? job.startedAt),
    // The record's times are the claim's that wrote them; an earlier claim's are not this one's.
    RUNNING: phaseTimes && (!claimedBy || phaseTimes.claim === claimedBy) ? iso(phaseTimes.RUNNING) : null,
    FINALIZING: phaseTimes && (!claimedBy || phaseTimes.claim === claimedBy) ? iso(phaseTimes.FINALIZING) : null,
  };
  const reached = terminal ? PHASES.length : Math.max(0, PHASES.indexOf(status as (typeof PHASES)[number]));
  const out: TimelineEntry[] = PHASES.map((phase, i) => {
    let state: TimelineEntry['state'];
    if (terminal) state = times[phase] || i === 0 ? 'done' : 'skipped';
    else state = i < reached ? 'done' : i === reached ? 'current' : 'pending';
    return { phase, at: state === 'pending' || state === 'skipped' ? null : times[phase], state };
  });
  out.push({
    phase: terminal ? status : 'COMPLETED',
    at: terminal ? iso(job.finishedAt ?? job.completedAt ?? job['cancelledAt'] ?? job.updatedAt) : null,
    state: terminal ? 'done' : 'pending',
  });
  return out;
}

/**
 * ETA: the engine's estimate when it gave one (counted down from the write that
 * carried it), else the pace since RUNNING; null before any step.
 */
export function eta(job: TrainingJobDoc, runningAt: string | null, now: Date): { etaSeconds: number | null; etaAt: string | null } {
  if (TERMINAL.includes(job.status) || job.status === 'QUEUED') return { etaSeconds: null, etaAt: null };
  const written = ms(job.updatedAt);
  const engine = num(job.etaSeconds);
  if (engine !== null && written !== null) {
    const left = Math.max(0, Math.round(engine - (now.getTime() - written) / 1000));
    return { etaSeconds: left, etaAt: new Date(now.getTime() + left * 1000).toISOString() };
  }
  const step = num(job.currentStep);
  const total = num(job.totalSteps);
  const since = ms(runningAt);
  if (step && total && since !== null && step < total) {
    const perStep = (now.getTime() - since) / 1000 / step;
    const left = Math.round(perStep * (total - step));
    return { etaSeconds: left, etaAt: new Date(now.getTime() + left * 1000).toISOString() };
  }
  return { etaSeconds: null, etaAt: null };
}

/** The image proxy's URL for a stored object of the job (the models bucket is private). */
export function objectUrl(jobId: string, key: string): string {
  return `/api/jobs/${encodeURIComponent(jobId)}/object?key=${encodeURIComponent(key)}`;
}

/**
 * Keys of the job's images that the proxy may serve: its checkpoints' samples
 * and its final samples (recorded as public URLs: the key is the part from
 * `training-jobs/<jobId>/`). Nothing else of the bucket is reachable.
 */
export function jobImageKeys(jobId: string, records: TrainingAttemptDoc[]): { checkpointSamples: Map<number, string[]>; finalSamples: string[] } {
  const prefix = `training-jobs/${jobId}/`;
  const checkpointSamples = new Map<number, string[]>();
  const finalSamples: string[] = [];
  for (const r of records) {
    for (const c of r.state?.checkpoints ?? []) {
      if (c.deletedAt) continue;
      checkpointSamples.set(c.step, (c.sampleKeys ?? []).filter((k) => typeof k === 'string' && k.startsWith(prefix)));
    }
    for (const url of r.state?.upload?.sampleUrls ?? []) {
      const at = typeof url === 'string' ? url.indexOf(prefix) : -1;
      if (at >= 0) finalSamples.push(decodeURIComponent(url.slice(at).split(/[?#]/)[0]));
    }
  }
  return { checkpointSamples, finalSamples };
}

export function isServableImageKey(jobId: string, key: string, records: TrainingAttemptDoc[]): boolean {
  if (!/\.(png|jpe?g|webp)$/i.test(key) || key.split('/').some((s) => s === '..' || s === '.' || s === '')) return false;
  const { checkpointSamples, finalSamples } = jobImageKeys(jobId, records);
  return finalSamples.includes(key) || [...checkpointSamples.values()].some((keys) => keys.includes(key));
}

export interface JobDetailInput {
  job: TrainingJobDoc;
  records: TrainingAttemptDoc[];
  decision: SettlementDecisionDoc | null;
  summary: JobPointsSummary | null;
  movements: LedgerMovement[];
  log: JobDetailView['log'];
  workerId: string;
  maxAttempts: number;
  now: Date;
}

export function jobDetail(input: JobDetailInput): JobDetailView {
  const { job, records, decision, now } = input;
  const jobId = String(job._id);
  const platformAttempt = typeof job.retryCount === 'number' ? job.retryCount : 0;
  const record = records.find((r) => r.platformAttempt === platformAttempt) ?? null;
  const steps = timeline(job, record);
  const running = steps.find((s) => s.phase === 'RUNNING')?.at ?? null;
  const series = record?.state?.lossSeries;
  const images = jobImageKeys(jobId, record ? [record] : []);
  const lease = LEASED.includes(job.status) ? job.lease : null;
  const terminalReason = plainReason(job, decision);
  return {
    job: jobSummary(job),
    now: now.toISOString(),
    timeline: steps,
    progress: (({ step, totalSteps, percent, loss }) => ({ step, totalSteps, percent, loss, ...eta(job, running, now) }))(jobSummary(job)),
    lease: lease
      ? {
          workerId: lease.workerId,
          thisWorker: lease.workerId === input.workerId,
          ageSeconds: seconds(ms(lease.claimedAt), now.getTime()),
          expiresInSeconds: secondsUntil(lease.expiresAt, now),
        }
      : null,
    attempts: { platformAttempt, workerAttemptsUsed: record && typeof job.attempts === 'number' ? job.attempts - record.baseAttempts : null, workerAttemptsMax: input.maxAttempts },
    lossSeries: { stride: series?.stride ?? 1, steps: (series?.points ?? []).map((p) => p.step), losses: (series?.points ?? []).map((p) => p.loss) },
    checkpoints: (record?.state?.checkpoints ?? []).map((c) => ({
      step: c.step,
      loss: num(c.loss),
      storedAt: iso(c.storedAt),
      deleted: Boolean(c.deletedAt),
      loraBytes: c.bytes,
      samples: (images.checkpointSamples.get(c.step) ?? []).map((key) => ({ key, url: objectUrl(jobId, key) })),
    })),
    finalSamples: images.finalSamples.map((key) => ({ key, url: objectUrl(jobId, key) })),
    outcome:
      job.status === 'FAILED' || job.status === 'CANCELLED'
        ? {
            status: job.status,
            reason: terminalReason,
            failureClass: job.status === 'FAILED' ? ((job.failureClass as string | undefined) ?? decision?.failureClass ?? null) : null,
            failureClassMeaning: job.status === 'FAILED' ? (FAILURE_CLASS_MEANING[String(job.failureClass ?? decision?.failureClass ?? '')] ?? null) : null,
            decidedBy: decision?.decidedBy ?? null,
          }
        : null,
    points: {
      summary: input.summary,
      movements: input.movements.map((m) => ({
        at: iso(m.appliedAt ?? m.createdAt),
        kind: m.kind,
        creditKind: m.creditKind ?? null,
        points: m.points,
        platformAttempt: m.platformAttempt,
        state: m.state,
        reason: m.reason,
      })),
    },
    log: input.log,
  };
}
