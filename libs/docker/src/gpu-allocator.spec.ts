import { container as rootContainer } from 'tsyringe';
import { GpuAllocator, UnsatisfiableGpuRequestError, type Allocation, type GpuRequest } from './gpu-allocator';
import { GPU_INVENTORY, parseGpuDevicesEnv, type GpuInventory } from './gpu-inventory';

const FOUR_GPUS: GpuInventory = { gpus: parseGpuDevicesEnv('0:24,1:24,2:48,3:80')!, cpuSlots: 1, source: 'config' };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('GpuAllocator across 4 fake GPUs', () => {
  it('resolves through tsyringe from the inventory token', () => {
    const c = rootContainer.createChildContainer();
    c.register(GPU_INVENTORY, { useValue: FOUR_GPUS });
    const a = c.resolve(GpuAllocator);
    expect(a.capacity()).toBe(4);
    expect(a.cpuSlotCapacity()).toBe(1);
  });

  it('picks the smallest GPUs that meet the VRAM floor', () => {
    const a = new GpuAllocator(FOUR_GPUS);
    expect(a.allocate({ count: 1, minVramGb: 40 })!.deviceIds).toEqual(['2']);
    expect(a.allocate({ count: 2, minVramGb: 16 })!.deviceIds).toEqual(['0', '1']);
    expect(a.allocate({ count: 1, minVramGb: 16 })!.deviceIds).toEqual(['3']);
    expect(a.allocate({ count: 1 })).toBeNull();
    expect(a.busyCount()).toBe(4);
  });

  it('throws for requests this worker can never satisfy, and returns null for busy ones', () => {
    const a = new GpuAllocator(FOUR_GPUS);
    expect(() => a.allocate({ count: 2, minVramGb: 60 })).toThrow(UnsatisfiableGpuRequestError);
    expect(() => a.allocate({ count: 5 })).toThrow(/only 4 of its 4 GPU/);
    expect(() => a.allocate({ count: -1 })).toThrow(UnsatisfiableGpuRequestError);
    expect(() => new GpuAllocator({ ...FOUR_GPUS, cpuSlots: 0 }).allocate({ count: 0 })).toThrow(/CPU_SLOTS/);
    expect(a.canEverSatisfy({ count: 4 })).toBe(true);
    const all = a.allocate({ count: 4 })!;
    expect(a.allocate({ count: 1 })).toBeNull();
    all.release();
    expect(a.busyCount()).toBe(0);
  });

  it('count 0 takes a CPU slot, not a GPU', () => {
    const a = new GpuAllocator(FOUR_GPUS);
    const cpu = a.allocate({ count: 0 })!;
    expect(cpu).toMatchObject({ deviceIds: [], cpuSlot: true });
    expect(a.cpuSlotsBusy()).toBe(1);
    expect(a.busyCount()).toBe(0);
    expect(a.allocate({ count: 0 })).toBeNull();
    cpu.release();
    cpu.release();
    expect(a.cpuSlotsBusy()).toBe(0);
  });

  it('release is idempotent: a double release does not free devices someone else now holds', () => {
    const a = new GpuAllocator(FOUR_GPUS);
    const first = a.allocate({ count: 4 })!;
    first.release();
    const second = a.allocate({ count: 4 })!;
    first.release();
    expect(a.busyCount()).toBe(4);
    expect(a.allocate({ count: 1 })).toBeNull();
    second.release();
  });

  it('concurrent requests never overlap, and devices come back on every path (return, throw, abort)', async () => {
    const a = new GpuAllocator(FOUR_GPUS);
    const inUse = new Set<string>();
    let overlaps = 0;
    let maxBusy = 0;
    let thrown = 0;
    let aborted = 0;
    let done = 0;
    // Deterministic pseudo-random mix of requests.
    let seed = 7;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const tasks = Array.from({ length: 200 }, async (_, i) => {
      const req: GpuRequest = { count: 1 + Math.floor(rnd() * 3), minVramGb: rnd() < 0.2 ? 40 : 0 };
      if (req.minVramGb === 40) req.count = Math.min(req.count, 2);
      const ac = new AbortController();
      if (i % 17 === 0) setTimeout(() => ac.abort(), rnd() * 20);
      const hold = rnd() * 5;
      const fail = i % 5 === 0;
      try {
        await a.withAllocation(req, ac.signal, async (alloc: Allocation) => {
          for (const id of alloc.deviceIds) {
            if (inUse.has(id)) overlaps++;
            inUse.add(id);
          }
          maxBusy = Math.max(maxBusy, a.busyCount());
          expect(alloc.devices.every((d) => d.vramGb >= (req.minVramGb ?? 0))).toBe(true);
          expect(alloc.deviceIds).toHaveLength(req.count);
          await sleep(hold);
          for (const id of alloc.deviceIds) inUse.delete(id);
          if (fail) throw new Error('training step blew up');
        });
        done++;
      } catch (e) {
        if ((e as Error).name === 'AbortError') aborted++;
        else if ((e as Error).message === 'training step blew up') thrown++;
        else throw e;
      }
    });
    await Promise.all(tasks);
    expect(overlaps).toBe(0);
    expect(maxBusy).toBeLessThanOrEqual(4);
    expect(thrown).toBeGreaterThan(0);
    expect(aborted).toBeGreaterThan(0);
    expect(done + thrown + aborted).toBe(200);
    expect(a.busyCount()).toBe(0);
    expect(a.waitingCount()).toBe(0);
  });

  it('allocateWait wakes a waiter when devices come back, and an aborted waiter leaves the queue', async () => {
    const a = new GpuAllocator(FOUR_GPUS);
    const all = a.allocate({ count: 4 })!;
    const ac = new AbortController();
    const abandoned = a.allocateWait({ count: 1 }, ac.signal);
    const waiting = a.allocateWait({ count: 2, minVramGb: 40 });
    expect(a.waitingCount()).toBe(2);
    ac.abort();
    await expect(abandoned).rejects.toMatchObject({ name: 'AbortError' });
    expect(a.waitingCount()).toBe(1);
    all.release();
    const got = await waiting;
    expect(got.deviceIds).toEqual(['2', '3']);
    expect(a.busyCount()).toBe(2);
    got.release();
    await expect(a.allocateWait({ count: 9 })).rejects.toBeInstanceOf(UnsatisfiableGpuRequestError);
  });
});
