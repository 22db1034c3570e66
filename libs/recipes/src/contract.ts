/**
 * The Recipe contract: everything the system knows about training one model
 * family. Pure data and pure functions only: other platform apps import this
 * library to build forms and quote prices, so nothing here may do I/O.
 *
 * Stability: the names exported from this file are the library's public API.
 * Additive changes bump the minor version; anything else bumps the major.
 */
import type { z } from 'zod';

export type ModelFamily = 'SDXL' | 'FLUX' | 'WAN' | 'SMOKE';

/** Fixed paths inside every training container. The worker mounts these. */
export const CONTAINER_PATHS = {
  /** Dataset: images plus one caption .txt per image. Read-only. */
  dataset: '/data/dataset',
  /** Base-model weights from the host cache. Read-only. */
  models: '/data/models',
  /** Rendered config files and the job spec. Read-only. */
  job: '/data/job',
  /** Everything the engine writes: LoRA, samples, caches. Read-write. */
  output: '/data/output',
  /** Scratch on tmpfs (the root filesystem is read-only). */
  scratch: '/tmp',
} as const;

export interface EngineRef {
  /** Short engine name, also written to loraModels.trainedFrom.tool. */
  name: 'kohya-sd-scripts' | 'musubi-tuner' | 'ai-toolkit' | 'stationthis-smoke';
  /** Upstream repository URL. */
  repository: string;
  /** Full 40-hex commit the image is built from. */
  commit: string;
}

/** One base image reference: tag pinned, digest optional. */
export interface BaseImageRef {
  /** e.g. 'nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04'. Never 'latest'. */
  image: string;
  /** Optional 'sha256:...' digest pin. */
  digest?: string;
}

/**
 * What recipe-builder renders into a multi-stage Dockerfile:
 * builder stage (devel base) installs engine + pinned deps into a venv,
 * runtime stage (runtime base) copies the venv and engine, runs as non-root.
 */
export interface ImageSpec {
  /** Image repository name under the registry namespace, e.g. 'sdxl-kohya'. */
  name: string;
  builderBase: BaseImageRef;
  runtimeBase: BaseImageRef;
  /** Debian/Ubuntu packages for the builder stage (compilers, git, python dev). */
  builderAptPackages: string[];
  /** Debian/Ubuntu packages for the runtime stage (python runtime, libgl...). */
  runtimeAptPackages: string[];
  /** Python interpreter used to create the venv, e.g. 'python3.10'. */
  python: string;
  /** Pinned pip requirements, one 'name==version' per entry, in install order. */
  pipRequirements: string[];
  /** Extra pip index URLs (e.g. the PyTorch CUDA wheel index). Build-time only. */
  pipExtraIndexUrls?: string[];
  /**
   * How the engine source gets into the image. 'git' clones repository@commit
   * in the builder stage; 'bundled' means the files are part of the build
   * context (the smoke trainer ships its own script).
   */
  engineSource: { kind: 'git'; installCommand?: string[] } | { kind: 'bundled'; files: Record<string, string> };
  /** Build steps that need hosts beyond the package registries (GitHub, CUDA wheel index) are skipped when the documented build arg OFFLINE_STUBS=1 is set. Listed here for the docs. */
  networkedSteps: string[];
  /** Command run by HEALTHCHECK: must succeed when the runtime can import the engine. */
  healthcheck: string[];
  /** Default working directory of the engine inside the image. */
  workdir: string;
  /** Extra environment for the runtime stage (no secrets, ever). */
  env?: Record<string, string>;
  /**
   * Optional extra builder-stage commands run after the engine is installed
   * (e.g. pre-downloading tokenizers so training runs with NetworkMode none).
   * argv arrays, run in `workdir` with the venv first on PATH. Steps marked
   * `networked` are skipped when OFFLINE_STUBS=1.
   */
  buildSteps?: BuildStep[];
  /**
   * Optional build-time proof that every CLI flag the recipe renders exists in
   * the pinned engine: run `argv` (a `--help` invocation) in the builder stage
   * and fail the build if any of `flags` is missing from its output.
   */
  flagChecks?: FlagCheck[];
}

/** One extra builder-stage command (see ImageSpec.buildSteps). */
export interface BuildStep {
  description: string;
  argv: string[];
  /** Needs hosts beyond the package registries; skipped with OFFLINE_STUBS=1. */
  networked: boolean;
}

/** A `--help` invocation and the flags that must appear in its output. */
export interface FlagCheck {
  argv: string[];
  flags: string[];
}

export interface GpuRequirement {
  /** Number of GPUs one job needs. 0 for the CPU smoke recipe. */
  count: number;
  minVramGb: number;
  recommendedVramGb: number;
}

/** Opt-in network access for a recipe, with the reason stated. */
export interface NetworkNeed {
  reason: string;
}

export interface DatasetRequirements {
  minImages: number;
  maxImages: number;
  /** Whether video clips are accepted (WAN). */
  allowVideo: boolean;
  /** Accepted file extensions, lower-case without dot. */
  extensions: string[];
}

/** Facts about the dataset that pricing and rendering need. */
export interface DatasetSummary {
  imageCount: number;
  videoCount?: number;
}

export interface QuoteLine {
  label: string;
  points: number;
}

/** A price quote in platform points (1 point = $0.000337). */
export interface Quote {
  /** Maximum points that may be charged for this job. Never exceeded. */
  points: number;
  /** Estimated wall-clock training seconds on the recommended GPU. */
  estimatedSeconds: number;
  /** Estimated GPU-hour rate used, in USD. */
  gpuUsdPerHour: number;
  breakdown: QuoteLine[];
}

