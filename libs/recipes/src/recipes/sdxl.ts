/**
 * SDXL LoRA with kohya sd-scripts `sdxl_train_network.py`
 * (docs/sdxl_train_network.md): U-Net only, cached latents and text-encoder
 * outputs, gradient checkpointing, bf16, SDPA.
 */
import { z } from 'zod';
import type { Recipe, ValidationIssue, WeightFile } from '../contract';
import { boolField, enumField, intField, joinPath, numberField, stepField } from '../params';
import { quoteFromTime } from '../pricing';
import { accelerateLaunch, CLIP_G_TOKENIZER, CLIP_L_TOKENIZER, defineRecipe, flagsOf, modelPath, SD_SCRIPTS, SD_SCRIPTS_DIR, sdScriptsImage, stationthisMetadata, TEST_RUN_TWO_STEPS } from './common';
import {
  checkKohyaLora,
  kohyaCommonFlags,
  kohyaDatasetToml,
  kohyaFiles,
  kohyaOutputs,
  kohyaSamplePrompts,
  kohyaSavePlan,
  type KohyaCommonParams,
} from './kohya';
import { TEST_RUN_NO_SAMPLES } from './engine-saves';
import { KohyaProgressParser } from '../progress';

export const SDXL_SCRIPT = `${SD_SCRIPTS_DIR}/sdxl_train_network.py`;

export const sdxlParameterSchema = z.strictObject({
  steps: intField(100, 10000, 1500, 'Optimizer steps (max_train_steps).'),
  learningRate: numberField(1e-6, 1e-2, 1e-4, 'Learning rate for the LoRA (U-Net).'),
  batchSize: intField(1, 8, 1, 'Images per step.'),
  resolution: stepField(512, 1536, 64, 1024, 'Training resolution (square bucket area side), multiple of 64.'),
  loraRank: intField(1, 128, 32, 'LoRA rank (network_dim).'),
  loraAlpha: numberField(0.5, 128, 16, 'LoRA alpha (network_alpha); scale is alpha/rank.'),
  loraDropout: numberField(0, 0.5, 0, 'Dropout on LoRA activations (network_dropout); 0 disables it.'),
  optimizer: enumField(['AdamW8bit', 'AdamW', 'Adafactor'] as const, 'AdamW8bit', 'Optimizer (optimizer_type).'),
  lrScheduler: enumField(['constant', 'constant_with_warmup', 'cosine'] as const, 'constant', 'Learning-rate schedule.'),
  lrWarmupSteps: intField(0, 2000, 0, 'Warm-up steps; must be below steps.'),
  numRepeats: intField(1, 100, 1, 'Times each image is repeated per epoch (affects epoch count only).'),
  seed: intField(0, 2147483647, 42, 'Random seed.'),
  saveEveryNSteps: intField(0, 10000, 250, 'Save an intermediate LoRA every N steps (resume points); 0 saves only the final one.'),
  samplePreview: boolField(true, 'Render one preview image of the trigger word at the end of training.'),
  savePrecision: enumField(['fp16', 'bf16', 'float'] as const, 'fp16', 'dtype of the saved LoRA.'),
});

export type SdxlParameters = z.infer<typeof sdxlParameterSchema>;

export const SDXL_WEIGHTS: WeightFile[] = [
  {
    role: 'checkpoint',
    fileName: 'sd_xl_base_1.0.safetensors',
    r2Key: 'checkpoints/sd_xl_base_1.0.safetensors',
    approxBytes: 6_940_000_000,
  },
];

/** Shared by SDXL and FLUX: warm-up must end before training does. */
export function warmupIssues(p: { steps: number; lrWarmupSteps: number }): ValidationIssue[] {
  return p.lrWarmupSteps >= p.steps
    ? [{ path: joinPath(['lrWarmupSteps']), message: `must be below steps (${p.steps})`, allowed: `0..${p.steps - 1}` }]
    : [];
}

function sdxlTrainArgv(input: Parameters<Recipe<SdxlParameters>['render']>[0]): string[] {
  return [
    ...accelerateLaunch('bf16'),
    SDXL_SCRIPT,
    '--pretrained_model_name_or_path',
    modelPath(input, SDXL_WEIGHTS, 'checkpoint'),
    ...kohyaCommonFlags(input as Parameters<typeof kohyaCommonFlags>[0], 'networks.lora'),
  ];
}

