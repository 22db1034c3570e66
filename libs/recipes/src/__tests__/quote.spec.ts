/** Quotes for sample jobs, in platform points (1 point = $0.000337). */
import { getRecipe, GPU_USD_PER_HOUR, PLATFORM_FEE, pointsToUsd, SAFETY_FACTOR, USD_PER_POINT, usdToPoints, usedPoints, type Recipe } from '../index';

function quote(id: string, raw: Record<string, unknown>, dataset: { imageCount: number; videoCount?: number }) {
  const recipe = getRecipe(id) as Recipe;
  const v = recipe.validate(raw);
  if (!v.ok) throw new Error(JSON.stringify(v.issues));
  return recipe.quote(v.value, dataset);
}

describe('quotes', () => {
  it('uses the documented constants', () => {
    expect(USD_PER_POINT).toBe(0.000337);
    expect(PLATFORM_FEE).toBe(0.2);
    expect(SAFETY_FACTOR).toBe(1.5);
    expect(GPU_USD_PER_HOUR.map((g) => g.usdPerHour)).toEqual([0.35, 0.8, 1.5, 3]);
  });

  // Sample jobs; the numbers are pinned so pricing changes are deliberate.
  // 1.2.0 recipes: a sample set (3 default prompts) at each save and a state write per save are priced in.
  it.each([
    ['sdxl-lora', {}, { imageCount: 20 }, 901, 1735],
    ['sdxl-lora', { steps: 3000, batchSize: 2 }, { imageCount: 40 }, 3103, 5975],
    ['flux-lora', {}, { imageCount: 20 }, 1805, 3475],
    ['flux-lora', { steps: 1000 }, { imageCount: 20 }, 1004, 1934],
    ['flux-lora', { steps: 4000, blocksToSwap: 16 }, { imageCount: 30 }, 4756, 9159],
    ['wan-lora', {}, { imageCount: 20 }, 5259, 4430],
    ['wan-lora', {}, { imageCount: 10, videoCount: 10 }, 10843, 9135],
    ['wan-lora', { task: 't2v-1.3B' }, { imageCount: 20 }, 1365, 1150],
    ['smoke-cpu', {}, { imageCount: 6 }, 20, 13],
  ] as const)('%s %j on %j = %i points (~%i s)', (id, raw, dataset, points, seconds) => {
    const q = quote(id, raw, dataset);
    expect({ points: q.points, estimatedSeconds: q.estimatedSeconds }).toEqual({ points, estimatedSeconds: seconds });
  });

  it('matches the formula: ceil(hours × $/h × (1 + fee) × safety / $ per point), and the breakdown sums to the total', () => {
    const q = quote('flux-lora', {}, { imageCount: 20 });
    const expected = Math.ceil(((q.estimatedSeconds / 3600) * q.gpuUsdPerHour * 1.2 * 1.5) / 0.000337);
    expect(Math.abs(q.points - expected)).toBeLessThanOrEqual(2); // estimatedSeconds is rounded up
    expect(q.breakdown.reduce((s, l) => s + l.points, 0)).toBe(q.points);
    expect(q.gpuUsdPerHour).toBe(0.35);
  });

  it('grows with steps, images and resolution', () => {
    const base = quote('sdxl-lora', {}, { imageCount: 20 }).points;
    expect(quote('sdxl-lora', { steps: 3000 }, { imageCount: 20 }).points).toBeGreaterThan(base);
    expect(quote('sdxl-lora', {}, { imageCount: 200 }).points).toBeGreaterThan(base);
    expect(quote('sdxl-lora', { resolution: 1536 }, { imageCount: 20 }).points).toBeGreaterThan(base);
  });

  it('keeps the smoke recipe cheap and small (10-210 points)', () => {
    expect(quote('smoke-cpu', { steps: 10 }, { imageCount: 1 }).points).toBe(11);
    expect(quote('smoke-cpu', { steps: 2000 }, { imageCount: 50 }).points).toBe(210);
    expect(quote('smoke-cpu', {}, { imageCount: 6 }).gpuUsdPerHour).toBe(0.5);
  });
});

describe('units and settlement pricing (the one pricing module)', () => {
  it('uses the platform point', () => {
    expect(usdToPoints(1)).toBe(2968);
    expect(usdToPoints(0.000337)).toBe(1);
    expect(pointsToUsd(10_000)).toBeCloseTo(3.37, 10);
    expect(() => usdToPoints(-1)).toThrow(RangeError);
    expect(() => usdToPoints(Number.NaN)).toThrow(RangeError);
  });

  it('prices used GPU time with the fee the quote recorded, never above the quote', () => {
    const q = quote('sdxl-lora', {}, { imageCount: 20 });
    expect(q.platformFee).toBe(PLATFORM_FEE);
    // One hour at the quote's rate plus the fee, in points.
    expect(usedPoints({ ...q, points: 1e9 }, 3600)).toBe(usdToPoints(q.gpuUsdPerHour * (1 + PLATFORM_FEE)));
    // A fee recorded at quote time wins over today's constant.
    expect(usedPoints({ points: 1e9, gpuUsdPerHour: 1, platformFee: 0 }, 3600)).toBe(usdToPoints(1));
    // Quotes recorded before the fee was recorded use the constant (it was 0.2 then too).
    expect(usedPoints({ points: 1e9, gpuUsdPerHour: 1 }, 3600)).toBe(usdToPoints(1.2));
    expect(usedPoints(q, 10 * q.estimatedSeconds)).toBe(q.points);
    expect(usedPoints(q, 0)).toBe(0);
    expect(usedPoints(q, -5)).toBe(0);
  });

  it('the quote at its own estimate is the used price times the safety factor', () => {
    const q = quote('flux-lora', {}, { imageCount: 20 });
    const used = usedPoints(q, q.estimatedSeconds);
    expect(q.points / used).toBeGreaterThan(SAFETY_FACTOR * 0.99);
    expect(q.points / used).toBeLessThan(SAFETY_FACTOR * 1.01);
  });
});
