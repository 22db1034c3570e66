/** 1 point = $0.000337 (the platform's constants/economy.js; about 2,967 points per USD). */
export const POINT_USD = 0.000337;

/** Points for a USD amount, rounded up: a charge or quote must never undercount. */
export function usdToPoints(usd: number): number {
  if (!Number.isFinite(usd) || usd < 0) throw new RangeError(`usdToPoints needs a finite, non-negative USD amount, got ${usd}.`);
  // the epsilon stops 1.0000000000000002 from becoming 2 after float division
  return Math.ceil(usd / POINT_USD - 1e-9);
}

export function pointsToUsd(points: number): number {
  return points * POINT_USD;
}