export interface ValidationIssue {
  /** Dotted path of the offending field, e.g. 'parameters.learningRate'. */
  path: string;
  message: string;
  /** Allowed range or values, when there is one, e.g. '1e-6..1e-2'. */
  allowed?: string;
}

export type ValidationResult<T> = { ok: true; value: T } | { ok: false; issues: ValidationIssue[] };

/** Everything needed to render a job into engine files and commands. */
export interface RenderInput<P> {
  jobId: string;
  /** Validated parameters. */
  parameters: P;
  /** Sanitised trigger word (see sanitizeTriggerWord). */
  triggerWord: string;
  /** Sanitised output name: the LoRA file is `${outputName}.safetensors`. */
  outputName: string;
  dataset: DatasetSummary;
  /** Base-model weight file names (relative to CONTAINER_PATHS.models) by role. */
  baseModelFiles: Record<string, string>;
}

export interface RenderedFile {
  /** Path relative to CONTAINER_PATHS.job. */
  path: string;
  content: string;
}

export interface CommandStep {
  /** Short name for logs and progress, e.g. 'cache-latents', 'train'. */
  name: string;
  /** argv array. Never a shell string; nothing a user typed reaches a shell. */
  argv: string[];
  /** Whether this step's progress counts toward the job's training progress. */
  reportsTrainingProgress: boolean;
}

export interface ExpectedOutputs {
  /** LoRA file path relative to CONTAINER_PATHS.output. */
  lora: string;
  /** Folder (relative to output) where sample images land, if any. */
  samplesDir?: string;
}

export interface RenderedJob {
  files: RenderedFile[];
  steps: CommandStep[];
  outputs: ExpectedOutputs;
}

/** A base-model weight file the worker must place in the host cache. */
export interface WeightFile {
  /** Role name used in RenderInput.baseModelFiles, e.g. 'unet', 'clip_l'. */
  role: string;
  /** File name inside CONTAINER_PATHS.models. */
  fileName: string;
  /** Key under the platform's weights prefix in R2 (models bucket). */
  r2Key: string;
  /** Known sha256, when published. */
  sha256?: string;
  approxBytes: number;
}

export type ProgressEvent =
  | {
      kind: 'step';
      step: number;
      totalSteps: number;
      loss?: number;
      /** Iterations per second. */
      itPerSec?: number;
      etaSeconds?: number;
      epoch?: number;
    }
  | { kind: 'epoch'; epoch: number; totalEpochs?: number }
  | { kind: 'checkpoint'; path: string }
  | { kind: 'sample'; path?: string }
  | { kind: 'phase'; name: string }
  | { kind: 'error'; signature: ErrorSignature; line: string };

export type ErrorSignature = 'nan-loss' | 'cuda-oom' | 'host-oom' | 'missing-file' | 'engine-exception';

/** Stateful line parser. One instance per container run. Pure: no I/O. */
export interface ProgressParser {
  /** Feed one line (carriage-return segments arrive as separate lines). */
  feed(line: string): ProgressEvent[];
}

/** The parsed header of a .safetensors file (the JSON part only). */
export interface SafetensorsHeader {
  tensors: Record<string, { dtype: string; shape: number[] }>;
  metadata: Record<string, string>;
}

export interface OutputCheckResult {
  ok: boolean;
  problems: string[];
  tensorCount: number;
}

export interface MetadataInput {
  triggerWord: string;
  baseModel: string;
  jobId: string;
  outputName: string;
}

export interface Recipe<P = Record<string, unknown>> {
  /** Stable id, e.g. 'sdxl-lora'. */
  id: string;
  /** Semantic version of this recipe (config rendering, image, defaults). */
  version: string;
  family: ModelFamily;
  displayName: string;
  description: string;
  /** False for the CPU smoke recipe: never offered to users. */
  product: boolean;
  /** Base-model name recorded in loraModels (e.g. 'SDXL', 'FLUX', 'WAN'). */
  baseModel: string;
  engine: EngineRef;
  image: ImageSpec;
  gpu: GpuRequirement;
  /** Absent means NetworkMode none. */
  network?: NetworkNeed;
  datasetRequirements: DatasetRequirements;
  weights: WeightFile[];
  /**
   * Optional: the subset of `weights` a job with these parameters needs (e.g.
   * WAN 2.1 versus WAN 2.2 DiT files). Absent means all of `weights`. Prefer
   * the library function `requiredWeights(recipe, parameters)`.
   */
  weightsFor?(parameters: P): WeightFile[];
  /** Zod schema of the user-facing parameters, with defaults and bounds. */
  parameterSchema: z.ZodType<P>;
  /** Validate raw user input; returns every problem at once. */
  validate(raw: unknown): ValidationResult<P>;
  /** JSON Schema (draft 2020-12) of the parameters, for UIs. */
  jsonSchema(): Record<string, unknown>;
  quote(parameters: P, dataset: DatasetSummary): Quote;
  render(input: RenderInput<P>): RenderedJob;
  createProgressParser(): ProgressParser;
  /** Check the trained LoRA's header: keys, dtypes, ComfyUI compatibility. */
  checkOutput(header: SafetensorsHeader): OutputCheckResult;
  /** Metadata to write into (or verify in) the LoRA's safetensors header. */
  outputMetadata(input: MetadataInput): Record<string, string>;
}
