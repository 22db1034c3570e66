/** The FLUX.1 Kontext recipe: both training modes, saves and resume, the CPU test run, registration and quotes. */
import { applyArgvSubstitutions, CONTAINER_PATHS, getRecipe, jobParametersFromPlatformDoc, OFFERINGS, recipeForModelType, requiredWeights, testRunWeights, type Recipe, type RenderInput } from '../index';
import { KONTEXT_SAMPLE_CONTROL, KONTEXT_SAMPLE_CONTROL_PY, type KontextParameters } from '../recipes/kontext';
import { renderInput } from '../__fixtures__/helpers';

const recipe = getRecipe('kontext-lora') as unknown as Recipe<KontextParameters>;

function params(raw: Record<string, unknown> = {}): KontextParameters {
  const v = recipe.validate(raw);
  if (!v.ok) throw new Error(JSON.stringify(v.issues));
  return v.value;
}

function input(raw: Record<string, unknown> = {}, extra: Partial<RenderInput<KontextParameters>> = {}): RenderInput<KontextParameters> {
  return { ...renderInput(recipe, params(raw)), ...extra };
}

function argOf(argv: string[], flag: string): string | undefined {
  const i = argv.indexOf(flag);
  return i < 0 ? undefined : argv[i + 1];
}

const trainOf = (job: ReturnType<typeof recipe.render>) => job.steps.find((s) => s.name === 'train')!.argv;
const fileOf = (job: ReturnType<typeof recipe.render>, path: string) => job.files.find((f) => f.path === path)?.content;

