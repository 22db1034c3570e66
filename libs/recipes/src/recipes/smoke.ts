/**
 * CPU smoke recipe: a real LoRA training of a tiny, seed-initialised diffusion
 * model (src/smoke/trainer.py) that finishes in seconds on two CPU cores. Its
 * console output has the kohya shape, so the same progress parser applies;
 * its LoRA has kohya key names and metadata. Used by tests and the README
 * demo; never offered to users (product: false).
 */
import { PLATFORM_FEE } from '../pricing';
import { z } from 'zod';
import type { Recipe, RenderInput, SavePlan } from '../contract';
import { CONTAINER_PATHS } from '../contract';
import { choiceField, enumField, intField, numberField } from '../params';
import { KohyaProgressParser } from '../progress';
import { checkLoraHeader } from '../safetensors';
import { assertResumeSafe, escapeRegExp, samplePromptsFor } from '../saves';
import { SMOKE_TRAINER_PY, SMOKE_TRAINER_SHA256 } from '../smoke/smoke-trainer.generated';
import { toToml } from '../util/toml';
import { defineRecipe, jobPath, stationthisMetadata } from './common';

export const SMOKE_WORKDIR = '/opt/stationthis';
export const SMOKE_TRAINER_FILE = 'train_smoke.py';
export const SMOKE_CONFIG = 'smoke.toml';
/**
 * CPU threads the trainer uses. One thread: on a shared 2-core host, 2 torch
 * threads ran 100 steps in 52-64 s versus 7-9 s with 1 (oversubscription).
 */
export const SMOKE_THREADS = 1;

export const smokeParameterSchema = z.strictObject({
  steps: intField(10, 2000, 100, 'Optimizer steps.'),
  learningRate: numberField(1e-5, 1e-1, 1e-3, 'Learning rate for the LoRA.'),
  batchSize: intField(1, 16, 4, 'Images per step.'),
  resolution: choiceField([32, 64] as const, 32, 'Training crop size in pixels.'),
  loraRank: intField(1, 16, 4, 'LoRA rank.'),
  loraAlpha: numberField(0.5, 64, 4, 'LoRA alpha; scale is alpha/rank.'),
  loraDropout: numberField(0, 0.5, 0, 'Dropout on LoRA activations; 0 disables it.'),
  seed: intField(0, 2147483647, 42, 'Random seed (also initialises the frozen base model).'),
  sampleCount: intField(0, 2, 2, 'Sample PNGs written into samples/ at the end.'),
  saveEveryNSteps: intField(0, 2000, 0, 'Save an intermediate LoRA, samples and the training state every N steps; 0 saves only the final LoRA.'),
  savePrecision: enumField(['fp16', 'fp32'] as const, 'fp16', 'dtype of the saved LoRA.'),
  simulateFailure: enumField(['none', 'nan-loss', 'crash'] as const, 'none', 'Test hook: make the run fail half-way with a NaN loss or an exception.'),
});

export type SmokeParameters = z.infer<typeof smokeParameterSchema>;

/**
 * The trainer's intermediate saves (trainer.py main): at each multiple of
 * save_every_n_steps below steps, `<name>-step{:08d}.safetensors`, one PNG per
 * sample prompt `samples/<name>_{step:06d}_{k:02d}.png`, then the state folder
 * `<name>-step{:08d}-state` (state.pt + train_state.json), each renamed into
 * place from a hidden `.tmp-` name. The final samples (sampleCount) carry
 * step = steps and match the same pattern.
 */
export function smokeSavePlan(input: RenderInput<SmokeParameters>): SavePlan | undefined {
  const p = input.parameters;
  if (p.saveEveryNSteps <= 0 || p.saveEveryNSteps >= p.steps) return undefined;
  return {
    everySteps: p.saveEveryNSteps,
    totalSteps: p.steps,
    checkpointTemplate: `${input.outputName}-step{step}.safetensors`,
    stateTemplate: `${input.outputName}-step{step}-state`,
    samples: { dir: 'samples', pattern: `^${escapeRegExp(input.outputName)}_(?<step>\\d{6,})_\\d{2}\\.png$` },
    // The state holds the step, the epoch and the position in its order; the bar starts at the saved step.
    stepsAfterResume: 'continues',
  };
}

function smokeConfig(input: RenderInput<SmokeParameters>, metadata: Record<string, string>): string {
  const p = input.parameters;
  const saves = smokeSavePlan(input);
  if (input.resume) assertResumeSafe(input.resume);
  return toToml({
    dataset_dir: CONTAINER_PATHS.dataset,
    output_dir: CONTAINER_PATHS.output,
    output_name: input.outputName,
    train: {
      steps: p.steps,
      learning_rate: p.learningRate,
      batch_size: p.batchSize,
      resolution: p.resolution,
      network_dim: p.loraRank,
      network_alpha: p.loraAlpha,
      network_dropout: p.loraDropout,
      seed: p.seed,
      sample_count: p.sampleCount,
      save_every_n_steps: p.saveEveryNSteps,
      save_precision: p.savePrecision,
      simulate_failure: p.simulateFailure,
      threads: SMOKE_THREADS,
      ...(saves ? { save_state: true, sample_prompts: samplePromptsFor(input) } : {}),
      ...(input.resume ? { resume: `${CONTAINER_PATHS.output}/${input.resume.stateDir}` } : {}),
    },
    metadata,
  });
}

