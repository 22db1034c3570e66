/**
 * Price quotes in platform points.
 *
 * Formula (documented in README.md):
 *   seconds  = setup + caching(images, videos) + steps × secondsPerStep(params) + sampling
 *   usd      = seconds / 3600 × gpuUsdPerHour(VRAM class of the recipe's recommended GPU)
 *   points   = ceil(usd × (1 + PLATFORM_FEE) × SAFETY_FACTOR / USD_PER_POINT)
 * The quote is the MAXIMUM chargeable amount: the safety factor covers slower
 * hosts and the worker never charges more than the quote (it may charge less).
 *
 * Settlement prices the GPU time actually used the same way, without the
 * safety factor (`usedPoints`). This module is the only place the point value
 * and the fee live: quote (here) and settlement (the worker) cannot disagree.
 */
import type { DatasetSummary, Quote, QuoteLine } from './contract';

/** 1 point = $0.000337 (platform constant, src/core/constants/economy.js). */
export const USD_PER_POINT = 0.000337;
/** Platform fee on training compute, as in the platform's TrainingCostEstimator. */
export const PLATFORM_FEE = 0.2;
/** Head-room so the quote is a ceiling, not an estimate. */
export const SAFETY_FACTOR = 1.5;

/** GPU rental $/hour by VRAM class (platform estimator's table, plus an H100/H200 class). */
export const GPU_USD_PER_HOUR: ReadonlyArray<{ maxVramGb: number; label: string; usdPerHour: number }> = [
  { maxVramGb: 24, label: '24GB', usdPerHour: 0.35 },
  { maxVramGb: 48, label: '48GB', usdPerHour: 0.8 },
  { maxVramGb: 80, label: '80GB', usdPerHour: 1.5 },
  { maxVramGb: Number.POSITIVE_INFINITY, label: '141GB', usdPerHour: 3.0 },
];

export function gpuClassFor(vramGb: number): { label: string; usdPerHour: number } {
  const row = GPU_USD_PER_HOUR.find((r) => vramGb <= r.maxVramGb)!;
  return { label: row.label, usdPerHour: row.usdPerHour };
}

/** Points for a USD amount, rounded up: a charge or quote must never undercount. */
export function usdToPoints(usd: number): number {
  if (!Number.isFinite(usd) || usd < 0) throw new RangeError(`usdToPoints needs a finite, non-negative USD amount, got ${usd}.`);
  // the epsilon stops 1.0000000000000002 from becoming 2 after float division
  // (and max(0, …) stops -0, which Mongo would store as a double -0.0)
  return Math.max(0, Math.ceil(usd / USD_PER_POINT - 1e-9));
}

export function pointsToUsd(points: number): number {
  return points * USD_PER_POINT;
}

/**
 * Points for the GPU time a job actually used: priced like its quote (the
 * quote's GPU rate and fee, recorded when it was made, so a later change of
 * the fee never reprices a running job), never above the quote.
 */
export function usedPoints(quote: Pick<Quote, 'points' | 'gpuUsdPerHour'> & { platformFee?: number }, trainSeconds: number): number {
  const seconds = Math.max(0, Number.isFinite(trainSeconds) ? trainSeconds : 0);
  const usd = (seconds / 3600) * quote.gpuUsdPerHour * (1 + (quote.platformFee ?? PLATFORM_FEE));
  return Math.min(quote.points, usdToPoints(usd));
}

export interface TimeModelLine {
  label: string;
  seconds: number;
}

/**
 * Turn a time model into a Quote. The breakdown lists each time component's
 * share of the points, then the fee and the safety margin, and always sums to
 * `points` exactly.
 */
export function quoteFromTime(lines: TimeModelLine[], vramGb: number): Quote {
  const gpu = gpuClassFor(vramGb);
  const seconds = lines.reduce((s, l) => s + l.seconds, 0);
  const computePointsExact = (seconds / 3600) * gpu.usdPerHour / USD_PER_POINT;
  const points = Math.max(1, usdToPoints((seconds / 3600) * gpu.usdPerHour * (1 + PLATFORM_FEE) * SAFETY_FACTOR));
  const breakdown: QuoteLine[] = lines.map((l) => ({
    label: `${l.label} (~${Math.round(l.seconds)} s on ${gpu.label} at $${gpu.usdPerHour}/h)`,
    points: Math.round(((l.seconds / 3600) * gpu.usdPerHour) / USD_PER_POINT),
  }));
  const computePoints = breakdown.reduce((s, l) => s + l.points, 0);
  const feePoints = Math.round(computePointsExact * PLATFORM_FEE);
  breakdown.push({ label: `platform fee ${Math.round(PLATFORM_FEE * 100)}%`, points: feePoints });
  breakdown.push({ label: `safety margin ×${SAFETY_FACTOR} (maximum chargeable)`, points: points - computePoints - feePoints });
  return { points, estimatedSeconds: Math.ceil(seconds), gpuUsdPerHour: gpu.usdPerHour, platformFee: PLATFORM_FEE, breakdown };
}

/** Items the engine trains on per epoch, for cost: images plus weighted video clips. */
export function datasetItems(dataset: DatasetSummary): { images: number; videos: number } {
  return { images: Math.max(0, Math.floor(dataset.imageCount)), videos: Math.max(0, Math.floor(dataset.videoCount ?? 0)) };
}
