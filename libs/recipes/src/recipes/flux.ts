/**
 * FLUX.1 [dev] LoRA with kohya sd-scripts `flux_train_network.py`
 * (docs/flux_train_network.md). Defaults follow the platform's tuned
 * ai-toolkit config (rank 32 / alpha 32, AdamW8bit, lr 1e-4, batch 1,
 * multi-resolution 512/768/1024, bf16 training, fp16 save) translated to
 * sd-scripts, plus the engine docs: guidance 1.0 for dev, shift timestep
 * sampling with discrete_flow_shift 3.1582, raw model prediction, fp8 base on
 * 24 GB, cached text-encoder outputs and latents. See ADR 0003.
 */
import { z } from 'zod';
import type { Recipe, WeightFile } from '../contract';
import { boolField, enumField, intField, numberField, stepField } from '../params';
import { quoteFromTime } from '../pricing';
import { KohyaProgressParser } from '../progress';
import { accelerateLaunch, CLIP_L_TOKENIZER, defineRecipe, flagsOf, modelPath, num, SD_SCRIPTS, SD_SCRIPTS_DIR, sdScriptsImage, stationthisMetadata, T5_XXL_TOKENIZER, TEST_RUN_TWO_STEPS } from './common';
import { checkKohyaLora, kohyaCommonFlags, kohyaDatasetToml, kohyaFiles, kohyaOutputs, kohyaSamplePrompts, kohyaSavePlan, type KohyaCommonParams } from './kohya';
import { TEST_RUN_NO_SAMPLES } from './engine-saves';
import { warmupIssues } from './sdxl';

export const FLUX_SCRIPT = `${SD_SCRIPTS_DIR}/flux_train_network.py`;

/** FLUX.1 dev is guidance-distilled: train with guidance 1.0, not the engine default 3.5. */
export const FLUX_TRAINING_GUIDANCE = 1.0;

export const fluxParameterSchema = z.strictObject({
  steps: intField(100, 10000, 2000, 'Optimizer steps (max_train_steps).'),
  learningRate: numberField(1e-6, 1e-2, 1e-4, 'Learning rate for the LoRA.'),
  batchSize: intField(1, 4, 1, 'Images per step.'),
  resolution: stepField(512, 1024, 64, 1024, 'Largest training resolution (square bucket side), multiple of 64.'),
  loraRank: intField(1, 128, 32, 'LoRA rank (network_dim).'),
  loraAlpha: numberField(0.5, 128, 32, 'LoRA alpha (network_alpha); scale is alpha/rank.'),
  loraDropout: numberField(0, 0.5, 0, 'Dropout on LoRA activations (network_dropout); 0 disables it.'),
  optimizer: enumField(['AdamW8bit', 'AdamW', 'Adafactor'] as const, 'AdamW8bit', 'Optimizer (optimizer_type).'),
  lrScheduler: enumField(['constant', 'constant_with_warmup', 'cosine'] as const, 'constant', 'Learning-rate schedule.'),
  lrWarmupSteps: intField(0, 2000, 0, 'Warm-up steps; must be below steps.'),
  numRepeats: intField(1, 100, 1, 'Times each image is repeated per epoch (affects epoch count only).'),
  seed: intField(0, 2147483647, 42, 'Random seed.'),
  saveEveryNSteps: intField(0, 10000, 250, 'Save an intermediate LoRA every N steps (resume points); 0 saves only the final one.'),
  samplePreview: boolField(true, 'Render one preview image of the trigger word at the end of training.'),
  savePrecision: enumField(['fp16', 'bf16', 'float'] as const, 'fp16', 'dtype of the saved LoRA.'),
  multiResolution: boolField(true, 'Train on 512, 768 and 1024 buckets (those up to resolution), as the platform tuned config does.'),
  timestepSampling: enumField(['shift', 'flux_shift', 'sigmoid'] as const, 'shift', 'Timestep sampling (timestep_sampling).'),
  discreteFlowShift: numberField(0.5, 10, 3.1582, 'Flow shift used with timestepSampling=shift (discrete_flow_shift).'),
  fp8Base: boolField(true, 'Keep the frozen FLUX weights in fp8 (fp8_base): needed on 24 GB cards.'),
  blocksToSwap: intField(0, 35, 0, 'Transformer blocks offloaded to CPU (blocks_to_swap): lower VRAM, slower.'),
});

export type FluxParameters = z.infer<typeof fluxParameterSchema>;

export const FLUX_WEIGHTS: WeightFile[] = [
  { role: 'dit', fileName: 'flux1-dev.safetensors', r2Key: 'unet/flux1-dev.safetensors', approxBytes: 23_800_000_000 },
  { role: 'clip_l', fileName: 'clip_l.safetensors', r2Key: 'clip/clip_l.safetensors', approxBytes: 246_000_000 },
  { role: 't5xxl', fileName: 't5xxl_fp16.safetensors', r2Key: 'clip/t5xxl_fp16.safetensors', approxBytes: 9_790_000_000 },
  { role: 'ae', fileName: 'ae.safetensors', r2Key: 'vae/ae.safetensors', approxBytes: 335_000_000 },
];

export function fluxResolutions(p: Pick<FluxParameters, 'resolution' | 'multiResolution'>): number[] {
  if (!p.multiResolution) return [p.resolution];
  const set = [512, 768, 1024].filter((r) => r < p.resolution);
  return [...set, p.resolution];
}

