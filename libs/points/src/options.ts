import { z } from 'zod';

/** Tunables of the points ledger. Validated once, when the ledger is built. */
export interface PointsLedgerOptions {
  /**
   * How long a charge may hold its account lock before another caller may take
   * it over (the holder is presumed dead). Renewed before every ledger write.
   * @default 30000
   */
  lockMs?: number;
  /**
   * How long a charge waits for a busy account before MovementBusyError.
   * @default 120000
   */
  lockWaitMs?: number;
  /**
   * Re-plans of a charge that lost a race for an entry before giving up.
   * @default 10
   */
  maxChargeRetries?: number;
}

const optionsSchema = z
  .object({
    lockMs: z.number().int().positive().default(30_000),
    lockWaitMs: z.number().int().nonnegative().default(120_000),
    maxChargeRetries: z.number().int().nonnegative().default(10),
  })
  .strict();

export type ResolvedPointsLedgerOptions = Readonly<Required<PointsLedgerOptions>>;

/** Fills the documented defaults; throws naming every bad field (an unknown one included). */
export function parsePointsLedgerOptions(options: PointsLedgerOptions = {}): ResolvedPointsLedgerOptions {
  const parsed = optionsSchema.safeParse(options);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join('.') || '(options)'}: ${i.message}`).join('; ');
    throw new RangeError(`Invalid points ledger options: ${problems}. See PointsLedgerOptions in @stationthis/points.`);
  }
  return Object.freeze(parsed.data);
}
