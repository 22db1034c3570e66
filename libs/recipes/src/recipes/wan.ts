/**
 * WAN 2.1 / 2.2 text-to-video LoRA with kohya musubi-tuner (docs/wan.md):
 * 1. wan_cache_latents.py        (VAE latents of images and video clips)
 * 2. wan_cache_text_encoder_outputs.py (umT5 embeddings of the captions)
 * 3. wan_train_network.py        (LoRA on the DiT, networks.lora_wan)
 * WAN 2.1 T2V 14B is the default; WAN 2.2 T2V A14B trains one expert per
 * job (low- or high-noise DiT with the documented timestep range); the
 * 1.3B model is offered for cheap tests. See ADR 0003.
 */
import { z } from 'zod';
import type { DatasetSummary, Recipe, RenderInput, ValidationIssue, WeightFile } from '../contract';
import { CONTAINER_PATHS } from '../contract';
import { boolField, enumField, intField, joinPath, numberField, stepField } from '../params';
import { datasetItems, quoteFromTime } from '../pricing';
import { KohyaProgressParser } from '../progress';
import { checkLoraHeader } from '../safetensors';
import { toToml, tomlFloat, type TomlTable } from '../util/toml';
import { samplePromptsFor } from '../saves';
import { accelerateLaunch, defineRecipe, flagsOf, jobPath, modelPath, MUSUBI_DIR, MUSUBI_TUNER, musubiImage, num, stationthisMetadata, TEST_RUN_TWO_STEPS } from './common';
import { accelerateSavePlan, resumeFlags, saveStateFlags, stepsToTrain, TEST_RUN_NO_SAMPLES } from './engine-saves';

const SRC = `${MUSUBI_DIR}/src/musubi_tuner`;
export const WAN_CACHE_LATENTS_SCRIPT = `${SRC}/wan_cache_latents.py`;
export const WAN_CACHE_TE_SCRIPT = `${SRC}/wan_cache_text_encoder_outputs.py`;
export const WAN_TRAIN_SCRIPT = `${SRC}/wan_train_network.py`;
export const WAN_DATASET_TOML = 'dataset.toml';
export const WAN_SAMPLE_PROMPTS = 'sample_prompts.txt';
/** Denoising steps of a sample (musubi's prompt option `--s`). */
export const WAN_SAMPLE_STEPS = 20;
/** Caches live under the writable output mount; the worker uploads only the LoRA. */
export const WAN_CACHE_DIR = `${CONTAINER_PATHS.output}/cache`;

