import { dockerHarness, type DockerHarness } from './__fixtures__/harness';
import { buildContainerCreateOptions } from './container-spec';
import { GpuAllocator } from './gpu-allocator';
import { parseGpuDevicesEnv } from './gpu-inventory';
import { LABELS } from './labels';

jest.setTimeout(120_000);

/**
 * There is no GPU and no nvidia runtime here, so the GPU request is checked on
 * a created (never started) container: what the engine stored is what it
 * would hand to the NVIDIA toolkit on a GPU host.
 */
describe('the create request sent to the engine (real engine, created not started)', () => {
  let h: DockerHarness;
  beforeAll(async () => {
    h = await dockerHarness('create');
  });
  afterAll(async () => {
    await h.cleanup();
  });

  it('carries exactly the allocated GPUs, limits, hardening, mounts, env and labels', async () => {
    const allocator = new GpuAllocator({ gpus: parseGpuDevicesEnv('0:24,1:48,2:24,3:48')!, cpuSlots: 0, source: 'config' });
    const allocation = allocator.allocate({ count: 2, minVramGb: 40 })!;
    expect(allocation.deviceIds).toEqual(['1', '3']);
    const dataset = await h.mkdir('dataset');
    const output = await h.mkdir('output');
    const spec = h.spec({
      argv: ['accelerate', 'launch', 'train.py', '--config', '/job/spec.toml'],
      workdir: '/output',
      env: { PYTHONUNBUFFERED: '1', HF_HOME: '/tmp/hf' },
      mounts: [
        { hostPath: dataset, containerPath: '/data', readOnly: true },
        { hostPath: output, containerPath: '/output', readOnly: false },
      ],
      gpus: { deviceIds: allocation.deviceIds },
      memoryBytes: 48 * 1024 ** 3,
      pidsLimit: 2048,
      shmSizeBytes: 16 * 1024 ** 3,
      tmpfs: { '/scratch': 'rw,size=1g' },
      stopGraceSeconds: 45,
      labels: { jobId: h.jobId, attemptId: 'attempt-gpu', workerId: h.workerId, step: 'train' },
    });
    const created = await h.docker.createContainer(buildContainerCreateOptions(spec));
    try {
      const info = await created.inspect();
      expect(info.State.Status).toBe('created');
      const hc = info.HostConfig as Record<string, unknown>;
      expect(hc.DeviceRequests).toEqual([
        { Driver: 'nvidia', Count: 0, DeviceIDs: ['1', '3'], Capabilities: [['gpu']], Options: null },
      ]);
      expect(hc).toMatchObject({
        NetworkMode: 'none',
        ReadonlyRootfs: true,
        CapDrop: ['ALL'],
        CapAdd: null,
        SecurityOpt: ['no-new-privileges'],
        Privileged: false,
        Init: true,
        Memory: 48 * 1024 ** 3,
        MemorySwap: 48 * 1024 ** 3,
        PidsLimit: 2048,
        ShmSize: 16 * 1024 ** 3,
        Ulimits: [
          { Name: 'memlock', Soft: -1, Hard: -1 },
          { Name: 'stack', Soft: 67108864, Hard: 67108864 },
        ],
        Tmpfs: { '/tmp': 'rw,nosuid,nodev,size=2g', '/scratch': 'rw,size=1g' },
        Mounts: [
          { Type: 'bind', Source: dataset, Target: '/data', ReadOnly: true },
          // The engine omits ReadOnly when false.
          { Type: 'bind', Source: output, Target: '/output' },
        ],
        AutoRemove: false,
        RestartPolicy: { Name: 'no', MaximumRetryCount: 0 },
      });
      expect(info.Config).toMatchObject({
        Image: spec.image,
        Cmd: spec.argv,
        WorkingDir: '/output',
        User: '1000:1000',
        Tty: false,
        StopTimeout: 45,
      });
      expect(info.Config.Env).toEqual(expect.arrayContaining(['PYTHONUNBUFFERED=1', 'HF_HOME=/tmp/hf']));
      // Only the image's own defaults (PATH) besides the spec's variables.
      expect(info.Config.Env.filter((e) => !e.startsWith('PATH='))).toHaveLength(2);
      expect(info.Config.Labels).toMatchObject({
        [LABELS.managed]: 'true',
        [LABELS.jobId]: h.jobId,
        [LABELS.attemptId]: 'attempt-gpu',
        [LABELS.workerId]: h.workerId,
        [LABELS.step]: 'train',
      });
      expect(info.Config.Labels[LABELS.networkReason]).toBeUndefined();
    } finally {
      await created.remove({ force: true });
      allocation.release();
    }
    expect(allocator.busyCount()).toBe(0);
  });

  it('a CPU-only spec gets no device request, no GPU ulimits and the small /dev/shm', async () => {
    const created = await h.docker.createContainer(buildContainerCreateOptions(h.spec()));
    try {
      const hc = (await created.inspect()).HostConfig as Record<string, unknown>;
      expect(hc.DeviceRequests).toBeNull();
      expect(hc.Ulimits).toBeNull();
      expect(hc.ShmSize).toBe(64 * 1024 * 1024);
      expect(hc.PidsLimit).toBe(4096);
      expect(hc.Memory).toBe(0);
    } finally {
      await created.remove({ force: true });
    }
  });

  it('on this GPU-less host a GPU run fails to start as infrastructure, and the container is still removed', async () => {
    const r = await h.runtime.run(h.spec({ gpus: { deviceIds: ['0'] } }));
    expect(r.failureClass).toBe('infrastructure');
    expect(r.containerId).not.toBe('');
    expect(r.failureMessage).toMatch(/could not start container/);
    expect(await h.leftovers()).toEqual([]);
  });
});
