import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ContainerRunSpec } from '../container-runtime';
import { ImagePullError } from '../docker-container-runtime';
import { describeContainerRuntimeConformance, type ConformanceBehaviour, type ContainerRuntimeConformanceTarget } from './conformance';
import { FakeContainerRuntime } from './fake-container-runtime';

const IMAGE = 'stationthis-test/fake-present:1';

/** A spec factory like the real harness's: unique attempt ids, a temp log dir. */
function specs(dir: string, workerId: string) {
  let n = 0;
  return (overrides: Partial<ContainerRunSpec> = {}): ContainerRunSpec => {
    n++;
    return {
      image: IMAGE,
      argv: ['train'],
      workdir: '/tmp',
      mounts: [],
      gpus: null,
      labels: { jobId: 'job-fake', attemptId: `attempt-${n}`, workerId },
      deadlineMs: 60_000,
      stallTimeoutMs: 60_000,
      stopGraceSeconds: 1,
      logFilePath: path.join(dir, `run-${n}.log`),
      ...overrides,
    };
  };
}

async function fakeTarget(): Promise<ContainerRuntimeConformanceTarget> {
  const runtime = new FakeContainerRuntime({ presentImages: [IMAGE] });
  const workerId = 'fake-worker';
  const dir = await mkdtemp(path.join(os.tmpdir(), 'st-fake-runtime-'));
  const next = specs(dir, workerId);
  const mine = () => runtime.containers().filter((c) => c.labels['ai.stationthis.worker-id'] === workerId);
  return {
    runtime,
    workerId,
    presentImage: IMAGE,
    spec: (behaviour: ConformanceBehaviour, overrides = {}) => {
      const spec = next(overrides);
      // Keyed by attempt id: a run that throws before it starts does not shift the scripts of later runs.
      runtime.whenRun((s) => s.labels.attemptId === spec.labels.attemptId, behaviour);
      return spec;
    },
    labelsOf: async (id) => runtime.containers().find((c) => c.id === id)?.labels ?? null,
    leftovers: async () => mine().map((c) => c.id),
    plantOrphan: async (labels) => runtime.plantContainer(labels),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}

describeContainerRuntimeConformance('in-memory fake', fakeTarget);

describe('FakeContainerRuntime scripting', () => {
  let dir: string;
  let spec: ReturnType<typeof specs>;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'st-fake-script-'));
    spec = specs(dir, 'w');
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('plays queued scripts in order, then rules (latest first), then exit 0', async () => {
    const fake = new FakeContainerRuntime()
      .whenRun(() => true, { end: { exit: 1 } })
      .whenRun((s) => s.labels.step === 'train', { end: { exit: 2 } })
      .enqueue({ end: { exit: 7 } }, (s) => ({ lines: [{ text: `argv ${s.argv.join(' ')}` }], end: { exit: 8 } }));
    const codes = [];
    for (const step of ['a', 'b', 'train', 'other']) codes.push((await fake.run(spec({ labels: { jobId: 'j', attemptId: step, workerId: 'w', step } }))).exitCode);
    expect(codes).toEqual([7, 8, 2, 1]);
    expect(new FakeContainerRuntime().runs).toEqual([]);
    expect((await new FakeContainerRuntime().run(spec())).failureClass).toBeNull();
    expect(fake.runs.map((r) => r.result.exitCode)).toEqual([7, 8, 2, 1]);
    expect(fake.runs[1].result.lastLines).toEqual(['argv train']);
  });

  it('runs the effect with the spec before the lines (e.g. the trainer writes its output into a mount)', async () => {
    const out = path.join(dir, 'out');
    const fake = new FakeContainerRuntime().enqueue({
      effect: async (s) => writeFile(path.join(s.mounts[0].hostPath, 'lora.safetensors'), 'weights'),
      end: { exit: 0 },
    });
    await mkdir(out, { recursive: true });
    const r = await fake.run(spec({ mounts: [{ hostPath: out, containerPath: '/output', readOnly: false }] }));
    expect(r.failureClass).toBeNull();
    expect(await readFile(path.join(out, 'lora.safetensors'), 'utf8')).toBe('weights');
  });

  it('reports a refused create as infrastructure with the reason', async () => {
    const fake = new FakeContainerRuntime().enqueue({ failToCreate: 'could not select device driver "nvidia"' });
    const r = await fake.run(spec());
    expect(r).toMatchObject({ containerId: '', failureClass: 'infrastructure' });
    expect(r.failureMessage).toMatch(/nvidia/);
  });

  it('"pulls" only pullable images and records the registry, never the password', async () => {
    const fake = new FakeContainerRuntime({ presentImages: [], pullableImages: ['r/x:1'] });
    expect((await fake.run(spec({ image: 'r/x:1' }))).failureClass).toBe('infrastructure');
    await fake.ensureImage('r/x:1', { username: 'u', password: 'p4ss', serveraddress: 'r' });
    expect(fake.pulls).toEqual([{ ref: 'r/x:1', serveraddress: 'r' }]);
    expect((await fake.run(spec({ image: 'r/x:1' }))).failureClass).toBeNull();
    await expect(fake.ensureImage('r/y:1')).rejects.toBeInstanceOf(ImagePullError);
  });

  it('splits \\r redraws and caps long lines like the real runtime', async () => {
    const lines: string[] = [];
    const fake = new FakeContainerRuntime({ maxLineBytes: 16 }).enqueue({ lines: [{ text: 'steps: 1%\rsteps: 2%', stream: 'stderr' }, { text: 'x'.repeat(40) }] });
    await fake.run(spec(), { onLine: (l) => lines.push(l) });
    expect(lines[0]).toBe('steps: 1%');
    expect(lines[1]).toBe('steps: 2%');
    expect(lines[2]).toMatch(/^x{16} …\[24 bytes truncated\]$/);
  });
});