export const wanParameterSchema = z.strictObject({
  task: enumField(['t2v-14B', 't2v-A14B', 't2v-1.3B'] as const, 't2v-14B', 'Model: WAN 2.1 T2V 14B, WAN 2.2 T2V A14B (one expert) or WAN 2.1 T2V 1.3B.'),
  wan22Expert: enumField(['low-noise', 'high-noise'] as const, 'low-noise', 'WAN 2.2 only: which expert DiT to train (low noise = detail, high noise = layout/motion).'),
  steps: intField(100, 10000, 1000, 'Optimizer steps (max_train_steps).'),
  learningRate: numberField(1e-6, 1e-2, 1e-4, 'Learning rate for the LoRA.'),
  batchSize: intField(1, 4, 1, 'Items per step.'),
  resolution: stepField(256, 1280, 16, 512, 'Image training resolution (square bucket side), multiple of 16.'),
  videoResolution: stepField(256, 832, 16, 384, 'Video clip training resolution (square bucket side), multiple of 16.'),
  frameCount: z
    .number()
    .int()
    .min(1)
    .max(81)
    .refine((v) => (v - 1) % 4 === 0, { message: 'must be 4n+1 (1, 5, 9, ..., 81)' })
    .default(33)
    .describe('Frames per video clip; WAN needs 4n+1 (1, 5, 9, ..., 81).'),
  videoFps: numberField(1, 120, 30, 'Frame rate of the uploaded clips; musubi-tuner resamples them to WAN\'s 16 fps (source_fps).'),
  clipsPerVideo: intField(1, 8, 3, 'Clips of frameCount frames taken per video, spread evenly over its length (frame_extraction uniform); 1 takes the first frames only.'),
  loraRank: intField(1, 128, 32, 'LoRA rank (network_dim).'),
  loraAlpha: numberField(0.5, 128, 16, 'LoRA alpha (network_alpha); scale is alpha/rank.'),
  loraDropout: numberField(0, 0.5, 0, 'Dropout on LoRA activations (network_dropout); 0 disables it.'),
  optimizer: enumField(['AdamW8bit', 'AdamW', 'Adafactor'] as const, 'AdamW8bit', 'Optimizer (optimizer_type).'),
  numRepeats: intField(1, 100, 1, 'Times each item is repeated per epoch (affects epoch count only).'),
  discreteFlowShift: numberField(0.5, 20, 3, 'Flow shift for shift timestep sampling (discrete_flow_shift).'),
  fp8Base: boolField(true, 'Keep the frozen DiT in fp8 (fp8_base).'),
  fp8Scaled: boolField(false, 'Scaled fp8 (fp8_scaled): better quality than plain fp8; needs fp8Base.'),
  blocksToSwap: intField(0, 39, 0, 'DiT blocks offloaded to CPU (blocks_to_swap): at most 39 for 14B, 29 for 1.3B.'),
  seed: intField(0, 2147483647, 42, 'Random seed.'),
  saveEveryNSteps: intField(0, 10000, 250, 'Save an intermediate LoRA and the training state (resume point) every N steps; 0 saves only the final one.'),
  samplePreview: boolField(
    true,
    'Render one still image (a single frame) per sample prompt at each save, or at the end without saves. Stills, not clips: a clip of frameCount frames costs about (frameCount+3)/4 times as much.',
  ),
  savePrecision: enumField(['bf16', 'fp16', 'float'] as const, 'bf16', 'dtype of the saved LoRA (musubi default is fp32).'),
});

export type WanParameters = z.infer<typeof wanParameterSchema>;

// ComfyUI repackaged single files (Comfy-Org/Wan_2.1_ComfyUI_repackaged, Wan_2.2_ComfyUI_Repackaged).
export const WAN_WEIGHTS: WeightFile[] = [
  { role: 'dit_t2v_14b', fileName: 'wan2.1_t2v_14B_bf16.safetensors', r2Key: 'diffusion_models/wan2.1_t2v_14B_bf16.safetensors', approxBytes: 28_600_000_000 },
  { role: 'dit_t2v_1_3b', fileName: 'wan2.1_t2v_1.3B_bf16.safetensors', r2Key: 'diffusion_models/wan2.1_t2v_1.3B_bf16.safetensors', approxBytes: 2_840_000_000 },
  { role: 'dit_t2v_a14b_low', fileName: 'wan2.2_t2v_low_noise_14B_fp16.safetensors', r2Key: 'diffusion_models/wan2.2_t2v_low_noise_14B_fp16.safetensors', approxBytes: 28_600_000_000 },
  { role: 'dit_t2v_a14b_high', fileName: 'wan2.2_t2v_high_noise_14B_fp16.safetensors', r2Key: 'diffusion_models/wan2.2_t2v_high_noise_14B_fp16.safetensors', approxBytes: 28_600_000_000 },
  { role: 'vae', fileName: 'wan_2.1_vae.safetensors', r2Key: 'vae/wan_2.1_vae.safetensors', approxBytes: 254_000_000 },
  { role: 't5', fileName: 'models_t5_umt5-xxl-enc-bf16.pth', r2Key: 'text_encoders/models_t5_umt5-xxl-enc-bf16.pth', approxBytes: 11_400_000_000 },
];

export function wanDitRole(p: Pick<WanParameters, 'task' | 'wan22Expert'>): string {
  if (p.task === 't2v-1.3B') return 'dit_t2v_1_3b';
  if (p.task === 't2v-A14B') return p.wan22Expert === 'high-noise' ? 'dit_t2v_a14b_high' : 'dit_t2v_a14b_low';
  return 'dit_t2v_14b';
}

