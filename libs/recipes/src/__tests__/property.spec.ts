/**
 * Property tests (fast-check): any valid parameter set renders, and any
 * invalid one is rejected with a dotted path. Arbitraries are derived from
 * each recipe's exported JSON Schema, so new fields are covered automatically.
 */
import fc from 'fast-check';
import { listRecipes, sanitizeOutputName, sanitizeTriggerWord, type Recipe } from '../index';
import { renderInput } from '../__fixtures__/helpers';

interface Prop {
  type?: string;
  minimum?: number;
  maximum?: number;
  multipleOf?: number;
  enum?: unknown[];
}

function propsOf(recipe: Recipe): Record<string, Prop> {
  return (recipe.jsonSchema() as { properties: Record<string, Prop> }).properties;
}

function valueArb(name: string, p: Prop): fc.Arbitrary<unknown> {
  if (name === 'frameCount') return fc.integer({ min: 0, max: 20 }).map((n) => 4 * n + 1); // 4n+1 rule
  if (p.enum) return fc.constantFrom(...p.enum);
  if (p.type === 'boolean') return fc.boolean();
  if (p.type === 'integer') {
    const step = p.multipleOf ?? 1;
    const lo = Math.ceil(p.minimum! / step);
    const hi = Math.floor(p.maximum! / step);
    return fc.integer({ min: lo, max: hi }).map((n) => n * step);
  }
  return fc.double({ min: p.minimum!, max: p.maximum!, noNaN: true, noDefaultInfinity: true });
}

/** A partial valid parameter object (absent fields take defaults). */
function validArb(recipe: Recipe): fc.Arbitrary<Record<string, unknown>> {
  const props = propsOf(recipe);
  const model = Object.fromEntries(Object.entries(props).map(([k, p]) => [k, valueArb(k, p)]));
  return fc.record(model, { requiredKeys: [] }).map((params) => {
    // Respect the documented cross-field rules.
    const out: Record<string, unknown> = { ...params };
    if (typeof out['lrWarmupSteps'] === 'number') out['lrWarmupSteps'] = Math.min(out['lrWarmupSteps'] as number, ((out['steps'] as number) ?? 100) - 1);
    if (out['task'] === 't2v-1.3B' && typeof out['blocksToSwap'] === 'number') out['blocksToSwap'] = Math.min(out['blocksToSwap'] as number, 29);
    if (out['fp8Scaled'] === true) out['fp8Base'] = true;
    return out;
  });
}

/** One field made invalid: out of range, wrong type, not in the enum, or an unknown key. */
function invalidArb(recipe: Recipe): fc.Arbitrary<{ params: Record<string, unknown>; path: string }> {
  const props = propsOf(recipe);
  const fields = Object.keys(props);
  const broken = fc.constantFrom(...fields).chain((field) => {
    const p = props[field]!;
    let bad: fc.Arbitrary<unknown>;
    if (p.enum) bad = fc.oneof(fc.string().filter((s) => !p.enum!.includes(s)), fc.constant(null));
    else if (p.type === 'boolean') bad = fc.oneof(fc.constant('yes'), fc.integer());
    else
      bad = fc.oneof(
        fc.double({ min: p.maximum! + 1, max: p.maximum! * 10 + 10, noNaN: true }),
        fc.double({ min: -1e6, max: p.minimum! - 1e-9, noNaN: true }),
        fc.constant('12'),
        fc.constant(Number.NaN),
      );
    return bad.map((value) => ({ field, value }));
  });
  const unknown = fc.string({ minLength: 1, maxLength: 12 }).filter((k) => !fields.includes(k) && !/^(__proto__|constructor|prototype)$/.test(k)).map((field) => ({ field, value: 1 as unknown }));
  return fc.tuple(validArb(recipe), fc.oneof(broken, unknown)).map(([params, { field, value }]) => ({ params: { ...params, [field]: value }, path: `parameters.${field}` }));
}

const TEXT = fc.string({ minLength: 1, maxLength: 40 }).filter((s) => /[A-Za-z0-9]/.test(s));

describe.each(listRecipes({ includeInternal: true }).map((r) => [r.id, r] as const))('%s properties', (_id, recipe) => {
  it('any valid parameter set (and any sanitised names) validates and renders', () => {
    fc.assert(
      fc.property(validArb(recipe), TEXT, TEXT, fc.integer({ min: 0, max: 200 }), fc.integer({ min: 0, max: 20 }), (raw, trigger, name, images, videos) => {
        const v = recipe.validate(raw);
        if (!v.ok) throw new Error(`valid input rejected: ${JSON.stringify(raw)} → ${JSON.stringify(v.issues)}`);
        const input = {
          ...renderInput(recipe, v.value, { imageCount: images, videoCount: recipe.datasetRequirements.allowVideo ? videos : 0 }),
          triggerWord: sanitizeTriggerWord(trigger),
          outputName: sanitizeOutputName(name),
        };
        const job = recipe.render(input);
        expect(job.steps.length).toBeGreaterThan(0);
        expect(job.outputs.lora).toBe(`${input.outputName}.safetensors`);
        for (const s of job.steps) for (const a of s.argv) expect(typeof a).toBe('string');
        const q = recipe.quote(v.value, input.dataset);
        expect(Number.isInteger(q.points) && q.points > 0).toBe(true);
        expect(q.breakdown.reduce((s, l) => s + l.points, 0)).toBe(q.points);
      }),
      { numRuns: 150 },
    );
  });
  it('any invalid parameter set is rejected with the offending dotted path', () => {
    fc.assert(
      fc.property(invalidArb(recipe), ({ params, path }) => {
        const v = recipe.validate(params);
        expect(v.ok).toBe(false);
        if (!v.ok) {
          expect(v.issues.map((i) => i.path)).toContain(path);
          for (const i of v.issues) expect(i.path.startsWith('parameters.') || i.path === 'parameters').toBe(true);
        }
      }),
      { numRuns: 150 },
    );
  });
});
