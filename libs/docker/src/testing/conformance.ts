/**
 * One conformance suite for the `ContainerRuntime` port, run against the
 * in-memory fake (pure) and the real `DockerContainerRuntime` on the local
 * engine (`*.int.spec.ts`). Every assertion is about an outcome a caller can
 * see: the exit code and failure class reported, the lines delivered and
 * their order, the log file, the labels the container carries, that a stop
 * stops it and that nothing is left behind. So the fake cannot drift from
 * the adapter without this suite failing on one side.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { readFile } from 'node:fs/promises';
import type { ContainerRunSpec, ContainerRuntime, LogStreamName } from '../container-runtime';
import { ContainerSpecError } from '../container-spec';
import { ImagePullError } from '../docker-container-runtime';
import { SecretInEnvironmentError } from '../env-guard';
import { LABELS } from '../labels';
import type { FakeEnd, FakeLine } from './fake-container-runtime';

/** What the container of a conformance run does: print these lines, then end this way. */
export interface ConformanceBehaviour {
  lines?: FakeLine[];
  /** @default { exit: 0 } */
  end?: FakeEnd;
}

/** A runtime under test and the few engine-side views the suite needs. */
export interface ContainerRuntimeConformanceTarget {
  runtime: ContainerRuntime;
  /** The worker id every spec of this target carries (the suite judges only its own containers). */
  workerId: string;
  /** An image present on the engine. */
  presentImage: string;
  /**
   * A valid spec whose container behaves as `behaviour` says (the real
   * target turns it into a shell script, the fake scripts itself), with
   * `overrides` applied last.
   */
  spec(behaviour: ConformanceBehaviour, overrides?: Partial<ContainerRunSpec>): ContainerRunSpec;
  /** The labels of a container that exists, or null when it does not (any more). */
  labelsOf(containerId: string): Promise<Record<string, string> | null>;
  /** Ids of this worker's managed containers that exist now. */
  leftovers(): Promise<string[]>;
  /** Leaves a managed container as a crashed worker would (created, not run by this process); returns its id. */
  plantOrphan(labels: ContainerRunSpec['labels']): Promise<string>;
  cleanup(): Promise<void>;
}

const DEFAULT_TIMEOUT_MS = 60_000;

/**
 * Declares the conformance tests (jest) for one runtime. `makeTarget` runs
 * once, in `beforeAll`.
 */
