/**
 * Test-only crash injection: a MovementProbe that stops the "process" after
 * its n-th write, and a database handle that, like a killed process, writes
 * nothing afterwards (so its locks stay held until they expire).
 */
import type { Collection, Db } from 'mongodb';
import type { MovementProbe } from '../src';

/** Thrown by the probe at the chosen write. */
export class SimulatedCrashError extends Error {
  constructor(readonly step: string) {
    super(`Simulated crash after step ${step}.`);
    this.name = 'SimulatedCrashError';
  }
}

/** Every call on a collection of a killed process fails, as nothing more reaches the server. */
export class ProcessKilledError extends Error {
  constructor() {
    super('This simulated process was killed; it cannot reach the database any more.');
    this.name = 'ProcessKilledError';
  }
}

/** A handle on `db` that can be cut off at once, mid-call. */
export function killableDb(db: Db): { db: Db; kill(): void } {
  let dead = false;
  const guard = <T extends object>(target: T): T =>
    new Proxy(target, {
      get(t, prop) {
        const value = Reflect.get(t, prop, t) as unknown;
        if (typeof value !== 'function') return value;
        return (...args: unknown[]) => {
          if (dead) throw new ProcessKilledError();
          return (value as (...a: unknown[]) => unknown).apply(t, args);
        };
      },
    });
  const proxy = new Proxy(db, {
    get(t, prop) {
      if (prop === 'collection') return (...args: Parameters<Db['collection']>) => guard(t.collection(...args) as Collection);
      const value = Reflect.get(t, prop, t) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(t) : value;
    },
  });
  return { db: proxy, kill: () => (dead = true) };
}

/**
 * A probe for a ledger built on `killable.db`: after the n-th write it kills
 * the handle and throws SimulatedCrashError. `before` runs on every step first
 * (e.g. another party's write in a chosen window).
 */
export function crashAfterWrite(
  n: number,
  killable: { kill(): void },
  before?: (step: string) => void | Promise<void>,
): MovementProbe & { crashedAt: string | null } {
  let count = 0;
  const probe = {
    crashedAt: null as string | null,
    async after(step: string) {
      await before?.(step);
      if (++count === n) {
        probe.crashedAt = step;
        killable.kill();
        throw new SimulatedCrashError(step);
      }
    },
  };
  return probe;
}