/**
 * The DiT's weight dtype decides the mixed precision: wan_train_network.py
 * asserts bf16 weights train in bf16 and fp16 weights in fp16. The WAN 2.2
 * repackaged experts are fp16.
 */
export function wanMixedPrecision(p: Pick<WanParameters, 'task'>): 'bf16' | 'fp16' {
  return p.task === 't2v-A14B' ? 'fp16' : 'bf16';
}

/** WAN 2.2 T2V timestep ranges per expert (docs/wan.md): boundary 875. */
export const WAN22_T2V_TIMESTEPS = { 'low-noise': [0, 875], 'high-noise': [875, 1000] } as const;

function wanDatasetToml(input: RenderInput<WanParameters>): string {
  const p = input.parameters;
  const datasets: TomlTable[] = [];
  // Both sources read the same read-only mount: musubi's image source globs
  // image extensions and its video source globs video extensions.
  if (input.dataset.imageCount > 0 || (input.dataset.videoCount ?? 0) === 0) {
    datasets.push({
      resolution: [p.resolution, p.resolution],
      image_directory: CONTAINER_PATHS.dataset,
      cache_directory: `${WAN_CACHE_DIR}/images`,
      num_repeats: p.numRepeats,
    });
  }
  if ((input.dataset.videoCount ?? 0) > 0) {
    datasets.push({
      resolution: [p.videoResolution, p.videoResolution],
      video_directory: CONTAINER_PATHS.dataset,
      cache_directory: `${WAN_CACHE_DIR}/videos`,
      target_frames: [p.frameCount],
      // Whole clips, not just their first second: clips spread evenly over each video,
      // after resampling from the clips' frame rate to the model's 16 fps.
      frame_extraction: p.clipsPerVideo > 1 ? 'uniform' : 'head',
      ...(p.clipsPerVideo > 1 ? { frame_sample: p.clipsPerVideo } : {}),
      source_fps: tomlFloat(p.videoFps),
      num_repeats: p.numRepeats,
    });
  }
  return toToml({
    general: { caption_extension: '.txt', batch_size: p.batchSize, enable_bucket: true, bucket_no_upscale: false },
    datasets,
  });
}

function wanTrainArgv(input: RenderInput<WanParameters>): string[] {
  const p = input.parameters;
  const precision = wanMixedPrecision(p);
  const argv = [
    ...accelerateLaunch(precision),
    WAN_TRAIN_SCRIPT,
    '--task',
    p.task,
    '--dit',
    modelPath(input, WAN_WEIGHTS, wanDitRole(p)),
    '--dataset_config',
    jobPath(WAN_DATASET_TOML),
    '--sdpa',
    '--mixed_precision',
    precision,
  ];
  if (p.fp8Base) argv.push('--fp8_base');
  if (p.fp8Scaled) argv.push('--fp8_scaled');
  if (p.blocksToSwap > 0) argv.push('--blocks_to_swap', String(p.blocksToSwap));
  argv.push('--optimizer_type', p.optimizer);
  if (p.optimizer === 'Adafactor') argv.push('--optimizer_args', 'relative_step=False', 'scale_parameter=False', 'warmup_init=False');
  argv.push(
    '--learning_rate',
    num(p.learningRate),
    '--gradient_checkpointing',
    '--max_data_loader_n_workers',
    '2',
    '--persistent_data_loader_workers',
    '--network_module',
    'networks.lora_wan',
    '--network_dim',
    String(p.loraRank),
    '--network_alpha',
    num(p.loraAlpha),
  );
  if (p.loraDropout > 0) argv.push('--network_dropout', num(p.loraDropout));
  argv.push('--timestep_sampling', 'shift', '--discrete_flow_shift', num(p.discreteFlowShift));
  if (p.task === 't2v-A14B') {
    const [lo, hi] = WAN22_T2V_TIMESTEPS[p.wan22Expert];
    argv.push('--min_timestep', String(lo), '--max_timestep', String(hi), '--preserve_distribution_shape');
  }
  // musubi restarts its step count on resume: train what is left (engine-saves.ts). The LR is constant, so the schedule needs nothing.
  const trainSteps = stepsToTrain(p.steps, input.resume);
  const saves = wanSavePlan(input);
  argv.push('--max_train_steps', String(trainSteps));
  if (saves) argv.push('--save_every_n_steps', String(saves.everySteps), ...saveStateFlags(saves.everySteps));
  if (input.resume) argv.push(...resumeFlags(input.resume));
  if (p.samplePreview) {
    // Sampling encodes the prompts with T5 before the DiT loads, and decodes with the VAE (kept on the CPU between samples).
    argv.push(
      '--sample_prompts',
      jobPath(WAN_SAMPLE_PROMPTS),
      '--sample_every_n_steps',
      String(saves ? saves.everySteps : trainSteps),
      '--vae',
      modelPath(input, WAN_WEIGHTS, 'vae'),
      '--t5',
      modelPath(input, WAN_WEIGHTS, 't5'),
    );
  }
  argv.push(
    '--save_precision',
    p.savePrecision,
    '--seed',
    String(p.seed),
    '--output_dir',
    CONTAINER_PATHS.output,
    '--output_name',
    input.outputName,
    '--metadata_title',
    input.outputName,
  );
  return argv;
}

