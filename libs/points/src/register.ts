import type { Db } from 'mongodb';
import { Lifecycle, type DependencyContainer, type InjectionToken } from 'tsyringe';
import { NO_MOVEMENT_PROBE } from './movement-journal';
import { parsePointsLedgerOptions, type PointsLedgerOptions } from './options';
import { PointsLedger } from './points-ledger';
import { POINTS_LEDGER } from './points-ledger.port';
import { MOVEMENT_PROBE, POINTS_DB, POINTS_LEDGER_OPTIONS } from './tokens';

export interface RegisterPointsOptions {
  /** The database holding the platform's `credit_ledger` (in the worker: the same Db as @stationthis/db's MONGO_DB). */
  db: Db;
  /**
   * Ledger tunables, validated here once (a bad value fails registration, not the first charge).
   * @default {} (every PointsLedgerOptions default)
   */
  ledger?: PointsLedgerOptions;
}

/**
 * Binds this library into a composition root:
 * - POINTS_DB, POINTS_LEDGER_OPTIONS (validated), MOVEMENT_PROBE (no-op): values.
 * - PointsLedger: one per container (singleton). It keeps no per-call state
 *   (locks and journals live in the database), so one instance is enough and
 *   saves re-creating its collection handles; correctness never depends on it.
 * - POINTS_LEDGER (the narrow port the pipeline uses): the same singleton.
 * Throws if the library was already registered in this container.
 */
export function registerPoints(container: DependencyContainer, options: RegisterPointsOptions): void {
  for (const token of [POINTS_DB, POINTS_LEDGER_OPTIONS, POINTS_LEDGER, PointsLedger] as Array<InjectionToken<unknown>>) {
    if (container.isRegistered(token)) {
      throw new Error(
        `registerPoints: ${tokenName(token)} is already registered in this container; register the points lib once per composition root.`,
      );
    }
  }
  container.register(POINTS_DB, { useValue: options.db });
  container.register(POINTS_LEDGER_OPTIONS, { useValue: parsePointsLedgerOptions(options.ledger) });
  container.register(MOVEMENT_PROBE, { useValue: NO_MOVEMENT_PROBE });
  container.register(PointsLedger, { useClass: PointsLedger }, { lifecycle: Lifecycle.ContainerScoped });
  container.register(POINTS_LEDGER, { useToken: PointsLedger });
}

function tokenName(token: InjectionToken<unknown>): string {
  return typeof token === 'function' ? token.name : String(token);
}
