/**
 * FLUX.1 Kontext [dev] LoRA with kohya musubi-tuner (docs/flux_kontext.md),
 * the platform's `kontext-lora` offering:
 * 1. flux_kontext_cache_latents.py        (AE latents of targets and control images)
 * 2. flux_kontext_cache_text_encoder_outputs.py (T5-XXL + CLIP-L of the captions)
 * 3. flux_kontext_train_network.py        (LoRA on the DiT, networks.lora_flux)
 *
 * Two training modes, the platform's `trainingMode`:
 * - `concept`: pairs of a target image and its control (reference) image; the
 *   LoRA learns the edit from control to target. The worker writes each
 *   control as `control/<target stem>.<ext>` (musubi pairs a control with the
 *   target whose stem it starts with: dataset/datasources.py
 *   ImageDirectoryDatasource), after `resolveControlPairs` checked the pairing
 *   before the charge.
 * - `style_subject`: images and captions. musubi's Kontext trainer needs a
 *   control latent for every item (flux_kontext_cache_latents.py raises
 *   "FLUX.1 Kontext requires exactly one control content per item"), so each
 *   target gets the same small neutral grey control (BLANK_CONTROL_PNG), sized
 *   down to 256² by `control_resolution` so it adds few tokens. The LoRA then
 *   learns the style or subject from the prompt with an empty reference, which
 *   is how Kontext is used for text-to-image.
 * Concept previews sample with the first pair's control image. musubi feeds
 * a sample's control at its own size (flux_kontext_train_network.py
 * do_inference: `preprocess_control_image(..., resize_to_prefered=False)`), so
 * a 6000 px square control would add ~140k tokens to every denoising step: minutes to
 * hours per preview, or out of memory. A first step, `sample-control`, writes a
 * copy scaled to fit resolution² into the output folder (the control mount is
 * read-only) with a script this recipe ships in its rendered files, and the
 * prompts point `--ci` at that copy.
 * Same engine, pin, torch layer and requirements as WAN (its own image name
 * and tokenizers: recipes version independently). See ADR 0009.
 */
import { z } from 'zod';
import type { ControlImagesNeed, DatasetSummary, Recipe, RenderInput, WeightFile } from '../contract';
import { CONTAINER_PATHS } from '../contract';
import { getOffering, offeringDefault } from '../offerings';
import { boolField, enumField, intField, numberField, stepField } from '../params';
import { quoteFromTime } from '../pricing';
import { KohyaProgressParser } from '../progress';
import { checkLoraHeader } from '../safetensors';
import { samplePromptsFor } from '../saves';
import { toToml, type TomlTable } from '../util/toml';
import {
  accelerateLaunch,
  defineRecipe,
  flagsOf,
  jobPath,
  modelPath,
  MUSUBI_DIR,
  MUSUBI_FLUX_TOKENIZERS,
  MUSUBI_TUNER,
  musubiImage,
  num,
  stationthisMetadata,
  TEST_RUN_TWO_STEPS,
} from './common';
import { accelerateSavePlan, resumeFlags, saveStateFlags, stepsToTrain, TEST_RUN_NO_SAMPLES } from './engine-saves';

const SRC = `${MUSUBI_DIR}/src/musubi_tuner`;
export const KONTEXT_CACHE_LATENTS_SCRIPT = `${SRC}/flux_kontext_cache_latents.py`;
export const KONTEXT_CACHE_TE_SCRIPT = `${SRC}/flux_kontext_cache_text_encoder_outputs.py`;
export const KONTEXT_TRAIN_SCRIPT = `${SRC}/flux_kontext_train_network.py`;
/** docs/flux_kontext.md: "Requires specifying --network_module networks.lora_flux" (src/musubi_tuner/networks/lora_flux.py). */
export const KONTEXT_NETWORK_MODULE = 'networks.lora_flux';
export const KONTEXT_DATASET_TOML = 'dataset.toml';
export const KONTEXT_SAMPLE_PROMPTS = 'sample_prompts.txt';
/** Denoising steps of a sample (musubi's prompt option `--s`). */
export const KONTEXT_SAMPLE_STEPS = 20;
/** Kontext's distilled guidance at inference (flux_kontext_train_network.py default_guidance_scale; prompt option `--g`). */
export const KONTEXT_SAMPLE_GUIDANCE = 2.5;
/** The blank control of `style_subject` mode is resized to this square: 16×16 packed tokens, few next to the target's. */
export const KONTEXT_BLANK_CONTROL_RESOLUTION = 256;
/** Caches live under the writable output mount; the worker uploads only the LoRA. */
export const KONTEXT_CACHE_DIR = `${CONTAINER_PATHS.output}/cache`;
/** The script that scales the preview control (rendered into the job folder; Python and Pillow come with musubi's image). */
export const KONTEXT_SAMPLE_CONTROL_SCRIPT = 'scale_sample_control.py';
/** The scaled copy of the first pair's control the concept previews use (in the writable output mount, beside the caches; never uploaded). */
export const KONTEXT_SAMPLE_CONTROL = `${CONTAINER_PATHS.output}/sample-control/control.png`;
/** FLUX.1 has 19 double and 38 single blocks; musubi's enable_block_swap accepts at most 34 (flux/flux_models.py). */
export const KONTEXT_MAX_BLOCKS_TO_SWAP = 34;

