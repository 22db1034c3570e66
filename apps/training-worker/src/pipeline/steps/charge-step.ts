/**
 * charge: the quote is recorded (before the charge, so a charge whose flag a
 * crash lost is still settled), then charged once under the job's
 * idempotency key; every later attempt reuses both.
 */
import { injectable } from 'tsyringe';
import { InsufficientPointsError, PointsLedger } from '@stationthis/points';
import { JobFailure } from '../failures';
import type { Attempt, Prepared } from './attempt';

@injectable()
export class ChargeStep {
  constructor(private readonly ledger: PointsLedger) {}

  async run(a: Attempt, p: Prepared): Promise<void> {
    const { state, writer, request } = a;
    if (state.charged) return;
    state.quote ??= { points: p.quote.points, estimatedSeconds: p.quote.estimatedSeconds, gpuUsdPerHour: p.quote.gpuUsdPerHour, platformFee: p.quote.platformFee };
    await writer.setState({ quote: state.quote, recipeId: p.recipe.id, recipeVersion: p.recipe.version });
    try {
      await this.ledger.charge({
        jobId: request.jobId,
        masterAccountId: request.ownerAccountId,
        walletAddress: request.walletAddress,
        points: state.quote.points,
        reason: `${p.recipe.displayName} training quote`,
      });
    } catch (e) {
      if (e instanceof InsufficientPointsError) {
        throw new JobFailure('user-input', `Insufficient points: this training costs up to ${state.quote.points} points but the balance is ${e.balance}. Add points and retry. Nothing was charged.`);
      }
      throw e;
    }
    state.charged = true;
    await writer.setState({ charged: true });
  }
}