export const smokeRecipe: Recipe<SmokeParameters> = defineRecipe<SmokeParameters>({
  id: 'smoke-cpu',
  version: '1.1.0',
  family: 'SMOKE',
  displayName: 'CPU smoke LoRA (internal)',
  description: 'Real LoRA training of a tiny seed-initialised diffusion model on CPU, for tests and demos. Not a product.',
  product: false,
  baseModel: 'SMOKE',
  engine: {
    name: 'stationthis-smoke',
    // The trainer ships inside this library (engineSource kind 'bundled'); there
    // is nothing to clone. The "commit" is content-addressed: the first 40 hex
    // digits of the trainer's sha256, so the image label changes with the code.
    repository: 'bundled:@stationthis/recipes/src/smoke/trainer.py',
    commit: SMOKE_TRAINER_SHA256.slice(0, 40),
  },
  image: {
    name: 'smoke-cpu',
    // recipe-builder may override both bases with the local Debian bookworm base.
    builderBase: { image: 'debian:bookworm-slim' },
    runtimeBase: { image: 'debian:bookworm-slim' },
    builderAptPackages: [],
    // Debian's CPU PyTorch (1.13), NumPy, tqdm and Pillow: no pip, no network beyond the Debian mirror.
    runtimeAptPackages: ['python3', 'python3-torch', 'python3-numpy', 'python3-tqdm', 'python3-pil'],
    python: 'python3',
    pipRequirements: [],
    engineSource: { kind: 'bundled', files: { [SMOKE_TRAINER_FILE]: SMOKE_TRAINER_PY } },
    healthcheck: ['python3', '-c', 'import torch, numpy, PIL, tqdm'],
    workdir: SMOKE_WORKDIR,
    env: { PYTHONUNBUFFERED: '1', HOME: CONTAINER_PATHS.scratch, OMP_NUM_THREADS: String(SMOKE_THREADS) },
    flagChecks: [{ argv: ['python3', `${SMOKE_WORKDIR}/${SMOKE_TRAINER_FILE}`, '--help'], flags: ['--config'] }],
  },
  gpu: { count: 0, minVramGb: 0, recommendedVramGb: 0 },
  datasetRequirements: { minImages: 1, maxImages: 50, allowVideo: false, extensions: ['jpg', 'jpeg', 'png'] },
  weights: [],
  parameterSchema: smokeParameterSchema,
  crossCheck: () => [],
  quote(p, dataset) {
    // Fixed-ish internal price: 10 points plus 1 per 10 steps (100 steps = 20 points).
    const area = (p.resolution / 32) ** 2;
    const estimatedSeconds = Math.ceil(5 + p.steps * 0.05 * (p.batchSize / 4) * area + p.sampleCount * 1 + dataset.imageCount * 0.01);
    const stepPoints = Math.ceil(p.steps / 10);
    return {
      points: 10 + stepPoints,
      estimatedSeconds,
      // A nominal CPU-slot price so the demo and tests exercise real charge/refund/credit arithmetic.
      gpuUsdPerHour: 0.5,
      platformFee: PLATFORM_FEE,
      breakdown: [
        { label: 'smoke base price', points: 10 },
        { label: `${p.steps} CPU steps (1 point per 10)`, points: stepPoints },
      ],
    };
  },
  renderJob(input) {
    const metadata = smokeRecipe.outputMetadata({
      triggerWord: input.triggerWord,
      baseModel: 'SMOKE',
      jobId: input.jobId,
      outputName: input.outputName,
    });
    const saves = smokeSavePlan(input);
    return {
      files: [{ path: SMOKE_CONFIG, content: smokeConfig(input, metadata) }],
      steps: [
        {
          name: 'train',
          argv: ['python3', `${SMOKE_WORKDIR}/${SMOKE_TRAINER_FILE}`, '--config', jobPath(SMOKE_CONFIG)],
          reportsTrainingProgress: true,
        },
      ],
      outputs: {
        lora: `${input.outputName}.safetensors`,
        ...(input.parameters.sampleCount > 0 || saves?.samples ? { samplesDir: 'samples' } : {}),
        ...(saves ? { saves } : {}),
      },
    };
  },
  createProgressParser: () => new KohyaProgressParser(),
  checkOutput(header) {
    const dim = Number(header.metadata['ss_network_dim']);
    return checkLoraHeader(header, {
      keyPattern: /^lora_unet_\w+\.(lora_down\.weight|lora_up\.weight|alpha)$/,
      keyDescription: 'lora_unet_* (kohya style)',
      dtypes: ['F16', 'F32'],
      style: 'kohya',
      ...(Number.isInteger(dim) && dim > 0 ? { rank: dim } : {}),
    });
  },
  outputMetadata(input) {
    return stationthisMetadata(smokeRecipe, input, {
      ss_base_model_version: 'stationthis_smoke_unet_v1',
      'modelspec.architecture': 'stationthis-smoke/lora',
    });
  },
});
