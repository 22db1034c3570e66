import type { Collection, Db, Filter, ObjectId } from 'mongodb';
import { inject, injectable } from 'tsyringe';
import { toObjectIdOrString, type IdLike } from '@stationthis/common';
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
