/** Registry look-ups, platform mapping and sanitisers. */
import {
  getRecipe,
  jobParametersFromPlatformDoc,
  listRecipes,
  recipeForModelType,
  requiredWeights,
  sanitizeOutputName,
  sanitizeTriggerWord,
  TRIGGER_WORD_PATTERN,
  LIB_NAME,
} from '../index';

describe('registry', () => {
  it('lists menu recipes; includeInternal adds smoke and the operator-only ones', () => {
    expect(LIB_NAME).toBe('@stationthis/recipes');
    expect(listRecipes().map((r) => r.id)).toEqual(['sdxl-lora', 'flux-lora', 'kontext-lora', 'wan-lora']);
    expect(listRecipes({ includeInternal: true }).map((r) => r.id)).toEqual(['sdxl-lora', 'flux-lora', 'kontext-lora', 'wan-lora', 'flux2-klein-lora', 'smoke-cpu']);
    expect(getRecipe('smoke-cpu').product).toBe(false);
  });
  it('getRecipe names the valid ids', () => {
    expect(() => getRecipe('sd15-lora')).toThrow('unknown recipe id "sd15-lora"; valid ids: sdxl-lora, flux-lora, kontext-lora, wan-lora, flux2-klein-lora, smoke-cpu');
  });
  it('maps platform model types case-insensitively, KONTEXT included', () => {
    expect(recipeForModelType('SDXL').id).toBe('sdxl-lora');
    expect(recipeForModelType('flux').id).toBe('flux-lora');
    expect(recipeForModelType(' Wan ').id).toBe('wan-lora');
    expect(recipeForModelType('smoke').id).toBe('smoke-cpu');
    expect(recipeForModelType('KONTEXT').id).toBe('kontext-lora');
    expect(recipeForModelType('kontext').id).toBe('kontext-lora');
    expect(() => recipeForModelType('SD1.5')).toThrow(/unknown model type "SD1.5"; supported model types: SDXL, FLUX, KONTEXT, WAN, SMOKE$/);
  });
  it('keeps an operator-only family off the menu and unmapped until an operator enables it', () => {
    // Flag off (the default): listed nowhere users look, and its model type is refused with how to enable it.
    expect(listRecipes().map((r) => r.id)).not.toContain('flux2-klein-lora');
    expect(() => recipeForModelType('FLUX2_KLEIN_4B')).toThrow(/FLUX\.2 \[klein\] 4B LoRA \(flux2-klein-lora\) is not offered yet: an operator enables it with RECIPES_ENABLED=flux2-klein-lora\. Supported model types: SDXL, FLUX, KONTEXT, WAN, SMOKE$/);
    // It still exists for tests, conformance and image builds.
    expect(getRecipe('flux2-klein-lora').availability).toBe('operator-only');
    // Flag on.
    const enabled = ['flux2-klein-lora'];
    expect(listRecipes({ enabled }).map((r) => r.id)).toEqual(['sdxl-lora', 'flux-lora', 'kontext-lora', 'wan-lora', 'flux2-klein-lora']);
    expect(recipeForModelType('flux2_klein_4b', { enabled }).id).toBe('flux2-klein-lora');
    // Enabling an unknown id changes nothing.
    expect(listRecipes({ enabled: ['nope'] }).map((r) => r.id)).toEqual(['sdxl-lora', 'flux-lora', 'kontext-lora', 'wan-lora']);
  });
  it('every model type maps to exactly one recipe', () => {
    const all = listRecipes({ includeInternal: true });
    const types = all.flatMap((r) => (r.modelTypes ?? [r.family]).map((t) => t.toUpperCase()));
    expect(new Set(types).size).toBe(types.length);
  });
  it('every recipe pins a full 40-hex engine commit and a non-latest image', () => {
    for (const r of listRecipes({ includeInternal: true })) {
      expect(r.engine.commit).toMatch(/^[0-9a-f]{40}$/);
      expect(r.image.builderBase.image).not.toMatch(/:latest$|^[^:]+$/);
      expect(r.image.runtimeBase.image).not.toMatch(/:latest$|^[^:]+$/);
      expect(r.version).toMatch(/^\d+\.\d+\.\d+$/);
      expect(r.network).toBeUndefined(); // NetworkMode none: tokenizers are baked in at build time
      for (const p of r.image.pipRequirements) expect(p).toMatch(/^[A-Za-z0-9_.[\]-]+==[\w.+]+$/);
    }
    expect(getRecipe('sdxl-lora').engine.commit).toBe('48d368fa557731ad0488c07304dfeba8c07910eb');
    expect(getRecipe('wan-lora').engine.commit).toBe('30c658c4f4b0bf05038b3346eff9670259b10fc7');
  });
  it('requiredWeights narrows WAN to one DiT plus VAE and T5', () => {
    const wan = getRecipe('wan-lora');
    const v = wan.validate({ task: 't2v-A14B', wan22Expert: 'high-noise' });
    if (!v.ok) throw new Error('invalid');
    expect(requiredWeights(wan, v.value).map((w) => w.role)).toEqual(['dit_t2v_a14b_high', 'vae', 't5']);
    const flux = getRecipe('flux-lora');
    expect(requiredWeights(flux, {}).map((w) => w.role)).toEqual(['dit', 'clip_l', 't5xxl', 'ae']);
    expect(requiredWeights(getRecipe('smoke-cpu'), {})).toEqual([]);
  });
});

