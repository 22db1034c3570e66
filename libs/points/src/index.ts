export { POINTS_DB } from './tokens';
export { InsufficientPointsError, MovementBusyError, MovementConflictError, SimulatedCrashError } from './errors';
export {
  PointsLedger,
  CREDIT_LEDGER_COLLECTION,
  MOVEMENTS_COLLECTION,
  SPEND_MARKER_FIELD,
  chargeKey,
  refundKey,
  creditKey,
  ledgerEntryIdFor,
  planSpends,
  platformSpendOrder,
} from './points-ledger';
export type * from './types';
