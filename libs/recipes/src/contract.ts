/**
 * The Recipe contract: everything the system knows about training one model
 * family. Pure data and pure functions only: other platform apps import this
 * library to build forms and quote prices, so nothing here may do I/O.
 *
 * Stability: the names exported from this file are the library's public API.
 * Additive changes bump the minor version; anything else bumps the major.
 */
import type { z } from 'zod';

export type ModelFamily = 'SDXL' | 'FLUX' | 'KONTEXT' | 'FLUX2' | 'WAN' | 'SMOKE';

/** Fixed paths inside every training container. The worker mounts these. */
export const CONTAINER_PATHS = {
  /** Dataset: images plus one caption .txt per image. Read-only. */
  dataset: '/data/dataset',
  /**
   * Control (reference) images of an edit model such as FLUX.1 Kontext: one per
   * dataset image, with the same file stem (`img_0001.png` for
   * `img_0001.jpg`). Read-only; mounted only for recipes with `controlImagesFor`.
   */
  control: '/data/control',
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
 * What recipe-builder renders into a multi-stage Dockerfile. Two layouts:
 *
 * - Bundled engines (the smoke recipe): builder and runtime stages on the
 *   Debian bases below; the engine files ship with the recipe.
 * - Engines on the shared PyTorch layer (`torchBase` set): recipe-builder
 *   first builds one torch image from the Debian bases, the apt packages and
 *   `torchBase.pipRequirements` (tagged by a hash of exactly those inputs, so
 *   every recipe with the same inputs shares it, and a recipe-only change never
 *   rebuilds it); the engine image's builder and runtime stages then start
 *   FROM that image, the engine's own pinned dependencies go to
 *   ENGINE_SITE_DIR (`pip install --no-deps`, so nothing is resolved at build
 *   time and the torch layer is never reinstalled), and the engine source is
 *   unpacked from its pinned archive or fetched from git at the pinned commit.
 *
 * Everything comes from PyPI and the Debian mirror: PyPI's default Linux torch
 * wheels are CUDA builds that bring the CUDA runtime as `nvidia-*` wheels, so
 * one image runs on CPU and on NVIDIA hosts; no CUDA base image is needed.
 */
export interface ImageSpec {
  /** Image repository name under the registry namespace, e.g. 'sdxl-kohya'. */
  name: string;
  builderBase: BaseImageRef;
  runtimeBase: BaseImageRef;
  /** Debian packages for the builder stage (python3-venv, git...). */
  builderAptPackages: string[];
  /** Debian packages for the runtime stage (python runtime, libgl...). With torchBase: of the shared torch image. */
  runtimeAptPackages: string[];
  /** Python interpreter used to create the venv, e.g. 'python3' (Debian bookworm: 3.11). */
  python: string;
  /**
   * Pinned pip requirements, one 'name==version' per entry, in install order.
   * With torchBase: the engine's complete pinned dependency set minus what the
   * torch layer holds, installed with --no-deps.
   */
  pipRequirements: string[];
  /** The shared PyTorch layer (see above). */
  torchBase?: TorchBaseSpec;
  /** Extra pip index URLs. Build-time only; none of the production recipes needs one. */
  pipExtraIndexUrls?: string[];
  /** How the engine source gets into the image. */
  engineSource: GitEngineSource | BundledEngineSource;
  /**
   * Hugging Face tokenizers the engine loads by repository id at run time. The
   * image bakes them into HF_HOME: from a local folder given to the build
   * (offline builds), otherwise from the Hub; either way the build then loads
   * each one exactly as the engine will, with HF_HUB_OFFLINE=1, and fails when
   * one is missing.
   */
  tokenizers?: TokenizerSpec[];
  /** Command run by HEALTHCHECK: must succeed when the runtime can import the engine. */
  healthcheck: string[];
  /** Default working directory of the engine inside the image. */
  workdir: string;
  /** Extra environment for the runtime stage (no secrets, ever). Build steps do not see the HF offline switches. */
  env?: Record<string, string>;
  /**
   * Optional extra builder-stage commands run after the engine is installed,
   * argv arrays run in `workdir` with the venv first on PATH. They run with no
   * network expectations (a step that needs the network belongs in the recipe
   * as data, like `tokenizers`).
   */
  buildSteps?: BuildStep[];
  /**
   * Build-time proof that every CLI flag the recipe renders exists in the
   * pinned engine: run `argv` (a `--help` invocation) in the builder stage and
   * fail the build if any of `flags` is missing from its output.
   */
  flagChecks?: FlagCheck[];
  /**
   * Engine modules that call CUDA at import time (e.g. a default argument
   * `device=torch.cuda.current_device()`), which crashes on a host without a
   * GPU: the builder's flag checks and CPU conformance runs. The image imports
   * each with `torch.cuda.current_device` answering 'cpu' while no GPU is
   * present; with a GPU nothing changes.
   */
  cudaFreeImports?: CudaFreeImport[];
}

export interface CudaFreeImport {
  /** Dotted module name, e.g. 'musubi_tuner.wan.modules.t5'. */
  module: string;
  /** Where the import-time CUDA call is, for the reader of the Dockerfile. */
  why: string;
}

/** The shared PyTorch layer of the engine images (see ImageSpec). */
export interface TorchBaseSpec {
  /** Image repository name, e.g. 'torch-py311'; the tag is a hash of its inputs. */
  name: string;
  /** torch, torchvision and every dependency (nvidia-* CUDA wheels included), pinned, installed with --no-deps. */
  pipRequirements: string[];
}

/** Engine source at a pinned commit: from GitHub, or from the source archive of that commit. */
export interface GitEngineSource {
  kind: 'git';
  /**
   * The archive of the pinned commit (one top folder holding the tree), used
   * when the build is given an archive folder (hosts that cannot reach
   * GitHub). Its sha256 is checked before and inside the build.
   */
  archive: EngineArchive;
  /** Folders (relative to workdir) put on PYTHONPATH, instead of an editable install. */
  pythonPath?: string[];
}

export interface EngineArchive {
  /** File name, e.g. 'sd-scripts-48d368fa.tar.gz' (a gzip tarball). */
  fileName: string;
  /** 64 hex digits. */
  sha256: string;
  /** The single top-level folder inside the archive. */
  topFolder: string;
}

export interface BundledEngineSource {
  kind: 'bundled';
  /** Path (relative to workdir, or absolute) → file content. */
  files: Record<string, string>;
}

/** A tokenizer the engine loads with `<loader>.from_pretrained(repo, subfolder=...)`. */
export interface TokenizerSpec {
  repo: string;
  subfolder?: string;
  /** transformers class the engine uses. */
  loader: 'CLIPTokenizer' | 'T5TokenizerFast' | 'T5Tokenizer' | 'Qwen2Tokenizer' | 'AutoTokenizer';
  /** Which engine code loads it, for the error message when it is missing. */
  usedBy: string;
}

/** One extra builder-stage command (see ImageSpec.buildSteps). */
export interface BuildStep {
  description: string;
  argv: string[];
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
  /** Fewest items the engine can train on (a smaller dataset is refused before any charge). */
  minImages: number;
  /** Most items the worker downloads (the dataset fetcher's own limit); the engines have none. */
  maxImages: number;
  /** Below this many items the job runs, with a warning in its log (see datasetSizeCheck). */
  recommendedImages?: number;
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
  /** The platform fee the quote was priced with (0.2 = 20 %); settlement uses the same. */
  platformFee: number;
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
  /**
   * Prompts for the fixed-seed sample images at each save. Absent or empty:
   * `defaultSamplePrompts(triggerWord)`. Each is one line; the recipe adds its
   * engine's sampling options (size, steps, seed) itself.
   */
  samplePrompts?: string[];
  /** Continue from a saved engine state (a re-claimed attempt). Absent: train from step 0. */
  resume?: ResumeFrom;
  /**
   * Recipes with `controlImagesFor`: the control files the worker wrote, relative
   * to CONTAINER_PATHS.control, in dataset order (e.g. `img_0001.png`). Used
   * for sample prompts that need a reference image; absent: no such samples.
   */
  controlImages?: string[];
}

/** Where a resumed run starts: the engine state the worker put back into the output folder. */
export interface ResumeFrom {
  /** The step the state was saved at; the job's step count continues from it. */
  step: number;
  /** The state folder, relative to CONTAINER_PATHS.output (where the engine wrote it: `SavePlan.stateTemplate`). */
  stateDir: string;
}

/**
 * The intermediate saves a rendered job makes, so the worker can find, upload
 * and record them while training runs. Templates are relative to
 * CONTAINER_PATHS.output; `{step}` stands for the step zero-padded to 8 digits
 * (the engines' `-step{:08d}` naming). Use `savePlanSteps`, `checkpointFileAt`,
 * `stateDirAt` and `sampleStepOf` rather than reading the templates by hand.
 *
 * A save at step N is complete once the engine reports a step after N, or
 * exits 0: every engine here saves synchronously inside its training loop.
 */
export interface SavePlan {
  /** Steps between saves (> 0). The final LoRA (`ExpectedOutputs.lora`) is saved at totalSteps besides. */
  everySteps: number;
  /** The planned total optimizer steps of the job. */
  totalSteps: number;
  /** The checkpoint LoRA written at each save, e.g. `name-step{step}.safetensors`. */
  checkpointTemplate: string;
  /** The engine's full training state written with each save (optimizer, scheduler, RNG, step): absent when the recipe cannot resume. */
  stateTemplate?: string;
  /** Sample images written at each save: their folder (relative to output) and a regex source whose named group `step` is the save's step. */
  samples?: { dir: string; pattern: string };
  /**
   * How the engine counts steps after a resume: `continues` (it reports the
   * saved step + k and names saves by the job's step) or `restarts` (it
   * reports k and names saves by k; the worker adds `ResumeFrom.step`).
   */
  stepsAfterResume: 'continues' | 'restarts';
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
  /** Intermediate saves (checkpoints, samples, engine state). Absent: only the final LoRA is saved. */
  saves?: SavePlan;
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

/** One argv change a test run needs, with the reason (shown to the operator and in reports). */
export interface ArgvSubstitution {
  flag: string;
  /** replace: set the flag's value; drop: remove the flag (and its values, see arity). */
  action: 'replace' | 'drop';
  value?: string;
  /** Number of values the flag takes. @default 0 for drop, 1 for replace */
  arity?: number;
  /**
   * replace only: `value` is a step count from step 0, and the engine restarts
   * its count on resume (SavePlan.stepsAfterResume 'restarts'): a run resumed
   * at step N gets value - N (applyArgvSubstitutions' `resumedAtStep`).
   */
  minusResumedStep?: boolean;
  reason: string;
}

/** A base-model file a test run uses instead of the production one: same keys, another dtype. */
export interface WeightOverride {
  role: string;
  fileName: string;
  reason: string;
}

/**
 * How a GPU recipe runs as a test on a host without a GPU (the conformance
 * suite, the engine demo): two optimizer steps and the device/precision
 * changes a CPU needs. Everything else is the production argv, unchanged.
 * A worker applies it only when its operator enables CPU test runs; it is
 * never applied to a production worker.
 */
export interface TestRunProfile {
  substitutions: ArgvSubstitution[];
  weightOverrides?: WeightOverride[];
}

/**
 * Control images a job needs beside its dataset (edit models: FLUX.1 Kontext).
 * The worker writes them into CONTAINER_PATHS.control, named after the
 * dataset image they belong to (same stem), before the container starts.
 */
export interface ControlImagesNeed {
  /**
   * `paired`: the dataset's own control images (the platform's `embellishments`
   * of type `control`, or the legacy `controlImages` matched by
   * `sourceFilename`), checked by `resolveControlPairs` before the charge.
   * `blank`: the same neutral image (`BLANK_CONTROL_PNG_BASE64`) for every target, for
   * engines that need a reference image where the training mode has none.
   */
  source: 'paired' | 'blank';
}

/** What the worker writes into the platform's `loraModels` document for a trained LoRA. */
export interface RegistrationSpec {
  /**
   * `loraModels.checkpoint`: the base-model family the platform's LoRA
   * resolver matches against a workflow's checkpoint, so the LoRA loads on
   * that family's workflows only (e.g. 'KONTEXT').
   */
  checkpoint: string;
}

/**
 * Whether a recipe is on the platform's menu: `menu` recipes are listed and
 * mapped from their modelType; `operator-only` ones exist (tests, conformance,
 * image builds) but stay off the menu and unmapped until an operator enables
 * them by id (`RegistryOptions.enabled`, the worker's `RECIPES_ENABLED`).
 */
export type RecipeAvailability = 'menu' | 'operator-only';

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
  /**
   * The platform's `trainingJobs.modelType` values this recipe trains (any
   * case). Absent: `[family]`. The registry maps them; no table elsewhere.
   */
  modelTypes?: string[];
  /** What registration writes into loraModels. Absent: the platform's own mapping of `baseModel`. */
  registration?: RegistrationSpec;
  /** @default 'menu' */
  availability?: RecipeAvailability;
  /** Control images this job needs beside the dataset. Absent or undefined: none. */
  controlImagesFor?(parameters: P): ControlImagesNeed | undefined;
  engine: EngineRef;
  image: ImageSpec;
  gpu: GpuRequirement;
  /** Absent means NetworkMode none. */
  network?: NetworkNeed;
  /** How this recipe runs as a CPU test (see TestRunProfile). Absent: it has none (the smoke recipe is CPU already). */
  testRun?: TestRunProfile;
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
