/**
 * The engine's training state as one tar object per save (uploads bucket,
 * never public), recorded on the attempt record so a re-claim of the same
 * platform attempt resumes from it instead of step 0.
 *
 * Fencing: the key names the step and the uploading lease (two claims never
 * write one key); the record is written only while this lease owns the
 * attempt record and only over a lower step (TrainingAttemptRepository.
 * recordResumeState). A refused record deletes its own upload; a recorded
 * one deletes the state it replaced.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { chown, mkdir, readdir, rm, stat } from 'node:fs/promises';
import { join, normalize, sep } from 'node:path';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-fs';
import { inject, injectable } from 'tsyringe';
import { TrainingAttemptRepository, type ResumeStateRecord } from '@stationthis/db';
import { MODEL_UPLOAD_PORT, ObjectStorage, resumeStateKey, type ModelUploadPort } from '@stationthis/storage';
import { WorkerMetrics } from '../../observability/metrics';
import type { Attempt } from '../steps/attempt';

@injectable()
export class ResumeStateStore {
  constructor(
    @inject(MODEL_UPLOAD_PORT) private readonly uploader: ModelUploadPort,
    private readonly storage: ObjectStorage,
    private readonly attempts: TrainingAttemptRepository,
    private readonly metrics: WorkerMetrics,
  ) {}

  /**
   * Tars `stateDir` (a complete engine state of job step `step`), uploads it
   * and records it. Returns the record, or null when a newer state or another
   * claim won (our upload is deleted then).
   */
  async store(a: Attempt, save: { step: number; epoch?: number; dir: string; stateDir: string; engine: string; scratchDir: string }): Promise<ResumeStateRecord | null> {
    const { ctx, ref } = a;
    const tarPath = join(save.scratchDir, `state-${save.step}.tar`);
    try {
      await packComplete(save.dir, tarPath);
      const key = resumeStateKey(ctx.jobId, ref.platformAttempt, save.step, ctx.lease.attemptId);
      const up = await this.uploader.upload({ filePath: tarPath, bucketAlias: 'uploads', key, contentType: 'application/x-tar' });
      this.metrics.bytesMoved.inc({ direction: 'up', kind: 'state' }, up.bytes);
      const record: ResumeStateRecord = {
        step: save.step,
        ...(save.epoch !== undefined ? { epoch: save.epoch } : {}),
        key,
        bytes: up.bytes,
        sha256: up.sha256,
        stateDir: save.stateDir,
        engine: save.engine,
        uploadedBy: ctx.lease.attemptId,
        storedAt: new Date(),
        // What a resume from this state is billed for the work before it (this claim's training so far plus
        // what the state it resumed from carried): the time after the last stored state is never billed twice.
        ...(a.trainStartedAt !== undefined ? { trainSeconds: Math.round((a.priorTrainSeconds ?? 0) + (Date.now() - a.trainStartedAt) / 1000) } : {}),
      };
      if (!(await this.attempts.recordResumeState(ref, record))) {
        ctx.log.warn({ step: save.step }, 'resume state not recorded (a newer state is recorded or another claim owns the attempt): deleting our upload');
        await this.storage.deleteObject('uploads', key).catch((e: Error) => ctx.log.warn({ err: e, key }, 'could not delete an unrecorded resume state'));
        return null;
      }
      const replaced = a.state.resumeState;
      a.state.resumeState = record;
      if (replaced && replaced.key !== key) {
        await this.storage.deleteObject('uploads', replaced.key).catch((e: Error) => ctx.log.warn({ err: e, key: replaced.key }, 'could not delete the replaced resume state (retention removes it with the job)'));
      }
      return record;
    } finally {
      await rm(tarPath, { force: true });
    }
  }

  /**
   * Downloads a recorded state, checks its sha256 and unpacks it at
   * `<outputDir>/<stateDir>` for the container (uid 1000). Only plain files
   * and folders inside that folder are unpacked (no links, nothing outside).
   */
  async restore(a: Attempt, record: ResumeStateRecord, outputDir: string, scratchDir: string): Promise<void> {
    const target = normalize(join(outputDir, record.stateDir));
    if (!target.startsWith(outputDir + sep)) throw new UnusableStateError(`recorded state folder ${JSON.stringify(record.stateDir)} leaves the output folder`);
    const tarPath = join(scratchDir, 'resume-state.tar');
    try {
      const got = await this.storage.downloadToFile('uploads', record.key, tarPath, { signal: a.ctx.signal });
      this.metrics.bytesMoved.inc({ direction: 'down', kind: 'state' }, got.bytes);
      const hash = createHash('sha256');
      for await (const chunk of createReadStream(tarPath)) hash.update(chunk as Buffer);
      const sha = hash.digest('hex');
      if (sha !== record.sha256) throw new UnusableStateError(`the downloaded state's sha256 ${sha.slice(0, 12)}… differs from the recorded ${record.sha256.slice(0, 12)}…`);
      await rm(target, { recursive: true, force: true });
      await mkdir(target, { recursive: true });
      await pipeline(
        createReadStream(tarPath),
        tar.extract(target, {
          // Plain files and folders only, each inside the target.
          ignore: (name: string, header?: tar.Headers) => {
            const full = normalize(name);
            const within = full === target || full.startsWith(target + sep);
            return !within || (header !== undefined && header.type !== 'file' && header.type !== 'directory');
          },
          dmode: 0o755,
          fmode: 0o644,
        }),
      );
      await chownTree(target, 1000, 1000);
    } finally {
      await rm(tarPath, { force: true });
    }
  }
}

/**
 * A recorded state that can never be resumed (its object is gone, its bytes
 * differ from the record, its folder name is unsafe): the caller drops it and
 * trains from step 0. Any other restore error (storage down, disk full) is
 * transient: the state stays recorded and the job is retried.
 */
export class UnusableStateError extends Error {
  override readonly name = 'UnusableStateError';
}

/**
 * Tars a complete state folder, and checks that every file listed before the
 * pack is in the archive whole. The engines delete older state folders on
 * their own (`--save_last_n_steps_state`), possibly while one is being packed;
 * tar-fs then ends the archive early without an error, and a short archive
 * would be recorded and fail the resume. Such a pack throws instead (a newer
 * state is on its way).
 */
async function packComplete(dir: string, tarPath: string): Promise<void> {
  const listed = await filesIn(dir);
  const packed = new Map<string, number>();
  await pipeline(
    tar.pack(dir, {
      map: (header) => {
        if (header.type === 'file') packed.set(normalize(header.name), header.size ?? 0);
        return header;
      },
    }),
    createWriteStream(tarPath),
  );
  for (const [name, size] of listed) {
    if (packed.get(name) !== size) {
      throw new Error(`the state folder ${dir} changed while it was packed (${name}: ${packed.has(name) ? `${packed.get(name)} of ${size} bytes` : 'missing'}); the engine removed or rewrote it, a newer state replaces it`);
    }
  }
}

async function filesIn(dir: string, prefix = ''): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const entry of await readdir(join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? join(prefix, entry.name) : entry.name;
    if (entry.isDirectory()) for (const [k, v] of await filesIn(dir, rel)) out.set(k, v);
    else if (entry.isFile()) out.set(normalize(rel), (await stat(join(dir, rel))).size);
  }
  return out;
}

/** The container runs as uid 1000: it must be able to read (and replace) the state it resumes from. */
async function chownTree(dir: string, uid: number, gid: number): Promise<void> {
  await chown(dir, uid, gid).catch(() => undefined);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) await chownTree(p, uid, gid);
    else await chown(p, uid, gid).catch(() => undefined);
  }
}
