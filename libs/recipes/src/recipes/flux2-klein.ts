/**
 * FLUX.2 [klein] 4B LoRA with kohya musubi-tuner (docs/flux_2.md), trained
 * on the undistilled klein base 4B (`--model_version klein-base-4b`, which
 * docs/flux_2.md recommends for training; the LoRA's keys are the same for
 * the distilled klein 4B, the DiT shapes being Klein4BParams for both).
 * 1. flux_2_cache_latents.py              (FLUX.2 AE latents)
 * 2. flux_2_cache_text_encoder_outputs.py (Qwen3 4B embeddings of the captions)
 * 3. flux_2_train_network.py              (LoRA on the DiT, networks.lora_flux_2)
 *
 * Operator-only: off the platform's menu until an operator enables it
 * (RECIPES_ENABLED=flux2-klein-lora). This file plus its registry entry and
 * conformance case is the whole family: see ADR 0009 and the README's
 * "How to add a model family".
 */
import { z } from 'zod';
import type { DatasetSummary, Recipe, RenderInput, WeightFile } from '../contract';
import { CONTAINER_PATHS } from '../contract';
import { boolField, enumField, intField, numberField, stepField } from '../params';
import { quoteFromTime } from '../pricing';
import { KohyaProgressParser } from '../progress';
import { checkLoraHeader } from '../safetensors';
import { samplePromptsFor } from '../saves';
import { toToml } from '../util/toml';
import { accelerateLaunch, defineRecipe, flagsOf, jobPath, modelPath, MUSUBI_DIR, MUSUBI_TUNER, musubiImage, num, stationthisMetadata, TEST_RUN_TWO_STEPS } from './common';
import { accelerateSavePlan, resumeFlags, saveStateFlags, stepsToTrain, TEST_RUN_NO_SAMPLES } from './engine-saves';

const SRC = `${MUSUBI_DIR}/src/musubi_tuner`;
export const FLUX2_CACHE_LATENTS_SCRIPT = `${SRC}/flux_2_cache_latents.py`;
export const FLUX2_CACHE_TE_SCRIPT = `${SRC}/flux_2_cache_text_encoder_outputs.py`;
export const FLUX2_TRAIN_SCRIPT = `${SRC}/flux_2_train_network.py`;
/** docs/flux_2.md: "Requires specifying --network_module networks.lora_flux_2". */
export const FLUX2_NETWORK_MODULE = 'networks.lora_flux_2';
/** flux_2/flux2_utils.py FLUX2_MODEL_INFO key of the undistilled 4B. */
export const FLUX2_KLEIN_MODEL_VERSION = 'klein-base-4b';
export const FLUX2_DATASET_TOML = 'dataset.toml';
export const FLUX2_SAMPLE_PROMPTS = 'sample_prompts.txt';
/** klein base is not guidance-distilled: FLUX2_MODEL_INFO defaults guidance 4.0, 50 steps; previews use fewer. */
export const FLUX2_SAMPLE_STEPS = 28;
export const FLUX2_SAMPLE_GUIDANCE = 4;
/** docs/flux_2.md: at most 13 swapped blocks for klein 4B. */
export const FLUX2_KLEIN_MAX_BLOCKS_TO_SWAP = 13;
export const FLUX2_CACHE_DIR = `${CONTAINER_PATHS.output}/cache`;

export const flux2KleinParameterSchema = z.strictObject({
  steps: intField(100, 10000, 2000, 'Optimizer steps (max_train_steps).'),
  learningRate: numberField(1e-6, 1e-2, 1e-4, 'Learning rate for the LoRA.'),
  batchSize: intField(1, 4, 1, 'Images per step.'),
  resolution: stepField(256, 1024, 16, 1024, 'Training resolution (square bucket side), multiple of 16.'),
  loraRank: intField(1, 128, 32, 'LoRA rank (network_dim).'),
  loraAlpha: numberField(0.5, 128, 32, 'LoRA alpha (network_alpha); scale is alpha/rank.'),
  loraDropout: numberField(0, 0.5, 0, 'Dropout on LoRA activations (network_dropout); 0 disables it.'),
  optimizer: enumField(['AdamW8bit', 'AdamW', 'Adafactor'] as const, 'AdamW8bit', 'Optimizer (optimizer_type).'),
  numRepeats: intField(1, 100, 1, 'Times each image is repeated per epoch (affects epoch count only).'),
  fp8Base: boolField(false, 'Keep the frozen DiT in fp8 (fp8_base with fp8_scaled): the 4B DiT fits 24 GB in bf16 without it.'),
  blocksToSwap: intField(0, FLUX2_KLEIN_MAX_BLOCKS_TO_SWAP, 0, 'DiT blocks offloaded to CPU (blocks_to_swap).'),
  seed: intField(0, 2147483647, 42, 'Random seed.'),
  saveEveryNSteps: intField(0, 10000, 250, 'Save an intermediate LoRA and the training state every N steps; 0 saves only the final one.'),
  samplePreview: boolField(true, 'Render one image per sample prompt at each save, or at the end without saves.'),
  savePrecision: enumField(['bf16', 'fp16', 'float'] as const, 'bf16', 'dtype of the saved LoRA (musubi default is fp32).'),
});