/** Every flag the SDXL recipe can emit (all optional branches on), for the build-time check. */
const SDXL_ALL_FLAGS = flagsOf(
  sdxlTrainArgv({
    jobId: 'x',
    triggerWord: 'x',
    outputName: 'x',
    dataset: { imageCount: 1 },
    baseModelFiles: {},
    parameters: { ...sdxlParameterSchema.parse({}), loraDropout: 0.1, optimizer: 'Adafactor', lrScheduler: 'cosine', lrWarmupSteps: 1, saveEveryNSteps: 100 },
    resume: { step: 100, stateDir: 'x-step00000100-state' },
  }).slice(accelerateLaunch('bf16').length + 1),
);

export const sdxlRecipe: Recipe<SdxlParameters> = defineRecipe<SdxlParameters>({
  id: 'sdxl-lora',
  version: '1.2.0',
  family: 'SDXL',
  displayName: 'SDXL LoRA',
  description: 'LoRA for Stable Diffusion XL 1.0 base, trained with kohya sd-scripts (U-Net only, bf16, cached latents and text-encoder outputs).',
  product: true,
  baseModel: 'SDXL',
  engine: SD_SCRIPTS,
  image: sdScriptsImage('sdxl-kohya', [CLIP_L_TOKENIZER, CLIP_G_TOKENIZER], [
    { argv: ['python', SDXL_SCRIPT, '--help'], flags: SDXL_ALL_FLAGS },
    { argv: ['accelerate', 'launch', '--help'], flags: flagsOf(accelerateLaunch('bf16')) },
  ]),
  gpu: { count: 1, minVramGb: 12, recommendedVramGb: 24 },
  testRun: { substitutions: [TEST_RUN_TWO_STEPS, ...TEST_RUN_NO_SAMPLES] },
  datasetRequirements: { minImages: 1, recommendedImages: 20, maxImages: 1000, allowVideo: false, extensions: ['jpg', 'jpeg', 'png', 'webp'] },
  weights: SDXL_WEIGHTS,
  parameterSchema: sdxlParameterSchema,
  crossCheck: warmupIssues,
  quote(p, dataset) {
    const images = Math.max(1, dataset.imageCount);
    const area = (p.resolution / 1024) ** 2;
    const saves = p.saveEveryNSteps > 0 ? Math.floor((p.steps - 1) / p.saveEveryNSteps) : 0;
    return quoteFromTime(
      [
        { label: 'start-up and model load', seconds: 180 },
        { label: `cache latents and text-encoder outputs (${images} images)`, seconds: images * 0.8 * area + 20 },
        { label: `${p.steps} steps at batch ${p.batchSize}`, seconds: p.steps * 0.9 * area * p.batchSize * (p.optimizer === 'Adafactor' ? 1.1 : 1) },
        { label: `${saves} intermediate saves with training state`, seconds: saves * 5 },
        // One image per default prompt (3) at each save and at the end: 20 steps with CFG.
        ...(p.samplePreview ? [{ label: `${saves + 1} sample sets (3 images each)`, seconds: (saves + 1) * 3 * 8 * area }] : []),
      ],
      24,
    );
  },
  renderJob(input) {
    const p = input.parameters;
    const datasetToml = kohyaDatasetToml(p as KohyaCommonParams, input.triggerWord, [p.resolution], 64);
    const prompts = p.samplePreview ? kohyaSamplePrompts(input, p.resolution, p.seed) : undefined;
    return {
      files: kohyaFiles(datasetToml, prompts),
      steps: [{ name: 'train', argv: sdxlTrainArgv(input), reportsTrainingProgress: true }],
      outputs: kohyaOutputs(input.outputName, p.samplePreview, kohyaSavePlan(input as Parameters<typeof kohyaSavePlan>[0])),
    };
  },
  createProgressParser: () => new KohyaProgressParser(),
  checkOutput(header) {
    // networks/lora.py writes LDM/SGM U-Net names: input_blocks_*, middle_block_*, output_blocks_*.
    return checkKohyaLora(header, /^lora_unet_(input_blocks|middle_block|output_blocks)_\w+\.(lora_down\.weight|lora_up\.weight|alpha)$/, 'lora_unet_{input_blocks|middle_block|output_blocks}_* (kohya SDXL U-Net)');
  },
  outputMetadata(input) {
    return stationthisMetadata(sdxlRecipe, input, {
      ss_base_model_version: 'sdxl_base_v1-0',
      'modelspec.architecture': 'stable-diffusion-xl-v1-base/lora',
    });
  },
});