describe('jobParametersFromPlatformDoc', () => {
  it('maps trainingJobs fields, coercing numeric strings, and lets `parameters` override', () => {
    const doc = {
      _id: 'x',
      modelType: 'SDXL',
      steps: 2000,
      learningRate: '0.0002',
      batchSize: '2',
      resolution: '1024x1024',
      loraRank: 16,
      loraAlpha: '',
      loraDropout: null,
      triggerWord: 'ignored',
      parameters: { optimizer: 'Adafactor', steps: 1200 },
    };
    expect(jobParametersFromPlatformDoc(doc)).toEqual({ steps: 1200, learningRate: 0.0002, batchSize: 2, resolution: 1024, loraRank: 16, optimizer: 'Adafactor' });
  });
  it('keeps junk so validation reports it with a path', () => {
    const raw = jobParametersFromPlatformDoc({ steps: 'lots', parameters: { bogus: 1 } });
    const v = getRecipe('sdxl-lora').validate(raw);
    expect(v.ok).toBe(false);
    if (!v.ok) expect(v.issues.map((i) => i.path).sort()).toEqual(['parameters.bogus', 'parameters.steps']);
  });
  it('handles resolution arrays and refuses a non-object `parameters`', () => {
    expect(jobParametersFromPlatformDoc({ resolution: [512, 768, 1024] })).toEqual({ resolution: 1024 });
    expect(() => jobParametersFromPlatformDoc({ parameters: 'x' })).toThrow(/must be an object/);
  });
  it('a platform default job validates for SDXL and FLUX', () => {
    const raw = jobParametersFromPlatformDoc({ steps: 1000, learningRate: 0.0001, batchSize: 1, resolution: '1024', loraRank: 32, loraAlpha: 32, loraDropout: 0 });
    expect(getRecipe('sdxl-lora').validate(raw).ok).toBe(true);
    expect(getRecipe('flux-lora').validate(raw).ok).toBe(true);
  });
});

describe('sanitisers', () => {
  it.each([
    ['sks dog', 'sks_dog'],
    ['  Café  Noir ', 'Cafe_Noir'],
    ['--output_dir=/etc', 'output_diretc'],
    ['../../x', 'x'],
    ['a"b\'c;rm -rf', 'abcrm_-rf'],
    ['miladystation_v2.1', 'miladystation_v2_1'], // the platform's prompt tokenizer splits on '.'
  ])('sanitizeTriggerWord(%j) = %j', (input, out) => {
    expect(sanitizeTriggerWord(input)).toBe(out);
    expect(sanitizeTriggerWord(input)).toMatch(TRIGGER_WORD_PATTERN);
  });
  it('trigger words are at most 50 characters and never empty', () => {
    expect(sanitizeTriggerWord('x'.repeat(80))).toHaveLength(50);
    expect(() => sanitizeTriggerWord('!!!')).toThrow(/no usable characters/);
    expect(() => sanitizeTriggerWord('   ')).toThrow(/no usable characters/);
  });
  it('output names drop dots and slashes', () => {
    expect(sanitizeOutputName('My LoRA v1.0/../x')).toBe('My_LoRA_v10x');
    expect(sanitizeOutputName('-rm')).toBe('rm');
    expect(() => sanitizeOutputName('...')).toThrow(/no usable characters/);
  });
  it('are idempotent', () => {
    for (const s of ['sks dog', 'a.b-c', 'Ünïcödé wörd', '__x__']) {
      expect(sanitizeTriggerWord(sanitizeTriggerWord(s))).toBe(sanitizeTriggerWord(s));
      expect(sanitizeOutputName(sanitizeOutputName(s))).toBe(sanitizeOutputName(s));
    }
  });
});