export type Flux2KleinParameters = z.infer<typeof flux2KleinParameterSchema>;

/**
 * docs/flux_2.md: the DiT from black-forest-labs/FLUX.2-klein-base-4B
 * (Apache-2.0), the FLUX.2 AE (`ae.safetensors` of black-forest-labs/FLUX.2-dev:
 * not FLUX.1's AE, hence its own file name here), and Qwen3 4B as one file
 * (ComfyUI's `qwen_3_4b.safetensors`, the Z-Image text encoder the docs say
 * can be reused).
 */
export const FLUX2_KLEIN_WEIGHTS: WeightFile[] = [
  { role: 'dit', fileName: 'flux2-klein-base-4b.safetensors', r2Key: 'unet/flux2-klein-base-4b.safetensors', approxBytes: 7_750_000_000 },
  { role: 'vae', fileName: 'flux2-ae.safetensors', r2Key: 'vae/flux2-ae.safetensors', approxBytes: 336_000_000 },
  { role: 'text_encoder', fileName: 'qwen_3_4b.safetensors', r2Key: 'clip/qwen_3_4b.safetensors', approxBytes: 8_050_000_000 },
];

function datasetToml(input: RenderInput<Flux2KleinParameters>): string {
  const p = input.parameters;
  return toToml({
    general: { caption_extension: '.txt', batch_size: p.batchSize, enable_bucket: true, bucket_no_upscale: false },
    datasets: [{ resolution: [p.resolution, p.resolution], image_directory: CONTAINER_PATHS.dataset, cache_directory: `${FLUX2_CACHE_DIR}/images`, num_repeats: p.numRepeats }],
  });
}

function trainArgv(input: RenderInput<Flux2KleinParameters>): string[] {
  const p = input.parameters;
  const argv = [
    ...accelerateLaunch('bf16'),
    FLUX2_TRAIN_SCRIPT,
    '--model_version',
    FLUX2_KLEIN_MODEL_VERSION,
    '--dit',
    modelPath(input, FLUX2_KLEIN_WEIGHTS, 'dit'),
    '--vae',
    modelPath(input, FLUX2_KLEIN_WEIGHTS, 'vae'),
    '--text_encoder',
    modelPath(input, FLUX2_KLEIN_WEIGHTS, 'text_encoder'),
    '--dataset_config',
    jobPath(FLUX2_DATASET_TOML),
    '--sdpa',
    '--mixed_precision',
    'bf16',
  ];
  // docs/flux_2.md: "--fp8_base --fp8_scaled (for DiT, specify both)".
  if (p.fp8Base) argv.push('--fp8_base', '--fp8_scaled');
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
    FLUX2_NETWORK_MODULE,
    '--network_dim',
    String(p.loraRank),
    '--network_alpha',
    num(p.loraAlpha),
  );
  if (p.loraDropout > 0) argv.push('--network_dropout', num(p.loraDropout));
  argv.push('--timestep_sampling', 'flux2_shift', '--weighting_scheme', 'none');
  const trainSteps = stepsToTrain(p.steps, input.resume);
  const saves = flux2KleinSavePlan(input);
  argv.push('--max_train_steps', String(trainSteps));
  if (saves) argv.push('--save_every_n_steps', String(saves.everySteps), ...saveStateFlags(saves.everySteps));
  if (input.resume) argv.push(...resumeFlags(input.resume));
  if (p.samplePreview) argv.push('--sample_prompts', jobPath(FLUX2_SAMPLE_PROMPTS), '--sample_every_n_steps', String(saves ? saves.everySteps : trainSteps));
  argv.push('--save_precision', p.savePrecision, '--seed', String(p.seed), '--output_dir', CONTAINER_PATHS.output, '--output_name', input.outputName, '--metadata_title', input.outputName);
  return argv;
}