function fluxTrainArgv(input: Parameters<Recipe<FluxParameters>['render']>[0]): string[] {
  const p = input.parameters;
  const argv = [
    ...accelerateLaunch('bf16'),
    FLUX_SCRIPT,
    '--pretrained_model_name_or_path',
    modelPath(input, FLUX_WEIGHTS, 'dit'),
    '--clip_l',
    modelPath(input, FLUX_WEIGHTS, 'clip_l'),
    '--t5xxl',
    modelPath(input, FLUX_WEIGHTS, 't5xxl'),
    '--ae',
    modelPath(input, FLUX_WEIGHTS, 'ae'),
    ...kohyaCommonFlags(input as Parameters<typeof kohyaCommonFlags>[0], 'networks.lora_flux'),
    '--guidance_scale',
    num(FLUX_TRAINING_GUIDANCE),
    '--timestep_sampling',
    p.timestepSampling,
    '--model_prediction_type',
    'raw',
  ];
  if (p.timestepSampling === 'shift') argv.push('--discrete_flow_shift', num(p.discreteFlowShift));
  if (p.fp8Base) argv.push('--fp8_base');
  if (p.blocksToSwap > 0) argv.push('--blocks_to_swap', String(p.blocksToSwap));
  return argv;
}

const FLUX_ALL_FLAGS = flagsOf(
  fluxTrainArgv({
    jobId: 'x',
    triggerWord: 'x',
    outputName: 'x',
    dataset: { imageCount: 1 },
    baseModelFiles: {},
    parameters: { ...fluxParameterSchema.parse({}), loraDropout: 0.1, optimizer: 'Adafactor', lrScheduler: 'cosine', lrWarmupSteps: 1, blocksToSwap: 1 },
    resume: { step: 250, stateDir: 'x-step00000250-state' },
  }).slice(accelerateLaunch('bf16').length + 1),
);

export const fluxRecipe: Recipe<FluxParameters> = defineRecipe<FluxParameters>({
  id: 'flux-lora',
  version: '1.2.0',
  family: 'FLUX',
  displayName: 'FLUX.1 [dev] LoRA',
  description:
    'LoRA for FLUX.1 [dev], trained with kohya sd-scripts: bf16 with fp8 base weights, guidance 1.0, cached latents and text-encoder outputs, multi-resolution buckets.',
  product: true,
  baseModel: 'FLUX',
  engine: SD_SCRIPTS,
  image: sdScriptsImage('flux-kohya', [CLIP_L_TOKENIZER, T5_XXL_TOKENIZER], [
    { argv: ['python', FLUX_SCRIPT, '--help'], flags: FLUX_ALL_FLAGS },
    { argv: ['accelerate', 'launch', '--help'], flags: flagsOf(accelerateLaunch('bf16')) },
  ]),
  gpu: { count: 1, minVramGb: 24, recommendedVramGb: 24 },
  testRun: { substitutions: [TEST_RUN_TWO_STEPS, ...TEST_RUN_NO_SAMPLES] },
  datasetRequirements: { minImages: 1, recommendedImages: 20, maxImages: 1000, allowVideo: false, extensions: ['jpg', 'jpeg', 'png', 'webp'] },
  weights: FLUX_WEIGHTS,
  parameterSchema: fluxParameterSchema,
  crossCheck: warmupIssues,
  quote(p, dataset) {
    const images = Math.max(1, dataset.imageCount);
    const resolutions = fluxResolutions(p);
    // A step samples one bucket; with several resolutions the mean area applies.
    const meanArea = resolutions.reduce((s, r) => s + (r / 1024) ** 2, 0) / resolutions.length;
    const swapSlowdown = 1 + 0.03 * p.blocksToSwap;
    const saves = p.saveEveryNSteps > 0 ? Math.floor((p.steps - 1) / p.saveEveryNSteps) : 0;
    return quoteFromTime(
      [
        { label: 'start-up and model load (fp8 cast)', seconds: 300 },
        { label: `cache latents and text-encoder outputs (${images} images × ${resolutions.length} resolutions)`, seconds: images * resolutions.length * 1.5 + images * 0.5 },
        { label: `${p.steps} steps at batch ${p.batchSize}`, seconds: p.steps * 2.2 * meanArea * p.batchSize * swapSlowdown },
        { label: `${saves} intermediate saves with training state`, seconds: saves * 8 },
        // One image per default prompt (3) at each save and at the end: 20 steps at the training resolution.
        ...(p.samplePreview ? [{ label: `${saves + 1} sample sets (3 images each)`, seconds: (saves + 1) * 3 * 15 * (p.resolution / 1024) ** 2 }] : []),
      ],
      24,
    );
  },
  renderJob(input) {
    const p = input.parameters;
    const datasetToml = kohyaDatasetToml(p as KohyaCommonParams, input.triggerWord, fluxResolutions(p), 64);
    const prompts = p.samplePreview ? kohyaSamplePrompts(input, p.resolution, p.seed) : undefined;
    return {
      files: kohyaFiles(datasetToml, prompts),
      steps: [{ name: 'train', argv: fluxTrainArgv(input), reportsTrainingProgress: true }],
      outputs: kohyaOutputs(input.outputName, p.samplePreview, kohyaSavePlan(input as Parameters<typeof kohyaSavePlan>[0])),
    };
  },
  createProgressParser: () => new KohyaProgressParser(),
  checkOutput(header) {
    // networks/lora_flux.py: lora_unet_ over BFL names (double_blocks_N_*, single_blocks_N_*), ComfyUI-native.
    return checkKohyaLora(header, /^lora_unet_(double_blocks|single_blocks)_\d+_\w+\.(lora_down\.weight|lora_up\.weight|alpha)$/, 'lora_unet_{double_blocks|single_blocks}_N_* (kohya FLUX DiT)');
  },
  outputMetadata(input) {
    return stationthisMetadata(fluxRecipe, input, {
      ss_base_model_version: 'flux1',
      'modelspec.architecture': 'flux-1-dev/lora',
    });
  },
});