export const KONTEXT_TRAINING_MODES = ['style_subject', 'concept'] as const;
export type KontextTrainingMode = (typeof KONTEXT_TRAINING_MODES)[number];

const OFFERING = getOffering('kontext-lora');

export const kontextParameterSchema = z.strictObject({
  trainingMode: enumField(
    KONTEXT_TRAINING_MODES,
    'style_subject',
    "The platform's training mode: style_subject (images and captions) or concept (each image paired with its control image: the LoRA learns the edit from control to image).",
  ),
  steps: intField(100, 10000, offeringDefault('kontext-lora', 'steps', 3000, { min: 100, max: 10000 }), 'Optimizer steps (max_train_steps).'),
  learningRate: numberField(1e-6, 1e-2, offeringDefault('kontext-lora', 'learningRate', 1e-4, { min: 1e-6, max: 1e-2 }), 'Learning rate for the LoRA.'),
  batchSize: intField(1, 4, 1, 'Images per step.'),
  resolution: stepField(256, 1024, 16, 768, 'Training resolution (square bucket side), multiple of 16; the platform trained Kontext at 512–768.'),
  loraRank: intField(1, 128, offeringDefault('kontext-lora', 'loraRank', 16, { min: 1, max: 128 }), 'LoRA rank (network_dim).'),
  loraAlpha: numberField(0.5, 128, offeringDefault('kontext-lora', 'loraAlpha', 16, { min: 0.5, max: 128 }), 'LoRA alpha (network_alpha); scale is alpha/rank.'),
  loraDropout: numberField(0, 0.5, 0, 'Dropout on LoRA activations (network_dropout); 0 disables it.'),
  optimizer: enumField(['AdamW8bit', 'AdamW', 'Adafactor'] as const, 'AdamW8bit', 'Optimizer (optimizer_type).'),
  numRepeats: intField(1, 100, 1, 'Times each image is repeated per epoch (affects epoch count only).'),
  timestepSampling: enumField(['flux_shift', 'shift', 'sigmoid'] as const, 'flux_shift', 'Timestep sampling (timestep_sampling); docs/flux_kontext.md recommends flux_shift.'),
  discreteFlowShift: numberField(0.5, 10, 3.1582, 'Flow shift used with timestepSampling=shift (discrete_flow_shift).'),
  fp8Base: boolField(true, 'Keep the frozen DiT in fp8 (fp8_base): fits a 24 GB card.'),
  fp8Scaled: boolField(true, 'Scaled fp8 (fp8_scaled), recommended by docs/flux_kontext.md with fp8 weights; applies only with fp8Base.'),
  blocksToSwap: intField(0, KONTEXT_MAX_BLOCKS_TO_SWAP, 0, 'DiT blocks offloaded to CPU (blocks_to_swap): lower VRAM, slower.'),
  seed: intField(0, 2147483647, 42, 'Random seed.'),
  saveEveryNSteps: intField(0, 10000, 250, 'Save an intermediate LoRA and the training state (resume point) every N steps; 0 saves only the final one.'),
  samplePreview: boolField(
    true,
    "Render one image per sample prompt at each save, or at the end without saves: with the first pair's control image in concept mode, without a reference in style_subject mode.",
  ),
  savePrecision: enumField(['bf16', 'fp16', 'float'] as const, 'bf16', 'dtype of the saved LoRA (musubi default is fp32).'),
});

export type KontextParameters = z.infer<typeof kontextParameterSchema>;

