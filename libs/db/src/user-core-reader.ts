import type { Collection, Db, Filter, ObjectId } from 'mongodb';
import { inject, injectable } from 'tsyringe';
import { toObjectId, toObjectIdOrString, type IdLike } from '@stationthis/common';
import { MONGO_DB } from './mongo';

export const USER_CORE_COLLECTION = 'userCore';

export interface UserWallet {
  address: string;
  isPrimary?: boolean;
  [extra: string]: unknown;
}

/** A `userCore` document: `_id` is the masterAccountId (stationthis-platform.md 1.6). */
export interface UserCoreDoc {
  _id: ObjectId;
  wallets?: UserWallet[];
  platformIdentities?: Record<string, unknown>;
  profile?: Record<string, unknown>;
  status?: string;
  [extra: string]: unknown;
}

/** Read-only: the training system never writes userCore. */
@injectable()
export class UserCoreReader {
  private readonly users: Collection<UserCoreDoc>;

  constructor(@inject(MONGO_DB) db: Db) {
    this.users = db.collection<UserCoreDoc>(USER_CORE_COLLECTION);
  }

  async findById(masterAccountId: IdLike): Promise<UserCoreDoc | null> {
    return this.users.findOne({ _id: toObjectIdOrString(masterAccountId) } as Filter<UserCoreDoc>);
  }

  /** Every wallet address linked to the account, lower-cased (the platform compares them case-insensitively). */
  walletAddresses(user: Pick<UserCoreDoc, 'wallets'> | null | undefined): string[] {
    const wallets = Array.isArray(user?.wallets) ? user.wallets : [];
    return wallets.map((w) => (typeof w?.address === 'string' ? w.address.trim().toLowerCase() : '')).filter((a) => a.length > 0);
  }

  /** The platform's rule (TrainingService.js:55-68): the primary wallet, else the first; lower-cased. */
  primaryWallet(user: Pick<UserCoreDoc, 'wallets'> | null | undefined): string | null {
    const wallets = user?.wallets ?? [];
    const wallet = wallets.find((w) => w.isPrimary) ?? wallets[0];
    return wallet?.address ? wallet.address.toLowerCase() : null;
  }
}

export interface EnsureAccountInput {
  /** The account's `_id` (the platform's masterAccountId): a 24-hex ObjectId. */
  masterAccountId: IdLike;
  /** Stored lower-cased as the account's primary wallet when the account is created. */
  walletAddress: string;
}

/**
 * Creates userCore accounts shaped like the platform's, for local set-ups and
 * demos only (the operator CLI's seed-account). In production the platform
 * creates accounts and the training system only reads them (UserCoreReader).
 */
@injectable()
export class UserCoreAccounts {
  private readonly users: Collection<UserCoreDoc>;

  constructor(@inject(MONGO_DB) db: Db) {
    this.users = db.collection<UserCoreDoc>(USER_CORE_COLLECTION);
  }

  /**
   * The account, created with the wallet as its primary wallet if it does not
   * exist; an existing account is returned unchanged (`created: false`), even
   * when its wallets differ: the caller decides what that means.
   */
  async ensureAccount(input: EnsureAccountInput): Promise<{ user: UserCoreDoc; created: boolean }> {
    const _id = toObjectId(input.masterAccountId, 'masterAccountId');
    const address = input.walletAddress.trim().toLowerCase();
    if (!address) throw new Error(`Cannot create account ${_id.toHexString()}: the wallet address is empty.`);
    const r = await this.users.updateOne(
      { _id },
      { $setOnInsert: { _id, wallets: [{ address, isPrimary: true }], status: 'active', userCreationTimestamp: new Date() } },
      { upsert: true },
    );
    const user = await this.users.findOne({ _id });
    if (!user) throw new Error(`Account ${_id.toHexString()} was upserted but cannot be read back from ${USER_CORE_COLLECTION}; retry.`);
    return { user, created: r.upsertedCount === 1 };
  }
}
