/** Schema bounds, strictness, every-problem-at-once validation and the JSON Schema export. */
import { getRecipe, listRecipes } from '../index';
import { edgeParameters } from '../__fixtures__/helpers';

const ALL = listRecipes({ includeInternal: true });

describe.each(ALL.map((r) => [r.id, r] as const))('%s parameter schema', (_id, recipe) => {
  it('accepts {} and fills every default', () => {
    const v = recipe.validate({});
    expect(v.ok).toBe(true);
    if (v.ok) expect(Object.keys(v.value).sort()).toEqual(Object.keys((recipe.jsonSchema() as { properties: object }).properties).sort());
  });
  it('treats undefined/null input as {}', () => {
    expect(recipe.validate(undefined).ok).toBe(true);
    expect(recipe.validate(null).ok).toBe(true);
  });
  it('accepts both edges of every range', () => {
    for (const edge of ['min', 'max'] as const) {
      const params = { ...edgeParameters(recipe, edge), ...(recipe.id === 'wan-lora' ? { frameCount: edge === 'min' ? 1 : 81, blocksToSwap: edge === 'min' ? 0 : 29 } : {}) };
      const v = recipe.validate(params);
      if (!v.ok) throw new Error(`${edge}: ${JSON.stringify(v.issues)}`);
    }
  });
  it('rejects out-of-range values, wrong types and unknown fields all at once, with paths and allowed ranges', () => {
    const schema = recipe.jsonSchema() as { properties: Record<string, { maximum?: number }> };
    const v = recipe.validate({ steps: 10_000_000, learningRate: 'fast', surprise: 1, another: true });
    expect(v.ok).toBe(false);
    if (v.ok) return;
    const paths = v.issues.map((i) => i.path).sort();
    expect(paths).toEqual(['parameters.another', 'parameters.learningRate', 'parameters.steps', 'parameters.surprise']);
    const steps = v.issues.find((i) => i.path === 'parameters.steps')!;
    expect(steps.allowed).toBe(`integer ${(recipe.parameterSchema as never as { shape: { steps: { def: { innerType: { minValue: number } } } } }).shape.steps.def.innerType.minValue}..${schema.properties['steps']!.maximum}`);
    expect(v.issues.find((i) => i.path === 'parameters.surprise')!.message).toMatch(/unknown parameter 'surprise'/);
  });
  it('rejects a non-object input with the root path', () => {
    const v = recipe.validate(42);
    expect(v.ok).toBe(false);
    if (!v.ok) expect(v.issues[0]!.path).toBe('parameters');
  });
  it('exports a strict draft 2020-12 JSON Schema with defaults and bounds', () => {
    const js = recipe.jsonSchema() as Record<string, unknown> & { properties: Record<string, Record<string, unknown>> };
    expect(js['$schema']).toBe('https://json-schema.org/draft/2020-12/schema');
    expect(js['type']).toBe('object');
    expect(js['additionalProperties']).toBe(false);
    expect(js['required']).toBeUndefined(); // every field has a default
    for (const [name, prop] of Object.entries(js.properties)) {
      expect(prop).toHaveProperty('default');
      expect(typeof prop['description']).toBe('string');
      if (prop['type'] === 'number' || prop['type'] === 'integer') {
        if (!prop['enum']) {
          expect({ name, min: typeof prop['minimum'] }).toEqual({ name, min: 'number' });
          expect({ name, max: typeof prop['maximum'] }).toEqual({ name, max: 'number' });
        }
      }
    }
    expect(() => JSON.stringify(js)).not.toThrow();
  });
});

describe('specific bounds', () => {
  it('SDXL resolution must be a multiple of 64 and says so', () => {
    const v = getRecipe('sdxl-lora').validate({ resolution: 1000 });
    expect(v.ok).toBe(false);
    if (!v.ok) expect(v.issues).toEqual([expect.objectContaining({ path: 'parameters.resolution', allowed: 'integer 512..1536, multiple of 64' })]);
  });
  it('learning rates show readable exponents', () => {
    const v = getRecipe('flux-lora').validate({ learningRate: 1 });
    expect(v.ok).toBe(false);
    if (!v.ok) expect(v.issues[0]!.allowed).toBe('1e-6..0.01');
  });
  it('warm-up must end before training (cross-field)', () => {
    const v = getRecipe('sdxl-lora').validate({ steps: 100, lrWarmupSteps: 100 });
    expect(v.ok).toBe(false);
    if (!v.ok) expect(v.issues).toEqual([{ path: 'parameters.lrWarmupSteps', message: 'must be below steps (100)', allowed: '0..99' }]);
  });
  it('WAN frame counts must be 4n+1', () => {
    const v = getRecipe('wan-lora').validate({ frameCount: 32 });
    expect(v.ok).toBe(false);
    if (!v.ok) expect(v.issues[0]).toMatchObject({ path: 'parameters.frameCount', message: 'must be 4n+1 (1, 5, 9, ..., 81)' });
  });
  it('WAN 1.3B swaps at most 29 blocks; fp8Scaled needs fp8Base', () => {
    const v = getRecipe('wan-lora').validate({ task: 't2v-1.3B', blocksToSwap: 35, fp8Base: false, fp8Scaled: true });
    expect(v.ok).toBe(false);
    if (!v.ok) expect(v.issues.map((i) => i.path)).toEqual(['parameters.blocksToSwap', 'parameters.fp8Scaled']);
  });
  it('smoke resolution is 32 or 64', () => {
    const v = getRecipe('smoke-cpu').validate({ resolution: 48 });
    expect(v.ok).toBe(false);
    if (!v.ok) expect(v.issues[0]!.allowed).toBe('32|64');
  });
  it('enums list their options', () => {
    const v = getRecipe('flux-lora').validate({ optimizer: 'Lion' });
    expect(v.ok).toBe(false);
    if (!v.ok) expect(v.issues[0]).toMatchObject({ path: 'parameters.optimizer', allowed: 'AdamW8bit|AdamW|Adafactor' });
  });
});

describe('platform-tuned FLUX defaults (stationthis-platform.md 4.7) and engine docs', () => {
  it('rank 32 / alpha 32, AdamW8bit, lr 1e-4, batch 1, 512/768/1024, fp16 save', () => {
    const v = getRecipe('flux-lora').validate({});
    if (!v.ok) throw new Error('invalid');
    expect(v.value).toMatchObject({ loraRank: 32, loraAlpha: 32, optimizer: 'AdamW8bit', learningRate: 1e-4, batchSize: 1, resolution: 1024, multiResolution: true, savePrecision: 'fp16', timestepSampling: 'shift', discreteFlowShift: 3.1582, fp8Base: true });
  });
});