/** The saves of a WAN job (engine-saves.ts): checkpoint, state and, with samplePreview, one still per prompt (`_000.png`, frame 0). */
export function wanSavePlan(input: RenderInput<WanParameters>) {
  const p = input.parameters;
  return accelerateSavePlan(input.outputName, p.steps, p.saveEveryNSteps, p.samplePreview ? 'musubi-frame-png' : undefined);
}

/**
 * musubi's prompt file (training/sampling_prompts.py line_to_prompt_dict): one
 * prompt per line, `--w/--h` size (the image training resolution), `--f 1` one
 * frame (a still: saved as `<stem>_000.png`), `--d` fixed seed, `--s` steps.
 * musubi adds WAN's default negative prompt, so each sample runs with CFG.
 */
export function wanSamplePrompts(input: RenderInput<WanParameters>): string {
  const p = input.parameters;
  const options = ['--w', String(p.resolution), '--h', String(p.resolution), '--f', '1', '--d', String(p.seed), '--s', String(WAN_SAMPLE_STEPS)];
  return samplePromptsFor(input).map((prompt) => [prompt, ...options].join(' ')).join('\n') + '\n';
}

function wanCacheLatentsArgv(input: RenderInput<WanParameters>): string[] {
  return ['python', WAN_CACHE_LATENTS_SCRIPT, '--dataset_config', jobPath(WAN_DATASET_TOML), '--vae', modelPath(input, WAN_WEIGHTS, 'vae'), '--vae_cache_cpu'];
}

function wanCacheTextArgv(input: RenderInput<WanParameters>): string[] {
  return ['python', WAN_CACHE_TE_SCRIPT, '--dataset_config', jobPath(WAN_DATASET_TOML), '--t5', modelPath(input, WAN_WEIGHTS, 't5'), '--batch_size', '16'];
}

function wanCrossCheck(p: WanParameters): ValidationIssue[] {
  const issues: ValidationIssue[] = [];
  if (p.task === 't2v-1.3B' && p.blocksToSwap > 29) {
    issues.push({ path: joinPath(['blocksToSwap']), message: 'the 1.3B model has 30 blocks: swap at most 29', allowed: '0..29' });
  }
  if (p.fp8Scaled && !p.fp8Base) {
    issues.push({ path: joinPath(['fp8Scaled']), message: 'fp8Scaled requires fp8Base', allowed: 'false unless fp8Base is true' });
  }
  return issues;
}

