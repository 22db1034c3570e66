import type { Db } from 'mongodb';
import type { InjectionToken } from 'tsyringe';

/**
 * The database holding the platform's `credit_ledger`. Our own token (adapter
 * libs never import each other): the worker binds it to the same Db as
 * @stationthis/db's MONGO_DB.
 */
export const POINTS_DB = Symbol('PointsDb') as InjectionToken<Db>;