export function describeContainerRuntimeConformance(
  name: string,
  makeTarget: () => Promise<ContainerRuntimeConformanceTarget>,
  timeoutMs = DEFAULT_TIMEOUT_MS,
): void {
  describe(`ContainerRuntime conformance: ${name}`, () => {
    let t: ContainerRuntimeConformanceTarget;
    beforeAll(async () => {
      t = await makeTarget();
    }, timeoutMs);
    afterAll(async () => {
      await t?.cleanup();
    }, timeoutMs);
    afterEach(async () => {
      // Removal on every path: no run leaves a container behind.
      expect(await t.leftovers()).toEqual([]);
    }, timeoutMs);

    const collect = () => {
      const lines: Array<[string, LogStreamName]> = [];
      return { lines, onLine: (l: string, s: LogStreamName) => lines.push([l, s]), of: (s: LogStreamName) => lines.filter(([, st]) => st === s).map(([l]) => l) };
    };

    it('reports exit 0 as success and delivers every line, in order on each stream, to the observer, lastLines and the log file', async () => {
      const out = ['one', 'two', 'three', 'four'];
      const err = ['warn-a', 'warn-b'];
      const spec = t.spec({
        lines: [...out.map((text) => ({ text })), ...err.map((text) => ({ text, stream: 'stderr' as const }))],
        end: { exit: 0 },
      });
      const seen = collect();
      let startedId = '';
      const r = await t.runtime.run(spec, { onLine: seen.onLine, onStarted: (id) => (startedId = id) });
      expect(r).toMatchObject({ exitCode: 0, oomKilled: false, failureClass: null, logFilePath: spec.logFilePath });
      expect(r.failureMessage).toBeUndefined();
      expect(r.containerId).not.toBe('');
      expect(r.containerId).toBe(startedId);
      expect(seen.of('stdout')).toEqual(out);
      expect(seen.of('stderr')).toEqual(err);
      expect(r.lastLines.filter((l) => out.includes(l))).toEqual(out);
      expect(r.lastLines.filter((l) => err.includes(l))).toEqual(err);
      const log = await readFile(spec.logFilePath, 'utf8');
      for (const l of [...out, ...err]) expect(log).toContain(`${l}\n`);
      expect(await t.labelsOf(r.containerId)).toBeNull();
    }, timeoutMs);

    it('reports a non-zero exit as an engine failure with its exit code and the last lines', async () => {
      const r = await t.runtime.run(t.spec({ lines: [{ text: 'Traceback: boom', stream: 'stderr' }], end: { exit: 3 } }));
      expect(r).toMatchObject({ exitCode: 3, oomKilled: false, failureClass: 'engine' });
      expect(r.failureMessage).toMatch(/exited with code 3/);
      expect(r.lastLines).toContain('Traceback: boom');
    }, timeoutMs);

    it('reports an out-of-memory kill as oom, exit code 137', async () => {
      const r = await t.runtime.run(t.spec({ end: { oom: true } }));
      expect(r).toMatchObject({ exitCode: 137, oomKilled: true, failureClass: 'oom' });
      expect(r.failureMessage).toMatch(/ran out of memory/);
    }, timeoutMs);

    it('stops a run at its overall deadline (timeout), killing one that ignores SIGTERM', async () => {
      const t0 = Date.now();
      const r = await t.runtime.run(t.spec({ lines: [{ text: 'steps: 1/9' }], end: { hang: true, onSigterm: 'ignore' } }, { deadlineMs: 1500 }));
      expect(r).toMatchObject({ exitCode: 137, failureClass: 'timeout' });
      expect(r.failureMessage).toMatch(/overall deadline of 1500 ms/);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(1500);
    }, timeoutMs);

    it('stops gracefully first: a process that handles SIGTERM exits with its own code', async () => {
      const r = await t.runtime.run(t.spec({ end: { hang: true, onSigterm: 42 } }, { deadlineMs: 1000, stopGraceSeconds: 10 }));
      expect(r).toMatchObject({ exitCode: 42, failureClass: 'timeout' });
    }, timeoutMs);

    it('stops a run whose progress lines stop (stall); other lines do not count as progress', async () => {
      const progress = [1, 2, 3].map((i) => ({ text: `steps: ${i}/100`, delayMs: 150 }));
      const chatter = Array.from({ length: 20 }, (_, i) => ({ text: `INFO: still loading ${i}`, delayMs: 200 }));
      const seen = collect();
      const r = await t.runtime.run(
        t.spec({ lines: [...progress, ...chatter], end: { hang: true } }, { stallTimeoutMs: 1200, isProgressLine: (l) => l.startsWith('steps:') }),
        { onLine: seen.onLine },
      );
      expect(r.failureClass).toBe('stall');
      expect(r.failureMessage).toMatch(/no progress line for 1200 ms/);
      expect(seen.of('stdout').slice(0, 3)).toEqual(['steps: 1/100', 'steps: 2/100', 'steps: 3/100']);
      // Stopped while it was still chattering: the chatter kept nothing alive.
      expect(seen.of('stdout').filter((l) => l.startsWith('INFO')).length).toBeLessThan(chatter.length);
    }, timeoutMs);

    it('does not stall a run whose progress lines keep coming', async () => {
      const lines = Array.from({ length: 10 }, (_, i) => ({ text: `steps: ${i + 1}/10`, delayMs: 200 }));
      const r = await t.runtime.run(t.spec({ lines, end: { exit: 0 } }, { stallTimeoutMs: 1500 }));
      expect(r.failureClass).toBeNull();
    }, timeoutMs);

    it('cancels on abort: the running container, labelled for its run, is stopped, reported cancelled and removed', async () => {
      const ac = new AbortController();
      let labels: Record<string, string> | null = null;
      let startedId = '';
      const ready = new Set<string>();
      const abortWhenReady = (what: 'labels' | 'line') => {
        ready.add(what);
        if (ready.size === 2) ac.abort();
      };
      const spec = t.spec({ lines: [{ text: 'started' }], end: { hang: true, onSigterm: 'ignore' } }, { deadlineMs: 30_000 });
      const specWithStep: ContainerRunSpec = { ...spec, labels: { ...spec.labels, step: 'train' } };
      const r = await t.runtime.run(
        specWithStep,
        {
          // Lines may come before onStarted (output is attached before start); the id comes with onStarted.
          // Abort only once both happened: the 'started' line proves the script's SIGTERM trap is set
          // (a stop before that would end the shell with 143, not the kill this case is about).
          onStarted: (id) => {
            startedId = id;
            void t.labelsOf(id).then(
              (found) => {
                labels = found;
                abortWhenReady('labels');
              },
              () => abortWhenReady('labels'),
            );
          },
          onLine: (text) => {
            if (text === 'started') abortWhenReady('line');
          },
        },
        ac.signal,
      );
      expect(r).toMatchObject({ failureClass: 'cancelled', exitCode: 137, containerId: startedId });
      expect(r.failureMessage).toMatch(/cancelled/);
      expect(labels).toMatchObject({
        [LABELS.managed]: 'true',
        [LABELS.jobId]: specWithStep.labels.jobId,
        [LABELS.attemptId]: specWithStep.labels.attemptId,
        [LABELS.workerId]: t.workerId,
        [LABELS.step]: 'train',
      });
      expect(labels?.[LABELS.createdAt]).toMatch(/^\d{4}-\d\d-\d\dT/);
      expect(await t.labelsOf(startedId)).toBeNull();
    }, timeoutMs);

    it('returns cancelled without creating a container when the signal is already aborted', async () => {
      const ac = new AbortController();
      ac.abort();
      const r = await t.runtime.run(t.spec({ end: { exit: 0 } }), {}, ac.signal);
      expect(r).toMatchObject({ containerId: '', exitCode: null, failureClass: 'cancelled' });
    }, timeoutMs);

    it('reports an absent image as infrastructure, without throwing', async () => {
      const r = await t.runtime.run(t.spec({ end: { exit: 0 } }, { image: 'stationthis-test/no-such-image:never' }));
      expect(r).toMatchObject({ containerId: '', exitCode: null, failureClass: 'infrastructure' });
      expect(r.failureMessage).toMatch(/ensureImage/);
    }, timeoutMs);

    it('throws for an invalid spec or a secret in env, before creating anything', async () => {
      await expect(t.runtime.run(t.spec({ end: { exit: 0 } }, { user: '0:0' }))).rejects.toBeInstanceOf(ContainerSpecError);
      await expect(t.runtime.run(t.spec({ end: { exit: 0 } }, { env: { AWS_SECRET_ACCESS_KEY: 'x' } }))).rejects.toBeInstanceOf(SecretInEnvironmentError);
    }, timeoutMs);

    it('keeps running when the observer throws, and still removes the container', async () => {
      const r = await t.runtime.run(t.spec({ lines: [{ text: 'a' }, { text: 'b' }], end: { exit: 0 } }), {
        onLine: () => {
          throw new Error('observer bug');
        },
      });
      expect(r.failureClass).toBeNull();
      expect(r.lastLines).toEqual(expect.arrayContaining(['a', 'b']));
    }, timeoutMs);

    it('ensureImage: nothing to do for a present image; an image no registry has fails with ImagePullError', async () => {
      await expect(t.runtime.ensureImage(t.presentImage)).resolves.toBeUndefined();
      await expect(t.runtime.ensureImage('127.0.0.1:9/stationthis-test/absent:never')).rejects.toBeInstanceOf(ImagePullError);
    }, timeoutMs);

    it('sweepOrphans removes the orphans whose owner says "not mine", keeps owned and undecided ones', async () => {
      const base = { jobId: `conf-job-${Date.now()}`, workerId: t.workerId };
      const dead = await t.plantOrphan({ ...base, attemptId: 'dead' });
      const live = await t.plantOrphan({ ...base, attemptId: 'live' });
      const undecided = await t.plantOrphan({ ...base, attemptId: 'undecided' });
      try {
        const removed = await t.runtime.sweepOrphans(async (labels) => {
          // Other suites may share this engine: only this target's containers are ours to judge.
          if (labels[LABELS.workerId] !== t.workerId) return true;
          if (labels[LABELS.attemptId] === 'undecided') throw new Error('ownership store unreachable');
          return labels[LABELS.attemptId] === 'live';
        });
        expect(removed).toEqual([dead]);
        expect(await t.labelsOf(dead)).toBeNull();
        expect(await t.labelsOf(live)).toMatchObject({ [LABELS.attemptId]: 'live' });
        expect(await t.labelsOf(undecided)).toMatchObject({ [LABELS.attemptId]: 'undecided' });
      } finally {
        await t.runtime.sweepOrphans(async (labels) => labels[LABELS.workerId] !== t.workerId);
      }
    }, timeoutMs);
  });
}
