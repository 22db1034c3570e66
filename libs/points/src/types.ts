import type { ObjectId } from 'mongodb';

export type MovementKind = 'charge' | 'refund' | 'credit';
export type CreditKind = 'dataset-creator' | 'trainer';
export type SettleOutcome = 'completed' | 'failed' | 'cancelled';

export interface AccountRef {
  masterAccountId: string | ObjectId;
  walletAddress?: string | null;
}

export interface ChargeInput extends AccountRef {
  jobId: string;
  /** The quote: a positive integer; the charge is never more than this. */
  points: number;
  reason: string;
  /**
   * The platform's attempt number (the job's `retryCount`): each platform Retry
   * is a new charge with its own idempotency key.
   * @default 0
   */
  platformAttempt?: number;
}

export interface Spend {
  entryId: string;
  points: number;
}

export interface ChargeResult {
  key: string;
  jobId: string;
  platformAttempt: number;
  points: number;
  spends: Spend[];
  /** True when this call found the movement already applied (a retry or duplicate). */
  replay: boolean;
  /**
   * True when this attempt's charge was already settled (refunded or
   * reconciled): the points it bought are spent, so a caller must not run the
   * work again under this attempt. A platform Retry charges the next attempt.
   */
  settled: boolean;
}

export interface SettleInput {
  jobId: string;
  /** Points actually used (GPU time); 0 for a platform-side failure. Clamped to [0, charged]. */
  usedPoints: number;
  reason: string;
  /** Picks the ledger entry type the platform uses (TRAINING_REFUND vs TRAINING_REFUND_CANCELLED). */
  outcome?: SettleOutcome;
  /**
   * The platform's attempt number (the job's `retryCount`): each platform Retry
   * is settled on its own, never against another attempt's charge.
   * @default 0
   */
  platformAttempt?: number;
}

export interface SettleResult {
  key: string;
  jobId: string;
  platformAttempt: number;
  charged: number;
  usedPoints: number;
  refunded: number;
  ledgerEntryId: string | null;
  replay: boolean;
}

export interface CreditInput {
  jobId: string;
  recipientAccountId: string | ObjectId;
  /** Lets the platform's wallet-based balance see the credit (EconomyService.creditPoints omits it). */
  recipientWalletAddress?: string | null;
  points: number;
  kind: CreditKind;
  reason: string;
  /**
   * The platform's attempt number (the job's `retryCount`): each platform Retry
   * credits once per platform attempt.
   * @default 0
   */
  platformAttempt?: number;
}

export interface CreditResult {
  key: string;
  jobId: string;
  platformAttempt: number;
  kind: CreditKind;
  points: number;
  ledgerEntryId: string | null;
  replay: boolean;
}

/** One row of points history (the journal document, minus internals). */
export interface LedgerMovement {
  key: string;
  jobId: string;
  /** 0 for rows written before attempts were keyed. */
  platformAttempt: number;
  kind: MovementKind;
  creditKind?: CreditKind;
  accountId: string;
  walletAddress?: string | null;
  points: number;
  reason: string;
  state: 'pending' | 'applied' | 'rolling_back';
  spends?: Spend[];
  usedPoints?: number;
  chargedPoints?: number;
  ledgerEntryId?: string | null;
  createdAt: Date;
  appliedAt?: Date;
}

export interface JobPointsSummary {
  jobId: string;
  charged: number;
  refunded: number;
  credited: Record<CreditKind, number>;
  totalCredited: number;
}

/**
 * Points given to an account outside any job (an operator's top-up, a local
 * demo account): one platform-shaped CONFIRMED credit_ledger entry.
 */
export interface GrantInput extends AccountRef {
  /** Makes the grant happen once: the same key again is a replay. Stored as `grant:<key>`. */
  idempotencyKey: string;
  points: number;
  reason: string;
  /**
   * The entry's `type`, as the platform names its reward entries.
   * @default 'ADMIN_GIFT'
   */
  type?: string;
}

export interface GrantResult {
  key: string;
  points: number;
  ledgerEntryId: string;
  replay: boolean;
}