const SAMPLE_INPUT = (parameters: WanParameters): RenderInput<WanParameters> => ({
  jobId: 'x',
  triggerWord: 'x',
  outputName: 'x',
  dataset: { imageCount: 1, videoCount: 1 },
  baseModelFiles: {},
  parameters,
});
const WAN_ALL_PARAMS: WanParameters = {
  ...wanParameterSchema.parse({}),
  task: 't2v-A14B',
  fp8Scaled: true,
  blocksToSwap: 1,
  optimizer: 'Adafactor',
  loraDropout: 0.1,
};
/** Every flag the training step can emit: all options on, resumed. */
const WAN_ALL_INPUT: RenderInput<WanParameters> = { ...SAMPLE_INPUT(WAN_ALL_PARAMS), resume: { step: 250, stateDir: 'x-step00000250-state' } };

export const wanRecipe: Recipe<WanParameters> = defineRecipe<WanParameters>({
  id: 'wan-lora',
  version: '1.2.0',
  family: 'WAN',
  displayName: 'WAN 2.1 / 2.2 T2V LoRA',
  description:
    'Text-to-video LoRA for WAN 2.1 T2V 14B (default), WAN 2.2 T2V A14B (one expert) or WAN 2.1 1.3B, trained with musubi-tuner on images and video clips with cached latents and text-encoder outputs.',
  product: true,
  baseModel: 'WAN',
  engine: MUSUBI_TUNER,
  image: musubiImage([
    { argv: ['python', WAN_TRAIN_SCRIPT, '--help'], flags: flagsOf(wanTrainArgv(WAN_ALL_INPUT).slice(accelerateLaunch('bf16').length + 1)) },
    { argv: ['python', WAN_CACHE_LATENTS_SCRIPT, '--help'], flags: flagsOf(wanCacheLatentsArgv(SAMPLE_INPUT(WAN_ALL_PARAMS)).slice(2)) },
    { argv: ['python', WAN_CACHE_TE_SCRIPT, '--help'], flags: flagsOf(wanCacheTextArgv(SAMPLE_INPUT(WAN_ALL_PARAMS)).slice(2)) },
    { argv: ['accelerate', 'launch', '--help'], flags: flagsOf(accelerateLaunch('bf16')) },
  ]),
  gpu: { count: 1, minVramGb: 24, recommendedVramGb: 48 },
  testRun: {
    substitutions: [
      TEST_RUN_TWO_STEPS,
      ...TEST_RUN_NO_SAMPLES,
      // --vae and --t5 stay: without --sample_prompts musubi's training step loads neither (trainer_base._prepare_sampling), and the cache steps need theirs.
      {
        flag: '--fp8_base',
        action: 'drop',
        reason:
          "CPU only: musubi computes WAN's time embedding under autocast(float32), which CUDA honours and CPU autocast does not support (torch: 'In CPU autocast, but the target dtype is not supported'), so F.linear meets Float and Float8_e4m3fn",
      },
    ],
    weightOverrides: [
      {
        role: 'dit_t2v_1_3b',
        fileName: 'wan2.1_t2v_1.3B_fp32.safetensors',
        reason: "CPU only: the same DiT keys in fp32, for the same autocast(float32) reason (bf16 weights meet Float activations); musubi trains in the file's dtype",
      },
    ],
  },
  datasetRequirements: { minImages: 1, recommendedImages: 20, maxImages: 1000, allowVideo: true, extensions: ['jpg', 'jpeg', 'png', 'webp', 'mp4', 'webm', 'mov'] },
  weights: WAN_WEIGHTS,
  weightsFor(p) {
    const roles = new Set([wanDitRole(p), 'vae', 't5']);
    return WAN_WEIGHTS.filter((w) => roles.has(w.role));
  },
  parameterSchema: wanParameterSchema,
  crossCheck: wanCrossCheck,
  quote(p: WanParameters, dataset: DatasetSummary) {
    const { images, videos } = datasetItems(dataset);
    const items = Math.max(1, images + videos);
    const modelScale = p.task === 't2v-1.3B' ? 0.2 : 1;
    const imageStep = 3.0 * (p.resolution / 512) ** 2;
    const latentFrames = (p.frameCount - 1) / 4 + 1;
    const videoStep = 3.0 * (p.videoResolution / 512) ** 2 * latentFrames * 0.8;
    // Steps draw items in proportion to the dataset mix.
    const imageWeight = images > 0 || videos === 0 ? Math.max(images, 1) : 0;
    const meanStep = (imageWeight * imageStep + videos * videoStep) / (imageWeight + videos);
    const stepSeconds = meanStep * p.batchSize * modelScale * (1 + 0.03 * p.blocksToSwap) * (p.fp8Scaled ? 1.05 : 1);
    const saves = p.saveEveryNSteps > 0 ? Math.floor((p.steps - 1) / p.saveEveryNSteps) : 0;
    // A still per default prompt at each save and at the end: 20 steps with CFG at the image resolution.
    const sampleSets = p.samplePreview ? saves + 1 : 0;
    const sampleSeconds = sampleSets * 3 * WAN_SAMPLE_STEPS * 2 * imageStep * 0.4 * modelScale;
    return quoteFromTime(
      [
        { label: 'start-up and model load', seconds: p.task === 't2v-1.3B' ? 180 : 600 },
        { label: `cache latents (${images} images, ${videos} videos)`, seconds: 60 + images * 2 + videos * 15 },
        { label: `cache text-encoder outputs (${items} captions)`, seconds: 120 + items * 0.5 },
        { label: `${p.steps} steps at batch ${p.batchSize}`, seconds: p.steps * stepSeconds },
        { label: `${saves} intermediate saves with training state`, seconds: saves * 8 },
        ...(sampleSets > 0 ? [{ label: `${sampleSets} sample sets (3 stills each)`, seconds: sampleSeconds }] : []),
      ],
      48,
    );
  },
  renderJob(input) {
    const saves = wanSavePlan(input);
    return {
      files: [
        { path: WAN_DATASET_TOML, content: wanDatasetToml(input) },
        ...(input.parameters.samplePreview ? [{ path: WAN_SAMPLE_PROMPTS, content: wanSamplePrompts(input) }] : []),
      ],
      steps: [
        { name: 'cache-latents', argv: wanCacheLatentsArgv(input), reportsTrainingProgress: false },
        { name: 'cache-text-encoder', argv: wanCacheTextArgv(input), reportsTrainingProgress: false },
        { name: 'train', argv: wanTrainArgv(input), reportsTrainingProgress: true },
      ],
      // Sampling WAN video during training is VRAM-heavy (docs/sampling_during_training.md): no previews.
      outputs: {
        lora: `${input.outputName}.safetensors`,
        ...(input.parameters.samplePreview ? { samplesDir: 'sample' } : {}),
        ...(saves ? { saves } : {}),
      },
    };
  },
  createProgressParser: () => new KohyaProgressParser(),
  checkOutput(header) {
    // networks/lora_wan.py: lora_unet_ over the original WAN module names inside WanAttentionBlock
    // (blocks_N_self_attn_q, blocks_N_cross_attn_k, blocks_N_ffn_0 ...). ComfyUI maps lora_unet_<key> generically.
    const dim = Number(header.metadata['ss_network_dim']);
    return checkLoraHeader(header, {
      keyPattern: /^lora_unet_blocks_\d+_\w+\.(lora_down\.weight|lora_up\.weight|alpha)$/,
      keyDescription: 'lora_unet_blocks_N_* (musubi WAN DiT)',
      dtypes: ['F16', 'BF16', 'F32'],
      style: 'kohya',
      ...(Number.isInteger(dim) && dim > 0 ? { rank: dim } : {}),
    });
  },
  outputMetadata(input) {
    return stationthisMetadata(wanRecipe, input, {
      ss_base_model_version: 'wan',
      'modelspec.architecture': 'wan2.1/lora',
    });
  },
});