/**
 * docs/flux_kontext.md: the DiT and AE in BFL's single-file format
 * (black-forest-labs/FLUX.1-Kontext-dev `flux1-kontext-dev.safetensors`,
 * `ae.safetensors`; the Diffusers subfolders do not load), T5-XXL fp16 and
 * CLIP-L from comfyanonymous/flux_text_encoders. The AE and both text
 * encoders are the very files the FLUX.1 [dev] recipe uses (same R2 keys,
 * same host-cache entries).
 */
export const KONTEXT_WEIGHTS: WeightFile[] = [
  { role: 'dit', fileName: 'flux1-kontext-dev.safetensors', r2Key: 'unet/flux1-kontext-dev.safetensors', approxBytes: 23_800_000_000 },
  { role: 'vae', fileName: 'ae.safetensors', r2Key: 'vae/ae.safetensors', approxBytes: 335_000_000 },
  { role: 'text_encoder1', fileName: 't5xxl_fp16.safetensors', r2Key: 'clip/t5xxl_fp16.safetensors', approxBytes: 9_790_000_000 },
  { role: 'text_encoder2', fileName: 'clip_l.safetensors', r2Key: 'clip/clip_l.safetensors', approxBytes: 246_000_000 },
];

/** What each mode needs beside the dataset (contract.ControlImagesNeed). */
export function kontextControlImages(p: Pick<KontextParameters, 'trainingMode'>): ControlImagesNeed {
  return { source: p.trainingMode === 'concept' ? 'paired' : 'blank' };
}

function kontextDatasetToml(input: RenderInput<KontextParameters>): string {
  const p = input.parameters;
  const dataset: TomlTable = {
    resolution: [p.resolution, p.resolution],
    image_directory: CONTAINER_PATHS.dataset,
    control_directory: CONTAINER_PATHS.control,
    cache_directory: `${KONTEXT_CACHE_DIR}/images`,
    num_repeats: p.numRepeats,
  };
  // Concept controls are resized to their target's bucket (musubi's default); the blank one to a small fixed square.
  if (p.trainingMode === 'style_subject') dataset.control_resolution = [KONTEXT_BLANK_CONTROL_RESOLUTION, KONTEXT_BLANK_CONTROL_RESOLUTION];
  return toToml({
    general: { caption_extension: '.txt', batch_size: p.batchSize, enable_bucket: true, bucket_no_upscale: false },
    datasets: [dataset],
  });
}

