/**
 * GPU-host check, skipped unless STATIONTHIS_GPU_TESTS=1 (needs nvidia-smi on the
 * host and the NVIDIA Container Toolkit in the engine). It starts the container
 * for real and asserts that it sees exactly the allocated GPU.
 */
import { dockerHarness, type DockerHarness } from './__fixtures__/harness';
import { GpuAllocator } from './gpu-allocator';
import { readGpuInventory } from './gpu-inventory';

const onGpuHost = process.env.STATIONTHIS_GPU_TESTS === '1';
const gpuIt = onGpuHost ? it : it.skip;

jest.setTimeout(180_000);

describe('GPU run (GPU hosts only)', () => {
  let h: DockerHarness;
  beforeAll(async () => {
    h = await dockerHarness('gpu');
  });
  afterAll(async () => {
    await h.cleanup();
  });

  gpuIt('the container sees exactly the allocated GPU, with the NGC ulimits and a large /dev/shm', async () => {
    const inventory = await readGpuInventory();
    expect(inventory.source).toBe('nvidia-smi');
    const allocator = new GpuAllocator(inventory);
    const lines: string[] = [];
    let allocated: string[] = [];
    const r = await allocator.withAllocation({ count: 1 }, undefined, (alloc) => {
      allocated = alloc.deviceIds;
      return h.runtime.run(h.spec({ argv: ['bash', '-c', 'nvidia-smi -L; ulimit -l; ulimit -s; df -k /dev/shm | tail -1'], gpus: { deviceIds: alloc.deviceIds } }), {
        onLine: (l) => lines.push(l),
      });
    });
    expect(r.failureClass).toBeNull();
    const listed = lines.filter((l) => l.startsWith('GPU '));
    expect(listed).toHaveLength(1);
    expect(listed[0]).toContain(`UUID: ${allocated[0]}`);
    expect(lines).toContain('unlimited');
    expect(lines).toContain('65536');
    expect(lines.some((l) => /^\S+\s+8388608\s.*\/dev\/shm$/.test(l))).toBe(true);
    expect(allocator.busyCount()).toBe(0);
  });
});
