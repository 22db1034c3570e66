/** The platform's offerings in one place: values, bounds, and the recipes that use them. */
import { getRecipe, listRecipes, OFFERINGS, offeringDefault, type OfferingId } from '../index';

describe('offerings', () => {
  it('holds the platform trainingOfferings.js values', () => {
    expect(OFFERINGS['kontext-lora']).toMatchObject({
      baseModel: 'KONTEXT',
      status: 'active',
      minImages: 15,
      costPoints: 120000,
      defaults: { steps: 3000, learningRate: 1e-4, loraRank: 16, loraAlpha: 16 },
      trainingModes: ['style_subject', 'concept'],
    });
    expect(OFFERINGS['sdxl-lora']).toMatchObject({ minImages: 20, maxImages: 40, status: 'active' });
    expect(OFFERINGS['wan-lora'].status).toBe('hidden');
  });

  it('every offering id is a recipe id with the same platform model type', () => {
    for (const o of Object.values(OFFERINGS)) {
      const r = getRecipe(o.id);
      expect((r.modelTypes ?? [r.family]).map((t) => t.toUpperCase())).toContain(o.baseModel);
    }
  });

  it('a recipe that uses its offering defaults has them as schema defaults, inside its bounds', () => {
    for (const o of Object.values(OFFERINGS).filter((x) => x.recipeUsesDefaults)) {
      const r = getRecipe(o.id);
      const v = r.validate({});
      if (!v.ok) throw new Error('defaults invalid');
      expect(v.value).toMatchObject(o.defaults);
      if (o.trainingModes) expect((v.value as { trainingMode?: string }).trainingMode).toBe(o.trainingModes[0]);
      expect(r.datasetRequirements.recommendedImages).toBe(o.minImages);
    }
  });

  it('job parameters override the defaults within bounds; outside them they are refused with the range', () => {
    const r = getRecipe('kontext-lora');
    const ok = r.validate({ steps: 500, loraRank: 64 });
    expect(ok.ok && ok.value).toMatchObject({ steps: 500, loraRank: 64, learningRate: 1e-4 });
    const bad = r.validate({ steps: 50, loraRank: 256 });
    expect(bad.ok).toBe(false);
    if (!bad.ok) expect(bad.issues.map((i) => `${i.path} ${i.allowed}`).sort()).toEqual(['parameters.loraRank integer 1..128', 'parameters.steps integer 100..10000']);
  });

  it('offeringDefault refuses a platform default outside the recipe bounds, and falls back when none is stated', () => {
    expect(offeringDefault('kontext-lora', 'steps', 1, { min: 100, max: 10000 })).toBe(3000);
    expect(offeringDefault('wan-lora' as OfferingId, 'steps', 1000, { min: 100, max: 10000 })).toBe(1000);
    expect(() => offeringDefault('kontext-lora', 'steps', 1, { min: 100, max: 2000 })).toThrow(/offering kontext-lora: default steps=3000 is outside the recipe's bounds 100\.\.2000/);
  });

  it('the active offerings are on the menu', () => {
    const menu = listRecipes().map((r) => r.id);
    for (const o of Object.values(OFFERINGS).filter((x) => x.status === 'active')) expect(menu).toContain(o.id);
  });
});
