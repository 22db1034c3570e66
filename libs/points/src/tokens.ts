import type { Db } from 'mongodb';
import type { InjectionToken } from 'tsyringe';
import type { MovementProbe } from './movement-journal';
import type { ResolvedPointsLedgerOptions } from './options';

/**
 * The database holding the platform's `credit_ledger`. Our own token (adapter
 * libs never import each other): the worker binds it to the same Db as
 * @stationthis/db's MONGO_DB.
 */
export const POINTS_DB = Symbol('PointsDb') as InjectionToken<Db>;

/** The ledger's validated tunables (registerPoints binds them; unbound means the defaults). */
export const POINTS_LEDGER_OPTIONS = Symbol('PointsLedgerOptions') as InjectionToken<ResolvedPointsLedgerOptions>;

/**
 * Told after every write a movement makes. Production binds nothing (or
 * NO_MOVEMENT_PROBE); crash-window tests bind a probe that stops the process
 * at a chosen write.
 */
export const MOVEMENT_PROBE = Symbol('MovementProbe') as InjectionToken<MovementProbe>;
