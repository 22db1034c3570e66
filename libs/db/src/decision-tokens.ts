import type { Collection, Db, Filter } from 'mongodb';
import { isDuplicateKeyError } from '@stationthis/common';

/** Our collection of claim / recovery tokens (see DecisionTokens). */
export const CLAIM_TOKENS_COLLECTION = 'trainingJobClaims';

type TokenDoc = { _id: string; at?: Date; [k: string]: unknown };

/**
 * Single-winner decisions (who claims a job generation, who recovers an
 * expired lease): one tiny document per decision, whose unique `_id` makes the
 * decision single-winner. A unique `_id` on insert is the one primitive
 * FerretDB v1 makes atomic under concurrency (its conditional updates are
 * read-modify-write; ADR 0002).
 */
export class DecisionTokens {
  private readonly tokens: Collection<TokenDoc>;

  /** `staleMs`: a token older than this whose holder never finished may be taken over. */
  constructor(
    db: Db,
    private readonly staleMs: number,
  ) {
    this.tokens = db.collection<TokenDoc>(CLAIM_TOKENS_COLLECTION);
  }

  /**
   * Insert a single-winner token. A token whose holder never finished (it died
   * between the token and its write, or its write missed) is taken over once it
   * is older than `staleMs`: a one-time token must never wedge a job.
   */
  async take(id: string, fields: Record<string, unknown>): Promise<boolean> {
    if (await this.insert(id, { ...fields, at: new Date() })) return true;
    const held = await this.tokens.findOne({ _id: id });
    if (!held) return this.insert(id, { ...fields, at: new Date() });
    const at = held.at instanceof Date ? held.at.getTime() : 0;
    if (Date.now() - at < this.staleMs) return false;
    await this.tokens.deleteOne({ _id: id, at: held.at } as Filter<TokenDoc>);
    return this.insert(id, { ...fields, at: new Date(), tookOverFrom: held.at ?? null });
  }

  /**
   * The decision's write missed (the job changed since the read): hand the
   * token back so the next pass decides again from a fresh read. Best effort:
   * a token left behind is taken over once stale.
   */
  async giveBack(id: string): Promise<void> {
    await this.tokens.deleteOne({ _id: id }).catch(() => undefined);
  }

  /** True if we inserted the token (we won the decision), false if it already existed. */
  private async insert(id: string, fields: Record<string, unknown>): Promise<boolean> {
    try {
      await this.tokens.insertOne({ _id: id, ...fields });
      return true;
    } catch (err) {
      if (isDuplicateKeyError(err)) return false;
      throw err;
    }
  }
}