describe('kontext-lora recipe', () => {
  it('is the platform KONTEXT offering on musubi-tuner, beside WAN, with the offering defaults', () => {
    expect(recipeForModelType('KONTEXT')).toBe(recipe);
    expect(recipe.engine).toEqual(getRecipe('wan-lora').engine);
    expect(recipe.image.torchBase).toEqual(getRecipe('wan-lora').image.torchBase);
    expect(recipe.image.pipRequirements).toEqual(getRecipe('wan-lora').image.pipRequirements);
    expect(recipe.image.name).not.toBe(getRecipe('wan-lora').image.name);
    const p = params();
    const offer = OFFERINGS['kontext-lora'];
    expect(p).toMatchObject({ trainingMode: 'style_subject', steps: 3000, learningRate: 1e-4, loraRank: 16, loraAlpha: 16 });
    expect([p.steps, p.learningRate, p.loraRank, p.loraAlpha]).toEqual([offer.defaults.steps, offer.defaults.learningRate, offer.defaults.loraRank, offer.defaults.loraAlpha]);
    expect(recipe.datasetRequirements.recommendedImages).toBe(offer.minImages);
    expect(offer.trainingModes).toEqual(['style_subject', 'concept']);
  });

  it('takes the platform trainingMode and overrides within bounds, refusing what is outside', () => {
    const raw = jobParametersFromPlatformDoc({ modelType: 'KONTEXT', trainingMode: 'concept', steps: '1500', loraRank: 32 });
    expect(params(raw)).toMatchObject({ trainingMode: 'concept', steps: 1500, loraRank: 32, loraAlpha: 16 });
    const bad = recipe.validate({ trainingMode: 'edit', steps: 20000 });
    expect(bad.ok).toBe(false);
    if (!bad.ok) expect(bad.issues.map((i) => i.path).sort()).toEqual(['parameters.steps', 'parameters.trainingMode']);
  });

  it('declares the weight files and roles musubi takes (BFL single-file DiT and AE, T5-XXL, CLIP-L)', () => {
    expect(requiredWeights(recipe, params()).map((w) => [w.role, w.fileName])).toEqual([
      ['dit', 'flux1-kontext-dev.safetensors'],
      ['vae', 'ae.safetensors'],
      ['text_encoder1', 't5xxl_fp16.safetensors'],
      ['text_encoder2', 'clip_l.safetensors'],
    ]);
    // Shared with FLUX.1 [dev]: the same cache entries and R2 keys.
    const flux = getRecipe('flux-lora').weights;
    for (const f of ['ae.safetensors', 't5xxl_fp16.safetensors', 'clip_l.safetensors']) {
      expect(recipe.weights.find((w) => w.fileName === f)?.r2Key).toBe(flux.find((w) => w.fileName === f)?.r2Key);
    }
    expect(recipe.image.tokenizers?.map((t) => [t.repo, t.loader])).toEqual([
      ['openai/clip-vit-large-patch14', 'CLIPTokenizer'],
      ['google/t5-v1_1-xxl', 'T5Tokenizer'],
    ]);
  });

  it('renders the three musubi steps with the documented flags', () => {
    const job = recipe.render(input());
    expect(job.steps.map((s) => s.name)).toEqual(['cache-latents', 'cache-text-encoder', 'train']);
    expect(job.steps[0]!.argv.slice(0, 2)).toEqual(['python', '/opt/musubi-tuner/src/musubi_tuner/flux_kontext_cache_latents.py']);
    expect(argOf(job.steps[0]!.argv, '--vae')).toBe(`${CONTAINER_PATHS.models}/ae.safetensors`);
    expect(argOf(job.steps[1]!.argv, '--text_encoder1')).toBe(`${CONTAINER_PATHS.models}/t5xxl_fp16.safetensors`);
    expect(argOf(job.steps[1]!.argv, '--text_encoder2')).toBe(`${CONTAINER_PATHS.models}/clip_l.safetensors`);
    const train = trainOf(job);
    expect(train).toContain('/opt/musubi-tuner/src/musubi_tuner/flux_kontext_train_network.py');
    expect(argOf(train, '--network_module')).toBe('networks.lora_flux');
    expect(argOf(train, '--dit')).toBe(`${CONTAINER_PATHS.models}/flux1-kontext-dev.safetensors`);
    expect(argOf(train, '--timestep_sampling')).toBe('flux_shift');
    expect(argOf(train, '--mixed_precision')).toBe('bf16');
    expect(train).toEqual(expect.arrayContaining(['--fp8_base', '--fp8_scaled', '--sdpa', '--gradient_checkpointing']));
    // fp8Scaled describes fp8 weights: without fp8Base it is left out, not refused.
    expect(trainOf(recipe.render(input({ fp8Base: false })))).not.toContain('--fp8_scaled');
  });

  it('style_subject: every target gets the blank control, resized down to 256²', () => {
    expect(recipe.controlImagesFor!(params())).toEqual({ source: 'blank' });
    const toml = fileOf(recipe.render(input()), 'dataset.toml')!;
    expect(toml).toContain(`image_directory = "${CONTAINER_PATHS.dataset}"`);
    expect(toml).toContain(`control_directory = "${CONTAINER_PATHS.control}"`);
    expect(toml).toContain('control_resolution = [256, 256]');
    // Samples are text-to-image (no reference).
    expect(fileOf(recipe.render(input({}, { controlImages: ['img_0001.png'] })), 'sample_prompts.txt')).not.toContain('--ci');
  });

  it('concept: the paired controls, resized to their target, and previews of the learned edit', () => {
    expect(recipe.controlImagesFor!(params({ trainingMode: 'concept' }))).toEqual({ source: 'paired' });
    const job = recipe.render(input({ trainingMode: 'concept' }, { controlImages: ['img_0001.webp', 'img_0002.png'] }));
    const toml = fileOf(job, 'dataset.toml')!;
    expect(toml).toContain(`control_directory = "${CONTAINER_PATHS.control}"`);
    expect(toml).not.toContain('control_resolution');
    const prompts = fileOf(job, 'sample_prompts.txt')!.trim().split('\n');
    expect(prompts).toHaveLength(3);
    // The previews use the first pair's control, scaled to the training size by the first step (musubi samples a control at its own size).
    expect(KONTEXT_SAMPLE_CONTROL).toBe(`${CONTAINER_PATHS.output}/sample-control/control.png`);
    for (const line of prompts) expect(line.endsWith(`--ci ${KONTEXT_SAMPLE_CONTROL}`)).toBe(true);
    expect(prompts[0]).toBe(`sks_dog --w 768 --h 768 --d 42 --s 20 --g 2.5 --ci ${KONTEXT_SAMPLE_CONTROL}`);
    expect(job.steps.map((s) => s.name)).toEqual(['sample-control', 'cache-latents', 'cache-text-encoder', 'train']);
    expect(job.steps[0]).toEqual({
      name: 'sample-control',
      argv: ['python', `${CONTAINER_PATHS.job}/scale_sample_control.py`, `${CONTAINER_PATHS.control}/img_0001.webp`, KONTEXT_SAMPLE_CONTROL, '768'],
      reportsTrainingProgress: false,
    });
    expect(fileOf(job, 'scale_sample_control.py')).toBe(KONTEXT_SAMPLE_CONTROL_PY);
    expect(recipe.render(input({ trainingMode: 'concept', resolution: 512 }, { controlImages: ['a.png'] })).steps[0]!.argv.slice(2)).toEqual([
      `${CONTAINER_PATHS.control}/a.png`,
      KONTEXT_SAMPLE_CONTROL,
      '512',
    ]);
    // No previews, no control names, or style_subject: no scaling step, no script, no --ci.
    for (const [raw, controls] of [
      [{ trainingMode: 'concept', samplePreview: false }, ['img_0001.png']],
      [{ trainingMode: 'concept' }, undefined],
      [{}, ['img_0001.png']],
    ] as const) {
      const other = recipe.render(input(raw, controls ? { controlImages: [...controls] } : {}));
      expect(other.steps.map((s) => s.name)).toEqual(['cache-latents', 'cache-text-encoder', 'train']);
      expect(fileOf(other, 'scale_sample_control.py')).toBeUndefined();
      expect(fileOf(other, 'sample_prompts.txt') ?? '').not.toContain('--ci');
    }
    // A hostile control name never reaches the prompt file or the step.
    expect(() => recipe.render(input({ trainingMode: 'concept' }, { controlImages: ['../../etc/passwd --w 9999'] }))).toThrow(/control image name must be a plain file name/);
  });

  it('saves like WAN and resumes by training what is left (musubi restarts its count)', () => {
    const job = recipe.render(input({ steps: 1000, saveEveryNSteps: 250 }));
    expect(job.outputs.saves).toMatchObject({ everySteps: 250, totalSteps: 1000, stateTemplate: 'my_lora_v1-step{step}-state', stepsAfterResume: 'restarts' });
    const train = trainOf(job);
    expect(argOf(train, '--save_every_n_steps')).toBe('250');
    expect(train).toContain('--save_state');
    const resumed = trainOf(recipe.render(input({ steps: 1000, saveEveryNSteps: 250 }, { resume: { step: 500, stateDir: 'my_lora_v1-step00000500-state' } })));
    expect(argOf(resumed, '--max_train_steps')).toBe('500');
    expect(argOf(resumed, '--resume')).toBe(`${CONTAINER_PATHS.output}/my_lora_v1-step00000500-state`);
    expect(recipe.render(input({ saveEveryNSteps: 0, samplePreview: false })).outputs).toEqual({ lora: 'my_lora_v1.safetensors' });
  });

  it('runs on CPU as a two-step test without sampling or fp8, keeping every weight the steps load', () => {
    const train = trainOf(recipe.render(input()));
    const { argv, applied } = applyArgvSubstitutions(train, recipe.testRun!.substitutions);
    expect(argOf(argv, '--max_train_steps')).toBe('2');
    for (const gone of ['--sample_prompts', '--sample_every_n_steps', '--fp8_base', '--fp8_scaled']) expect(argv).not.toContain(gone);
    for (const kept of ['--vae', '--text_encoder1', '--text_encoder2', '--dit']) expect(argv).toContain(kept);
    expect(applied.length).toBeGreaterThanOrEqual(4);
    expect(testRunWeights(recipe, recipe.weights).weights).toEqual(recipe.weights);
    // The preview-control step takes no flag a test run changes: it runs as rendered (and proves the script in the real image).
    const scale = recipe.render(input({ trainingMode: 'concept' }, { controlImages: ['img_0001.png'] })).steps[0]!;
    expect(applyArgvSubstitutions(scale.argv, recipe.testRun!.substitutions)).toEqual({ argv: scale.argv, applied: [] });
  });

  it('registers as KONTEXT so the resolver loads it on Kontext workflows only', () => {
    expect(recipe.baseModel).toBe('KONTEXT');
    expect(recipe.registration).toEqual({ checkpoint: 'KONTEXT' });
    expect(recipe.outputMetadata({ triggerWord: 't', baseModel: 'KONTEXT', jobId: 'j', outputName: 'o' })).toMatchObject({ stationthis_base_model: 'KONTEXT', stationthis_recipe_id: 'kontext-lora' });
  });

  it('quotes concept above style_subject (twice the tokens per step) and grows with steps', () => {
    const style = recipe.quote(params(), { imageCount: 20 });
    const concept = recipe.quote(params({ trainingMode: 'concept' }), { imageCount: 20 });
    const short = recipe.quote(params({ steps: 1000 }), { imageCount: 20 });
    expect(concept.points).toBeGreaterThan(style.points);
    expect(short.points).toBeLessThan(style.points);
    expect(style.breakdown.reduce((s, l) => s + l.points, 0)).toBe(style.points);
  });

  it('accepts only FLUX-style musubi LoRA keys', () => {
    const ok = recipe.checkOutput({
      tensors: {
        'lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight': { dtype: 'BF16', shape: [16, 3072] },
        'lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight': { dtype: 'BF16', shape: [9216, 16] },
        'lora_unet_double_blocks_0_img_attn_qkv.alpha': { dtype: 'BF16', shape: [] },
      },
      metadata: { ss_network_dim: '16' },
    });
    expect(ok.problems).toEqual([]);
    const wan = recipe.checkOutput({ tensors: { 'lora_unet_blocks_0_self_attn_q.lora_down.weight': { dtype: 'BF16', shape: [16, 5120] } }, metadata: {} });
    expect(wan.ok).toBe(false);
  });
});
