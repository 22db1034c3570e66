import { inject, injectable } from 'tsyringe';
import { GPU_INVENTORY, type GpuDevice, type GpuInventory } from './gpu-inventory';

/** What a recipe needs: a GPU count (0 = CPU only) and the least VRAM per GPU. */
export interface GpuRequest {
  count: number;
  minVramGb?: number;
}

/** Devices held for one run. `release()` is idempotent; call it on every path (or use `withAllocation`). */
export interface Allocation {
  /** For `ContainerRunSpec.gpus.deviceIds`; empty for a CPU slot. */
  deviceIds: string[];
  devices: GpuDevice[];
  /** True when this allocation holds a CPU slot (count 0) rather than GPUs. */
  cpuSlot: boolean;
  release(): void;
}

export class UnsatisfiableGpuRequestError extends Error {
  readonly code = 'DOCKER.GPU_REQUEST_UNSATISFIABLE';
  constructor(readonly request: GpuRequest, detail: string) {
    super(`This worker can never satisfy a request for ${request.count} GPU(s) with >= ${request.minVramGb ?? 0} GiB each: ${detail}. Route the job to a larger worker or lower the recipe's requirement.`);
    this.name = 'UnsatisfiableGpuRequestError';
  }
}

interface Waiter {
  request: GpuRequest;
  resolve(a: Allocation): void;
  reject(e: unknown): void;
  signal?: AbortSignal;
  onAbort?: () => void;
}

function abortError(signal: AbortSignal): Error {
  const reason = signal.reason;
  if (reason instanceof Error) return reason;
  const e = new Error('Waiting for a GPU allocation was aborted');
  e.name = 'AbortError';
  return e;
}

/**
 * Hands out the inventory's GPUs (and CPU slots for count-0 recipes) with no
 * double booking. Picks the smallest GPUs that meet the VRAM floor, so big
 * cards stay free for big jobs. Single-process: it is the worker's own
 * bookkeeping, not a cluster lock.
 */
@injectable()
export class GpuAllocator {
  private readonly busy = new Set<number>();
  private cpuBusy = 0;
  private readonly waiters: Waiter[] = [];

  constructor(@inject(GPU_INVENTORY) private readonly inventory: GpuInventory) {}

  /** Whether the request fits this worker at all (ignoring what is busy now). */
  canEverSatisfy(request: GpuRequest): boolean {
    return this.whyNever(request) === null;
  }

  /** Takes devices now, or returns null when they are busy. Throws `UnsatisfiableGpuRequestError` when they never could be free. */
  allocate(request: GpuRequest): Allocation | null {
    const never = this.whyNever(request);
    if (never) throw new UnsatisfiableGpuRequestError(request, never);
    return this.tryTake(request);
  }

  /** Waits (first come, first served where it fits) until the request can be met, or `signal` aborts. */
  allocateWait(request: GpuRequest, signal?: AbortSignal): Promise<Allocation> {
    if (signal?.aborted) return Promise.reject(abortError(signal));
    let now: Allocation | null;
    try {
      now = this.allocate(request);
    } catch (e) {
      return Promise.reject(e);
    }
    if (now) return Promise.resolve(now);
    return new Promise<Allocation>((resolve, reject) => {
      const waiter: Waiter = { request, resolve, reject, signal };
      if (signal) {
        waiter.onAbort = () => {
          const i = this.waiters.indexOf(waiter);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(abortError(signal));
        };
        signal.addEventListener('abort', waiter.onAbort, { once: true });
      }
      this.waiters.push(waiter);
    });
  }

  /** Allocates, runs `fn`, and releases on every path (return, throw, abort). */
  async withAllocation<T>(request: GpuRequest, signal: AbortSignal | undefined, fn: (allocation: Allocation) => Promise<T>): Promise<T> {
    const allocation = await this.allocateWait(request, signal);
    try {
      return await fn(allocation);
    } finally {
      allocation.release();
    }
  }

  /** GPUs currently held. */
  busyCount(): number {
    return this.busy.size;
  }

  /** GPUs this worker has. */
  capacity(): number {
    return this.inventory.gpus.length;
  }

  cpuSlotsBusy(): number {
    return this.cpuBusy;
  }

  cpuSlotCapacity(): number {
    return this.inventory.cpuSlots;
  }

  /** Requests waiting in `allocateWait`. */
  waitingCount(): number {
    return this.waiters.length;
  }

  private whyNever(request: GpuRequest): string | null {
    const { count } = request;
    const minVram = request.minVramGb ?? 0;
    if (!Number.isInteger(count) || count < 0) return `count ${count} is not a non-negative integer`;
    if (!(minVram >= 0)) return `minVramGb ${request.minVramGb} is not a non-negative number`;
    if (count === 0) return this.inventory.cpuSlots > 0 ? null : 'the worker has no CPU slots (set CPU_SLOTS)';
    const eligible = this.inventory.gpus.filter((g) => g.vramGb >= minVram).length;
    if (eligible < count) return `only ${eligible} of its ${this.inventory.gpus.length} GPU(s) have that much VRAM`;
    return null;
  }

  private tryTake(request: GpuRequest): Allocation | null {
    if (request.count === 0) {
      if (this.cpuBusy >= this.inventory.cpuSlots) return null;
      this.cpuBusy++;
      return this.makeAllocation([], true);
    }
    const minVram = request.minVramGb ?? 0;
    const free = this.inventory.gpus
      .filter((g) => !this.busy.has(g.index) && g.vramGb >= minVram)
      .sort((a, b) => a.vramGb - b.vramGb || a.index - b.index);
    if (free.length < request.count) return null;
    const chosen = free.slice(0, request.count).sort((a, b) => a.index - b.index);
    for (const g of chosen) this.busy.add(g.index);
    return this.makeAllocation(chosen, false);
  }

  private makeAllocation(devices: GpuDevice[], cpuSlot: boolean): Allocation {
    let released = false;
    return {
      deviceIds: devices.map((d) => d.deviceId),
      devices,
      cpuSlot,
      release: () => {
        if (released) return;
        released = true;
        if (cpuSlot) this.cpuBusy--;
        else for (const d of devices) this.busy.delete(d.index);
        this.serveWaiters();
      },
    };
  }

  private serveWaiters(): void {
    for (let i = 0; i < this.waiters.length; ) {
      const w = this.waiters[i];
      const a = this.tryTake(w.request);
      if (!a) {
        i++;
        continue;
      }
      this.waiters.splice(i, 1);
      if (w.signal && w.onAbort) w.signal.removeEventListener('abort', w.onAbort);
      w.resolve(a);
    }
  }
}