export function flux2KleinSavePlan(input: RenderInput<Flux2KleinParameters>) {
  const p = input.parameters;
  return accelerateSavePlan(input.outputName, p.steps, p.saveEveryNSteps, p.samplePreview ? 'musubi-frame-png' : undefined);
}

function samplePrompts(input: RenderInput<Flux2KleinParameters>): string {
  const p = input.parameters;
  const options = ['--w', String(p.resolution), '--h', String(p.resolution), '--d', String(p.seed), '--s', String(FLUX2_SAMPLE_STEPS), '--g', num(FLUX2_SAMPLE_GUIDANCE)];
  return samplePromptsFor(input).map((prompt) => [prompt, ...options].join(' ')).join('\n') + '\n';
}

function cacheLatentsArgv(input: RenderInput<Flux2KleinParameters>): string[] {
  return ['python', FLUX2_CACHE_LATENTS_SCRIPT, '--dataset_config', jobPath(FLUX2_DATASET_TOML), '--vae', modelPath(input, FLUX2_KLEIN_WEIGHTS, 'vae'), '--model_version', FLUX2_KLEIN_MODEL_VERSION];
}

function cacheTextArgv(input: RenderInput<Flux2KleinParameters>): string[] {
  return [
    'python',
    FLUX2_CACHE_TE_SCRIPT,
    '--dataset_config',
    jobPath(FLUX2_DATASET_TOML),
    '--text_encoder',
    modelPath(input, FLUX2_KLEIN_WEIGHTS, 'text_encoder'),
    '--batch_size',
    '16',
    '--model_version',
    FLUX2_KLEIN_MODEL_VERSION,
  ];
}

const SAMPLE_INPUT = (parameters: Flux2KleinParameters): RenderInput<Flux2KleinParameters> => ({ jobId: 'x', triggerWord: 'x', outputName: 'x', dataset: { imageCount: 1 }, baseModelFiles: {}, parameters });
const ALL_PARAMS: Flux2KleinParameters = { ...flux2KleinParameterSchema.parse({}), fp8Base: true, blocksToSwap: 1, optimizer: 'Adafactor', loraDropout: 0.1 };
const ALL_INPUT: RenderInput<Flux2KleinParameters> = { ...SAMPLE_INPUT(ALL_PARAMS), resume: { step: 250, stateDir: 'x-step00000250-state' } };