function kontextTrainArgv(input: RenderInput<KontextParameters>): string[] {
  const p = input.parameters;
  const argv = [
    ...accelerateLaunch('bf16'),
    KONTEXT_TRAIN_SCRIPT,
    '--dit',
    modelPath(input, KONTEXT_WEIGHTS, 'dit'),
    '--vae',
    modelPath(input, KONTEXT_WEIGHTS, 'vae'),
    '--text_encoder1',
    modelPath(input, KONTEXT_WEIGHTS, 'text_encoder1'),
    '--text_encoder2',
    modelPath(input, KONTEXT_WEIGHTS, 'text_encoder2'),
    '--dataset_config',
    jobPath(KONTEXT_DATASET_TOML),
    '--sdpa',
    '--mixed_precision',
    'bf16',
  ];
  if (p.fp8Base) argv.push('--fp8_base');
  // Scaled fp8 is a way of storing the fp8 weights: without fp8Base there are none, so it is left out rather than refused.
  if (p.fp8Base && p.fp8Scaled) argv.push('--fp8_scaled');
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
    KONTEXT_NETWORK_MODULE,
    '--network_dim',
    String(p.loraRank),
    '--network_alpha',
    num(p.loraAlpha),
  );
  if (p.loraDropout > 0) argv.push('--network_dropout', num(p.loraDropout));
  argv.push('--timestep_sampling', p.timestepSampling, '--weighting_scheme', 'none');
  if (p.timestepSampling === 'shift') argv.push('--discrete_flow_shift', num(p.discreteFlowShift));
  // musubi restarts its step count on resume: train what is left (engine-saves.ts). The LR is constant.
  const trainSteps = stepsToTrain(p.steps, input.resume);
  const saves = kontextSavePlan(input);
  argv.push('--max_train_steps', String(trainSteps));
  if (saves) argv.push('--save_every_n_steps', String(saves.everySteps), ...saveStateFlags(saves.everySteps));
  if (input.resume) argv.push(...resumeFlags(input.resume));
  if (p.samplePreview) {
    // The trainer encodes the sample prompts with --text_encoder1/2 and decodes with --vae, all already on the argv.
    argv.push('--sample_prompts', jobPath(KONTEXT_SAMPLE_PROMPTS), '--sample_every_n_steps', String(saves ? saves.everySteps : trainSteps));
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

/** The saves of a Kontext job: checkpoint, state and, with samplePreview, one image per prompt (`_000.png`). */
export function kontextSavePlan(input: RenderInput<KontextParameters>) {
  const p = input.parameters;
  return accelerateSavePlan(input.outputName, p.steps, p.saveEveryNSteps, p.samplePreview ? 'musubi-frame-png' : undefined);
}

/**
 * The control image of the concept previews: the first pair's, by its file
 * name under CONTAINER_PATHS.control. undefined without one (style_subject,
 * or no control names given): the previews are then text-to-image.
 */
function previewControlOf(input: RenderInput<KontextParameters>): string | undefined {
  const p = input.parameters;
  const control = p.samplePreview && p.trainingMode === 'concept' ? input.controlImages?.[0] : undefined;
  if (control === undefined) return undefined;
  if (!/^[A-Za-z0-9._-]+$/.test(control) || control.startsWith('.')) {
    throw new Error(`render kontext-lora: control image name must be a plain file name of [A-Za-z0-9._-], got ${JSON.stringify(control)}`);
  }
  return control;
}

/**
 * musubi's prompt file (training/sampling_prompts.py): `--w/--h` size, `--d`
 * seed, `--s` steps, `--g` Kontext's distilled guidance, and in concept mode
 * `--ci <control>`: the first pair's control image, scaled by the
 * `sample-control` step, so a preview shows the learned edit at the training
 * size. Without a reference the trainer samples text-to-image (do_inference
 * skips the control).
 */
export function kontextSamplePrompts(input: RenderInput<KontextParameters>): string {
  const p = input.parameters;
  const options = ['--w', String(p.resolution), '--h', String(p.resolution), '--d', String(p.seed), '--s', String(KONTEXT_SAMPLE_STEPS), '--g', num(KONTEXT_SAMPLE_GUIDANCE)];
  if (previewControlOf(input) !== undefined) options.push('--ci', KONTEXT_SAMPLE_CONTROL);
  return samplePromptsFor(input).map((prompt) => [prompt, ...options].join(' ')).join('\n') + '\n';
}

/**
 * Scales the preview control to fit resolution² (aspect kept, sides multiples
 * of 16 as musubi crops them, RGB as musubi converts it) and writes it as PNG.
 * Runs in the training image, offline, as the unprivileged user: reads the
 * read-only control mount, writes only the given output path. A JPEG is
 * decoded at a reduced scale (Image.draft), so a large control costs little.
 */
export const KONTEXT_SAMPLE_CONTROL_PY = `"""Scale the control image of the FLUX.1 Kontext sample previews to the training size.

Rendered by the kontext-lora recipe (libs/recipes/src/recipes/kontext.ts). musubi samples
with the control at its own size (preprocess_control_image(..., resize_to_prefered=False)),
so a large control would cost minutes to hours per preview or run out of memory.

usage: python scale_sample_control.py <control image> <output .png> <resolution>
"""
import math
import os
import sys

from PIL import Image

LANCZOS = getattr(Image, "Resampling", Image).LANCZOS


def fit(width, height, resolution):
    """At most resolution**2 pixels, aspect kept, each side a multiple of 16 (at least 16)."""
    scale = min(1.0, resolution / math.sqrt(width * height))
    return max(16, int(width * scale) // 16 * 16), max(16, int(height * scale) // 16 * 16)


def main(argv):
    if len(argv) != 3 or not argv[2].isdigit() or int(argv[2]) < 16:
        print("usage: scale_sample_control.py <control image> <output .png> <resolution >= 16>", file=sys.stderr)
        return 2
    source, target, resolution = argv[0], argv[1], int(argv[2])
    try:
        with Image.open(source) as image:
            width, height = image.size
            size = fit(width, height, resolution)
            image.draft("RGB", size)
            scaled = image.convert("RGB").resize(size, LANCZOS)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        print(f"sample control: cannot read the control image {source}: {e}", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(target), exist_ok=True)
    scaled.save(target, "PNG")
    print(f"sample control: {os.path.basename(source)} {width}x{height} -> {target} {size[0]}x{size[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
`;

/** The `sample-control` step: python on the shipped script (no engine flags; its arguments are positional). */
function kontextSampleControlArgv(input: RenderInput<KontextParameters>, control: string): string[] {
  return ['python', jobPath(KONTEXT_SAMPLE_CONTROL_SCRIPT), `${CONTAINER_PATHS.control}/${control}`, KONTEXT_SAMPLE_CONTROL, String(input.parameters.resolution)];
}

function kontextCacheLatentsArgv(input: RenderInput<KontextParameters>): string[] {
  return ['python', KONTEXT_CACHE_LATENTS_SCRIPT, '--dataset_config', jobPath(KONTEXT_DATASET_TOML), '--vae', modelPath(input, KONTEXT_WEIGHTS, 'vae')];
}

function kontextCacheTextArgv(input: RenderInput<KontextParameters>): string[] {
  return [
    'python',
    KONTEXT_CACHE_TE_SCRIPT,
    '--dataset_config',
    jobPath(KONTEXT_DATASET_TOML),
    '--text_encoder1',
    modelPath(input, KONTEXT_WEIGHTS, 'text_encoder1'),
    '--text_encoder2',
    modelPath(input, KONTEXT_WEIGHTS, 'text_encoder2'),
    '--batch_size',
    '16',
  ];
}

const SAMPLE_INPUT = (parameters: KontextParameters): RenderInput<KontextParameters> => ({
  jobId: 'x',
  triggerWord: 'x',
  outputName: 'x',
  dataset: { imageCount: 1 },
  baseModelFiles: {},
  parameters,
});
const KONTEXT_ALL_PARAMS: KontextParameters = {
  ...kontextParameterSchema.parse({}),
  trainingMode: 'concept',
  blocksToSwap: 1,
  optimizer: 'Adafactor',
  loraDropout: 0.1,
  timestepSampling: 'shift',
};
/** Every flag the training step can emit: all options on, resumed. */
const KONTEXT_ALL_INPUT: RenderInput<KontextParameters> = { ...SAMPLE_INPUT(KONTEXT_ALL_PARAMS), resume: { step: 250, stateDir: 'x-step00000250-state' } };

export const kontextRecipe: Recipe<KontextParameters> = defineRecipe<KontextParameters>({
  id: 'kontext-lora',
  version: '1.0.0',
  family: 'KONTEXT',
  displayName: 'FLUX.1 Kontext [dev] LoRA',
  description:
    'LoRA for FLUX.1 Kontext [dev], trained with musubi-tuner: style/subject from images and captions, or a concept (an edit) from pairs of control and target images; fp8 DiT, cached latents and text-encoder outputs.',
  product: true,
  baseModel: 'KONTEXT',
  modelTypes: ['KONTEXT'],
  // The platform's resolver loads a LoRA whose checkpoint matches the workflow's: Kontext workflows only.
  registration: { checkpoint: 'KONTEXT' },
  engine: MUSUBI_TUNER,
  image: musubiImage(
    [
      { argv: ['python', KONTEXT_TRAIN_SCRIPT, '--help'], flags: flagsOf(kontextTrainArgv(KONTEXT_ALL_INPUT).slice(accelerateLaunch('bf16').length + 1)) },
      { argv: ['python', KONTEXT_CACHE_LATENTS_SCRIPT, '--help'], flags: flagsOf(kontextCacheLatentsArgv(SAMPLE_INPUT(KONTEXT_ALL_PARAMS)).slice(2)) },
      { argv: ['python', KONTEXT_CACHE_TE_SCRIPT, '--help'], flags: flagsOf(kontextCacheTextArgv(SAMPLE_INPUT(KONTEXT_ALL_PARAMS)).slice(2)) },
      { argv: ['accelerate', 'launch', '--help'], flags: flagsOf(accelerateLaunch('bf16')) },
    ],
    { name: 'kontext-musubi', tokenizers: MUSUBI_FLUX_TOKENIZERS },
  ),
  gpu: { count: 1, minVramGb: 24, recommendedVramGb: 24 },
  testRun: {
    substitutions: [
      TEST_RUN_TWO_STEPS,
      ...TEST_RUN_NO_SAMPLES,
      // The text encoders and AE stay: the cache steps need them, and without --sample_prompts the trainer loads neither text encoder.
      { flag: '--fp8_base', action: 'drop', reason: 'CPU only: fp8 weights are a VRAM saving; on CPU the DiT trains in its file dtype' },
      { flag: '--fp8_scaled', action: 'drop', reason: 'CPU only: scaled fp8 needs --fp8_base (dropped above)' },
    ],
  },
  datasetRequirements: {
    minImages: 1,
    // The platform's offering asks for 15 images; fewer only warns (dataset-size.ts).
    recommendedImages: OFFERING.minImages,
    maxImages: 1000,
    allowVideo: false,
    extensions: ['jpg', 'jpeg', 'png', 'webp'],
  },
  weights: KONTEXT_WEIGHTS,
  parameterSchema: kontextParameterSchema,
  controlImagesFor: kontextControlImages,
  quote(p: KontextParameters, dataset: DatasetSummary) {
    const images = Math.max(1, dataset.imageCount);
    const area = (p.resolution / 1024) ** 2;
    // The control latent joins the target's tokens: as many again in concept mode (resized to the target), 256² in style mode.
    const controlTokens = p.trainingMode === 'concept' ? 1 : (KONTEXT_BLANK_CONTROL_RESOLUTION / p.resolution) ** 2;
    // FLUX.1 [dev] at 1024² takes about 2.2 s a step on the recommended card; attention grows faster than the token count.
    const stepSeconds = 2.2 * area * (1 + controlTokens) ** 1.2 * p.batchSize * (1 + 0.03 * p.blocksToSwap);
    const saves = p.saveEveryNSteps > 0 ? Math.floor((p.steps - 1) / p.saveEveryNSteps) : 0;
    const sampleSets = p.samplePreview ? saves + 1 : 0;
    return quoteFromTime(
      [
        { label: 'start-up and model load (fp8 cast)', seconds: 300 },
        { label: `cache latents (${images} images and their controls)`, seconds: 60 + images * 2 * (p.trainingMode === 'concept' ? 2 : 1) },
        { label: `cache text-encoder outputs (${images} captions)`, seconds: 120 + images * 0.5 },
        { label: `${p.steps} steps at batch ${p.batchSize}`, seconds: p.steps * stepSeconds },
        { label: `${saves} intermediate saves with training state`, seconds: saves * 8 },
        ...(sampleSets > 0 ? [{ label: `${sampleSets} sample sets (3 images each)`, seconds: sampleSets * 3 * KONTEXT_SAMPLE_STEPS * 0.75 * area * (1 + controlTokens) }] : []),
      ],
      24,
    );
  },
  renderJob(input) {
    const saves = kontextSavePlan(input);
    const p = input.parameters;
    const previewControl = previewControlOf(input);
    return {
      files: [
        { path: KONTEXT_DATASET_TOML, content: kontextDatasetToml(input) },
        ...(p.samplePreview ? [{ path: KONTEXT_SAMPLE_PROMPTS, content: kontextSamplePrompts(input) }] : []),
        ...(previewControl !== undefined ? [{ path: KONTEXT_SAMPLE_CONTROL_SCRIPT, content: KONTEXT_SAMPLE_CONTROL_PY }] : []),
      ],
      steps: [
        // First: seconds, and a control that cannot be read fails before the model loads.
        ...(previewControl !== undefined ? [{ name: 'sample-control', argv: kontextSampleControlArgv(input, previewControl), reportsTrainingProgress: false }] : []),
        { name: 'cache-latents', argv: kontextCacheLatentsArgv(input), reportsTrainingProgress: false },
        { name: 'cache-text-encoder', argv: kontextCacheTextArgv(input), reportsTrainingProgress: false },
        { name: 'train', argv: kontextTrainArgv(input), reportsTrainingProgress: true },
      ],
      outputs: {
        lora: `${input.outputName}.safetensors`,
        ...(p.samplePreview ? { samplesDir: 'sample' } : {}),
        ...(saves ? { saves } : {}),
      },
    };
  },
  createProgressParser: () => new KohyaProgressParser(),
  checkOutput(header) {
    // musubi networks/lora_flux.py: lora_unet_ over BFL names (double_blocks_N_*, single_blocks_N_*), as sd-scripts' FLUX LoRA.
    // Kontext's DiT has FLUX.1's keys, so ComfyUI maps them the same way.
    const dim = Number(header.metadata['ss_network_dim']);
    return checkLoraHeader(header, {
      keyPattern: /^lora_unet_(double_blocks|single_blocks)_\d+_\w+\.(lora_down\.weight|lora_up\.weight|alpha)$/,
      keyDescription: 'lora_unet_{double_blocks|single_blocks}_N_* (musubi FLUX.1 Kontext DiT)',
      dtypes: ['F16', 'BF16', 'F32'],
      style: 'kohya',
      ...(Number.isInteger(dim) && dim > 0 ? { rank: dim } : {}),
    });
  },
  outputMetadata(input) {
    return stationthisMetadata(kontextRecipe, input, {
      ss_base_model_version: 'flux1-kontext',
      'modelspec.architecture': 'flux-1-kontext-dev/lora',
    });
  },
});
