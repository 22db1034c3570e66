/**
 * Resume from engine state: SIGKILL the worker at spread-out points during
 * training in 10 runs of the smoke recipe (as crash-recovery does). The next
 * claim of the same platform attempt continues from the newest stored state:
 * every job completes with its planned steps, the container time over all
 * claims exceeds one uninterrupted run by at most one save interval plus
 * startup, one charge per job, and every resumed claim really resumed.
 */
import { spawn } from 'node:child_process';
import { openSync } from 'node:fs';
import { join } from 'node:path';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { TrainingAttemptRepository, type TrainingAttemptDoc } from '@stationthis/db';
import { parseSafetensorsHeader } from '@stationthis/recipes';
import { ObjectStorage, S3_CLIENT, loadStorageConfig, resumeStatePrefix } from '@stationthis/storage';
import { runSeconds } from '../src/pipeline/steps/train-step';
import { createHarness, ensureSmokeImage, Harness, REPO_ROOT } from './harness';

jest.setTimeout(600_000);

const RUNS = Number(process.env.RESUME_RUNS ?? 10);
const STEPS = 24;
const EVERY = 6;
/** Container start, engine start-up and the state load of one resumed run (a loaded 2-core host). */
const STARTUP_ALLOWANCE_S = 8;
/** Run-to-run variation of container time on the shared test host. */
const LOAD_MARGIN = 0.25;
const RESUMED_LINE = /^\[worker\] resumed from step (\d+): first new step (\d+), ([\d.]+) s after the claim/;

