/**
 * charge: the quote and the paying accounts are recorded in the attempt
 * record (which is marked `open`, so a charge whose flag a crash lost is still
 * settled), then charged once under the key of this platform attempt. Later
 * claims of the same platform attempt reuse both; a platform Retry is a new
 * attempt record, so it gets a new quote and a new charge.
 */
import { inject, injectable } from 'tsyringe';
import { InsufficientPointsError, POINTS_LEDGER, type PointsLedgerPort } from '@stationthis/points';
import { JobFailure } from '../failures';
import type { Attempt, Prepared } from './attempt';

/** The ledger says this platform attempt's charge was already settled: training now would be free. */
export class AttemptAlreadySettled extends Error {
  override name = 'AttemptAlreadySettled';
}

@injectable()
export class ChargeStep {
  constructor(@inject(POINTS_LEDGER) private readonly ledger: PointsLedgerPort) {}

  async run(a: Attempt, p: Prepared): Promise<void> {
    const { state, writer, request, ref } = a;
    if (state.charged) return;
    state.quote ??= { points: p.quote.points, estimatedSeconds: p.quote.estimatedSeconds, gpuUsdPerHour: p.quote.gpuUsdPerHour, platformFee: p.quote.platformFee };
    // The paying account as bound by prepare from the platform's account records, never the job's own fields.
    state.accounts ??= {
      ownerAccountId: p.payer.masterAccountId,
      walletAddress: p.payer.walletAddress ?? undefined,
      datasetId: request.datasetId,
      datasetCreatorId: p.dataset.ownerAccountId ? String(p.dataset.ownerAccountId) : undefined,
    };
    await writer.setState({ quote: state.quote, accounts: state.accounts, recipeId: p.recipe.id, recipeVersion: p.recipe.version }, { open: true });
    const payer = state.accounts;
    let result;
    try {
      result = await this.ledger.charge({
        jobId: request.jobId,
        platformAttempt: ref.platformAttempt,
        masterAccountId: payer.ownerAccountId,
        walletAddress: payer.walletAddress,
        points: state.quote.points,
        reason: `${p.recipe.displayName} training quote`,
      });
    } catch (e) {
      if (e instanceof InsufficientPointsError) {
        throw new JobFailure('user-input', `Insufficient points: this training costs up to ${state.quote.points} points but the balance is ${e.balance}. Add points and retry. Nothing was charged.`);
      }
      throw e;
    }
    if (result.settled) throw new AttemptAlreadySettled(`platform attempt ${ref.platformAttempt} of job ${request.jobId} was already settled`);
    state.charged = true;
    await writer.setState({ charged: true });
  }
}