export const flux2KleinRecipe: Recipe<Flux2KleinParameters> = defineRecipe<Flux2KleinParameters>({
  id: 'flux2-klein-lora',
  version: '0.1.0',
  family: 'FLUX2',
  displayName: 'FLUX.2 [klein] 4B LoRA',
  description: 'LoRA for FLUX.2 [klein] 4B (Apache-2.0), trained on the undistilled klein base 4B with musubi-tuner: bf16 DiT, Qwen3 4B text encoder, cached latents and text-encoder outputs.',
  product: true,
  availability: 'operator-only',
  baseModel: 'FLUX2_KLEIN_4B',
  modelTypes: ['FLUX2_KLEIN_4B'],
  // Explicit, and not starting with "FLUX": the platform's mapping files anything containing "flux" under FLUX, and its
  // resolver loads any checkpoint starting with "FLUX" on FLUX.1 and Kontext workflows. A klein tool names this exact value.
  registration: { checkpoint: 'KLEIN-4B' },
  engine: MUSUBI_TUNER,
  image: musubiImage(
    [
      { argv: ['python', FLUX2_TRAIN_SCRIPT, '--help'], flags: flagsOf(trainArgv(ALL_INPUT).slice(accelerateLaunch('bf16').length + 1)) },
      { argv: ['python', FLUX2_CACHE_LATENTS_SCRIPT, '--help'], flags: flagsOf(cacheLatentsArgv(SAMPLE_INPUT(ALL_PARAMS)).slice(2)) },
      { argv: ['python', FLUX2_CACHE_TE_SCRIPT, '--help'], flags: flagsOf(cacheTextArgv(SAMPLE_INPUT(ALL_PARAMS)).slice(2)) },
      { argv: ['accelerate', 'launch', '--help'], flags: flagsOf(accelerateLaunch('bf16')) },
    ],
    // zimage/zimage_utils.py load_qwen3: Qwen2Tokenizer.from_pretrained('Qwen/Qwen3-4B') (flux2_utils.load_text_embedder).
    { name: 'flux2-klein-musubi', tokenizers: [{ repo: 'Qwen/Qwen3-4B', loader: 'Qwen2Tokenizer', usedBy: 'musubi-tuner zimage/zimage_utils.py load_qwen3 (flux_2 klein 4B)' }] },
  ),
  gpu: { count: 1, minVramGb: 24, recommendedVramGb: 24 },
  testRun: { substitutions: [TEST_RUN_TWO_STEPS, ...TEST_RUN_NO_SAMPLES] },
  datasetRequirements: { minImages: 1, recommendedImages: 20, maxImages: 1000, allowVideo: false, extensions: ['jpg', 'jpeg', 'png', 'webp'] },
  weights: FLUX2_KLEIN_WEIGHTS,
  parameterSchema: flux2KleinParameterSchema,
  quote(p: Flux2KleinParameters, dataset: DatasetSummary) {
    const images = Math.max(1, dataset.imageCount);
    const area = (p.resolution / 1024) ** 2;
    // A 4B DiT: about a third of FLUX.1's 12B step time at the same size.
    const stepSeconds = 0.8 * area * p.batchSize * (1 + 0.03 * p.blocksToSwap) * (p.fp8Base ? 1.05 : 1);
    const saves = p.saveEveryNSteps > 0 ? Math.floor((p.steps - 1) / p.saveEveryNSteps) : 0;
    const sampleSets = p.samplePreview ? saves + 1 : 0;
    return quoteFromTime(
      [
        { label: 'start-up and model load', seconds: 180 },
        { label: `cache latents (${images} images)`, seconds: 60 + images * 1.5 },
        { label: `cache text-encoder outputs (${images} captions)`, seconds: 90 + images * 0.5 },
        { label: `${p.steps} steps at batch ${p.batchSize}`, seconds: p.steps * stepSeconds },
        { label: `${saves} intermediate saves with training state`, seconds: saves * 5 },
        // CFG doubles each denoising step of the undistilled base.
        ...(sampleSets > 0 ? [{ label: `${sampleSets} sample sets (3 images each)`, seconds: sampleSets * 3 * FLUX2_SAMPLE_STEPS * 2 * 0.3 * area }] : []),
      ],
      24,
    );
  },
  renderJob(input) {
    const saves = flux2KleinSavePlan(input);
    const p = input.parameters;
    return {
      files: [{ path: FLUX2_DATASET_TOML, content: datasetToml(input) }, ...(p.samplePreview ? [{ path: FLUX2_SAMPLE_PROMPTS, content: samplePrompts(input) }] : [])],
      steps: [
        { name: 'cache-latents', argv: cacheLatentsArgv(input), reportsTrainingProgress: false },
        { name: 'cache-text-encoder', argv: cacheTextArgv(input), reportsTrainingProgress: false },
        { name: 'train', argv: trainArgv(input), reportsTrainingProgress: true },
      ],
      outputs: { lora: `${input.outputName}.safetensors`, ...(p.samplePreview ? { samplesDir: 'sample' } : {}), ...(saves ? { saves } : {}) },
    };
  },
  createProgressParser: () => new KohyaProgressParser(),
  checkOutput(header) {
    // networks/lora_flux_2.py: lora_unet_ over musubi's FLUX.2 module names (double_blocks_N_*, single_blocks_N_*).
    const dim = Number(header.metadata['ss_network_dim']);
    return checkLoraHeader(header, {
      keyPattern: /^lora_unet_(double_blocks|single_blocks)_\d+_\w+\.(lora_down\.weight|lora_up\.weight|alpha)$/,
      keyDescription: 'lora_unet_{double_blocks|single_blocks}_N_* (musubi FLUX.2 DiT)',
      dtypes: ['F16', 'BF16', 'F32'],
      style: 'kohya',
      ...(Number.isInteger(dim) && dim > 0 ? { rank: dim } : {}),
    });
  },
  outputMetadata(input) {
    return stationthisMetadata(flux2KleinRecipe, input, { ss_base_model_version: 'flux2-klein-4b', 'modelspec.architecture': 'flux-2-klein-4b/lora' });
  },
});