describe('training worker: resume from engine state after SIGKILL', () => {
  let h: Harness;
  let attempts: TrainingAttemptRepository;
  const jobIds: string[] = [];
  beforeAll(async () => {
    await ensureSmokeImage();
    h = await createHarness('resume', { WORKER_LEASE_MS: '3000', WORKER_MAINTENANCE_MS: '1000' });
    attempts = h.app.container.resolve(TrainingAttemptRepository);
  });
  afterAll(async () => {
    const storage = h?.app.container.resolve(ObjectStorage);
    for (const id of jobIds) await storage?.deletePrefix('uploads', resumeStatePrefix(id)).catch(() => undefined);
    await h?.close();
  });

  const enqueue = async (name: string) => {
    const a = await h.seedAccount(5000);
    const datasetId = await h.seedDataset(a.owner);
    const jobId = await h.enqueue({ ownerAccountId: a.owner, datasetId, walletAddress: a.wallet, name, parameters: { steps: STEPS, saveEveryNSteps: EVERY } } as never);
    jobIds.push(jobId);
    return jobId;
  };
  /** RESUME_LOG_DIR=<dir> keeps each worker's log (debugging a hang). */
  const spawnWorker = (name: string) => {
    const dir = process.env.RESUME_LOG_DIR;
    if (!dir) {
      // Drained: a worker blocked on a full stderr pipe would look like a hang.
      const child = h.spawnWorker();
      child.stderr?.on('data', (d: Buffer) => (stderr[name] = ((stderr[name] ?? '') + d.toString()).slice(-4000)));
      return child;
    }
    const out = openSync(join(dir, `${name}.log`), 'w');
    return spawn('node', [join(REPO_ROOT, 'apps/training-worker/dist/main.js')], { env: { ...h.env, LOG_LEVEL: 'debug' }, stdio: ['ignore', out, out] });
  };
  const stderr: Record<string, string> = {};
  const record = async (jobId: string) => (await attempts.find(jobId, 0)) as TrainingAttemptDoc;
  const stop = async (child: ReturnType<typeof spawn>, signal: NodeJS.Signals) => {
    child.kill(signal);
    if (child.exitCode === null && child.signalCode === null) await new Promise((r) => child.once('exit', r));
  };
  const finalSteps = async (jobId: string) => {
    const model = await h.db.collection('loraModels').findOne({ _id: (await h.job(jobId)).loraModelId });
    const config = loadStorageConfig(h.env);
    const obj = await h.app.container.resolve(S3_CLIENT).send(new GetObjectCommand({ Bucket: config.buckets.models.bucket, Key: `loras/${model!.slug}.safetensors` }));
    return Number(parseSafetensorsHeader(await obj.Body!.transformToByteArray()).metadata['ss_steps']);
  };

  it('a graceful shutdown stores the save in flight before it exits, and the next claim resumes from it', async () => {
    const jobId = await enqueue('resume-sigterm');
    const child = spawnWorker('sigterm');
    // Step EVERY+1 reported: the save at EVERY is complete and its upload queued or in flight.
    await h.waitFor(jobId, (j) => (j.currentStep ?? 0) > EVERY, 120_000);
    await stop(child, 'SIGTERM');
    const atExit = (await record(jobId)).state;
    expect(atExit.checkpoints?.map((c) => c.step)).toContain(EVERY);
    expect(atExit.resumeState?.step).toBeGreaterThanOrEqual(EVERY);

    const restarted = spawnWorker('sigterm-resumed');
    const job = await h.waitFor(jobId, (j) => ['COMPLETED', 'FAILED', 'CANCELLED'].includes(j.status), 180_000);
    await stop(restarted, 'SIGTERM');
    expect(job.failureReason).toBeUndefined();
    expect(job.status).toBe('COMPLETED');
    const rec = await record(jobId);
    expect(rec.state.resumes?.[0]?.step).toBe(atExit.resumeState!.step);
    expect(rec.state.checkpoints!.map((c) => c.step)).toEqual([6, 12, 18]);
    expect((await h.ledger.history({ jobId })).filter((m) => m.kind === 'charge')).toHaveLength(1);
  });

  it(`continues from the saved step after SIGKILL (${RUNS} runs)`, async () => {
    // One uninterrupted run: the container time a job needs.
    const baseJob = await enqueue('resume-baseline');
    const baseWorker = spawnWorker('baseline');
    await h.waitFor(baseJob, (j) => j.status === 'COMPLETED', 120_000);
    await stop(baseWorker, 'SIGTERM');
    const baseline = runSeconds((await record(baseJob)).state.containerRuns);
    const perStep = baseline / STEPS;
    // The host is shared (2 cores, other test suites): the same run varies by about a quarter from one minute to the next.
    const bound = baseline * (1 + LOAD_MARGIN) + EVERY * perStep + STARTUP_ALLOWANCE_S;
    const figures: string[] = [];

    for (let run = 0; run < RUNS; run++) {
      const jobId = await enqueue(`resume-${run}`);
      // Kill points spread over the training after the first stored state, each a little off the step boundary.
      const killAt = EVERY + 1 + Math.round((run / Math.max(1, RUNS - 1)) * (STEPS - EVERY - 4));
      const child = spawnWorker(`run-${run}-killed`);
      for (;;) {
        const [j, rec] = [await h.job(jobId), await record(jobId)];
        if ((j.currentStep ?? 0) >= killAt && rec?.state.resumeState) break;
        if (j.status === 'COMPLETED' || j.status === 'FAILED') throw new Error(`run ${run}: the job ended (${j.status}) before the kill point ${killAt}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      await new Promise((r) => setTimeout(r, (run * 97) % 400));
      await stop(child, 'SIGKILL');
      const savedAtKill = (await record(jobId)).state.resumeState!.step;

      // The next claim (after the lease expires) resumes; watch for its first new step in the log tail.
      const restarted = spawnWorker(`run-${run}-resumed`);
      let resumedLine: RegExpExecArray | null = null;
      const job = await h.waitFor(jobId, (j) => {
        for (const l of j.logTail ?? []) resumedLine ??= RESUMED_LINE.exec(l);
        return ['COMPLETED', 'FAILED', 'CANCELLED'].includes(j.status);
      }, 180_000);
      await stop(restarted, 'SIGTERM');

      expect(job.failureReason).toBeUndefined();
      expect(job.status).toBe('COMPLETED');
      expect(job.currentStep).toBe(STEPS);
      expect(await finalSteps(jobId)).toBe(STEPS);

      const rec = await record(jobId);
      const resumes = rec.state.resumes ?? [];
      expect(resumes.length).toBeGreaterThanOrEqual(1);
      expect(resumes[0]!.step).toBeGreaterThanOrEqual(savedAtKill);
      expect(resumes[0]!.step).toBeGreaterThan(0);
      expect(resumedLine).not.toBeNull();
      const [, from, first, seconds] = resumedLine!;
      expect(Number(from)).toBe(resumes[0]!.step);
      expect(Number(first)).toBeGreaterThan(Number(from));
      // Every planned save recorded once, in order, over both claims.
      expect(rec.state.checkpoints!.map((c) => c.step)).toEqual([6, 12, 18]);

      const containerSeconds = runSeconds(rec.state.containerRuns);
      expect(containerSeconds).toBeLessThanOrEqual(bound);
      // Billed: the resumed state's training time plus the resumed claim's, never the killed claim's time after its last state.
      expect(rec.state.trainSeconds!).toBeLessThanOrEqual(Math.ceil(bound) + 2);

      const history = await h.ledger.history({ jobId });
      expect(history.filter((m) => m.kind === 'charge')).toHaveLength(1);
      const summary = await h.ledger.jobSummary(jobId);
      expect(summary.charged - summary.refunded).toBe(job.actualCostPoints);
      expect(await h.containersFor(jobId)).toEqual([]);
      figures.push(`run ${run}: killed at step ≥${killAt} (state ${savedAtKill}), resumed from ${from}, first new step ${first} ${seconds} s after the claim, container ${containerSeconds.toFixed(1)} s`);
    }
    const noisy = Object.entries(stderr).filter(([, t]) => t.trim());
    if (noisy.length) console.log(`worker stderr:\n${noisy.map(([n, t]) => `${n}: ${t}`).join('\n')}`);
    console.log(`[figures] baseline container ${baseline.toFixed(1)} s (${STEPS} steps, save every ${EVERY}); bound ${bound.toFixed(1)} s\n${figures.join('\n')}`);
  });
});
