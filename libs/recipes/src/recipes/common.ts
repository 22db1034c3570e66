/**
 * Pieces shared by the recipes: pinned engines, image descriptions, the
 * `accelerate launch` prefix, metadata and the recipe factory.
 */
import type { z } from 'zod';
import type {
  DatasetSummary,
  TokenizerSpec,
  TorchBaseSpec,
  EngineRef,
  ImageSpec,
  MetadataInput,
  Quote,
  Recipe,
  RenderInput,
  RenderedJob,
  ValidationIssue,
  WeightFile,
} from '../contract';
import { CONTAINER_PATHS } from '../contract';
import type { ArgvSubstitution } from '../contract';
import { toJsonSchema, validateWith } from '../params';
import { assertRenderSafe } from '../sanitize';

/**
 * kohya-ss/sd-scripts main at v0.10.1 (2026-02-16): FLUX.1 merged into main in
 * v0.10.0. Flags verified against this snapshot (reference trainer-engines.md
 * section 0) and re-checked at image build time by ImageSpec.flagChecks.
 */
export const SD_SCRIPTS: EngineRef = {
  name: 'kohya-sd-scripts',
  repository: 'https://github.com/kohya-ss/sd-scripts',
  commit: '48d368fa557731ad0488c07304dfeba8c07910eb',
};

/** kohya-ss/musubi-tuner tag v0.3.4 (2026-06-24). */
export const MUSUBI_TUNER: EngineRef = {
  name: 'musubi-tuner',
  repository: 'https://github.com/kohya-ss/musubi-tuner',
  commit: '30c658c4f4b0bf05038b3346eff9670259b10fc7',
};

export const SD_SCRIPTS_DIR = '/opt/sd-scripts';
export const MUSUBI_DIR = '/opt/musubi-tuner';
/** Tokenizers are baked into the image here, so training runs with NetworkMode none. */
export const HF_HOME = '/opt/hf-home';

/**
 * Runtime environment of the engine images. No secrets. The HF offline
 * switches are runtime-only: the build loads the baked tokenizers with them
 * set explicitly, after anything it had to download.
 */
export const ENGINE_RUNTIME_ENV: Record<string, string> = {
  PYTHONUNBUFFERED: '1',
  HF_HOME,
  HF_HUB_OFFLINE: '1',
  TRANSFORMERS_OFFLINE: '1',
  HF_HUB_DISABLE_TELEMETRY: '1',
  // The root filesystem is read-only: every cache goes to the /tmp tmpfs.
  HOME: CONTAINER_PATHS.scratch,
  XDG_CACHE_HOME: `${CONTAINER_PATHS.scratch}/.cache`,
  TRITON_CACHE_DIR: `${CONTAINER_PATHS.scratch}/.triton`,
  MPLCONFIGDIR: `${CONTAINER_PATHS.scratch}/.matplotlib`,
  // Fewer tqdm redraws in the captured log (honoured by tqdm >= 4.66).
  TQDM_MININTERVAL: '2',
  // A fixed width keeps tqdm meters on one line when stderr is not a TTY.
  COLUMNS: '160',
};

/**
 * The shared PyTorch layer: torch 2.6.0 (the version sd-scripts' README tests;
 * musubi needs >= 2.5.1 for --sdpa) as PyPI's default Linux wheel, a CUDA 12.4
 * build whose CUDA runtime arrives as nvidia-* wheels. The full set is pinned
 * (resolved once with pip for CPython 3.11, Debian bookworm's python3) and
 * installed with --no-deps, so a build resolves nothing.
 */
export const TORCH_BASE: TorchBaseSpec = {
  name: 'torch-py311',
  pipRequirements: [
    'torch==2.6.0',
    'torchvision==0.21.0',
    'triton==3.2.0',
    'filelock==4.3.2',
    'fsspec==2026.9.0',
    'Jinja2==3.1.6',
    'MarkupSafe==3.0.4',
    'mpmath==1.3.0',
    'networkx==3.6.1',
    'numpy==2.4.6',
    'nvidia-cublas-cu12==12.4.5.8',
    'nvidia-cuda-cupti-cu12==12.4.127',
    'nvidia-cuda-nvrtc-cu12==12.4.127',
    'nvidia-cuda-runtime-cu12==12.4.127',
    'nvidia-cudnn-cu12==9.1.0.70',
    'nvidia-cufft-cu12==11.2.1.3',
    'nvidia-curand-cu12==10.3.5.147',
    'nvidia-cusolver-cu12==11.6.1.9',
    'nvidia-cusparse-cu12==12.3.1.170',
    'nvidia-cusparselt-cu12==0.6.2',
    'nvidia-nccl-cu12==2.21.5',
    'nvidia-nvjitlink-cu12==12.4.127',
    'nvidia-nvtx-cu12==12.4.127',
    'pillow==13.0.0',
    'sympy==1.13.1',
    'typing_extensions==4.16.0',
  ],
};

/**
 * Debian bookworm for both stages (python3 is 3.11). Runtime packages are the
 * union the engines' wheels load (opencv: libgl1, libglib2.0-0; av bundles its
 * own ffmpeg): both engine images share one torch layer only when these match.
 */
const ENGINE_BASES = {
  builderBase: { image: 'debian:bookworm-slim' },
  runtimeBase: { image: 'debian:bookworm-slim' },
  builderAptPackages: ['ca-certificates', 'git', 'python3', 'python3-venv'],
  runtimeAptPackages: ['ca-certificates', 'git', 'libgl1', 'libglib2.0-0', 'libsm6', 'libxext6', 'python3'],
  python: 'python3',
} as const;

/**
 * sd-scripts' requirements.txt at the pinned commit, resolved together with
 * TORCH_BASE (pip freeze), minus the torch layer. requirements.txt leaves
 * bitsandbytes and numpy unpinned; this freezes them.
 */
export const SD_SCRIPTS_REQUIREMENTS: string[] = [
  'absl-py==2.5.1',
  'accelerate==1.6.0',
  'bitsandbytes==0.50.2',
  'certifi==2026.10.19.post1',
  'charset-normalizer==3.5.3',
  'diffusers==0.32.1',
  'einops==0.7.0',
  'ftfy==6.3.1',
  'grpcio==1.85.4',
  'hf-xet==1.8.0',
  'huggingface-hub==0.34.3',
  'idna==3.21',
  'imagesize==1.4.1',
  'importlib_metadata==10.2.0',
  'lazy-importer==0.1.0',
  'lion-pytorch==0.2.3',
  'Markdown==3.11.3',
  'markdown-it-py==4.3.0',
  'mdurl==0.1.2',
  'opencv-python==4.10.0.84',
  'packaging==26.4',
  'prodigy-plus-schedule-free==1.9.2',
  'prodigyopt==1.1.2',
  'protobuf==7.36.2',
  'psutil==7.2.2',
  'Pygments==2.21.0',
  'pytorch_optimizer==3.9.0',
  'PyYAML==6.0.4',
  'regex==2026.12.2',
  'requests==2.34.2',
  'rich==14.1.0',
  'safetensors==0.4.5',
  'schedulefree==1.4',
  'sentencepiece==0.2.1',
  'tensorboard==2.21.0',
  'tensorboard-data-server==0.7.2',
  'tokenizers==0.21.4',
  'toml==0.10.2',
  'tqdm==4.70.1',
  'transformers==4.54.1',
  'urllib3==2.8.0',
  'voluptuous==0.15.2',
  'wcwidth==0.9.5',
  'Werkzeug==3.1.9',
  'zipp==4.1.2',
];

/** Source archive of the pinned sd-scripts commit (shared/engines/SHA256SUMS). */
export const SD_SCRIPTS_ARCHIVE = {
  fileName: 'sd-scripts-48d368fa.tar.gz',
  sha256: 'ea24a08e1579180e9dc6203951406d7ad8d7c06b0c293e23532694cab0f24ed5',
  topFolder: 'sd-scripts',
};

/** Source archive of the pinned musubi-tuner commit (shared/engines/SHA256SUMS). */
export const MUSUBI_ARCHIVE = {
  fileName: 'musubi-tuner-30c658c4.tar.gz',
  sha256: '857ba086b140b288ff33573222a4f96ac1f8468c9a414c244da0975ec4675514',
  topFolder: 'musubi-tuner',
};

/** Tokenizers sd-scripts loads by repository id (library/strategy_sdxl.py, strategy_flux.py). */
export const CLIP_L_TOKENIZER: TokenizerSpec = { repo: 'openai/clip-vit-large-patch14', loader: 'CLIPTokenizer', usedBy: 'sd-scripts library/strategy_sdxl.py TOKENIZER1_PATH, strategy_flux.py CLIP_L_TOKENIZER_ID' };
export const CLIP_G_TOKENIZER: TokenizerSpec = { repo: 'laion/CLIP-ViT-bigG-14-laion2B-39B-b160k', loader: 'CLIPTokenizer', usedBy: 'sd-scripts library/strategy_sdxl.py TOKENIZER2_PATH' };
export const T5_XXL_TOKENIZER: TokenizerSpec = { repo: 'google/t5-v1_1-xxl', loader: 'T5TokenizerFast', usedBy: 'sd-scripts library/strategy_flux.py T5_XXL_TOKENIZER_ID' };
/** musubi's WAN T5 loads its tokenizer from the WAN repository's subfolder, not from google/umt5-xxl (wan/modules/t5.py). */
export const UMT5_TOKENIZER: TokenizerSpec = {
  repo: 'Wan-AI/Wan2.1-T2V-14B',
  subfolder: 'google/umt5-xxl',
  loader: 'AutoTokenizer',
  usedBy: 'musubi-tuner wan/modules/t5.py T5EncoderModel (tokenizer_path None)',
};

/** One image per recipe: SDXL and FLUX share the engine but version independently, so their tags must not collide. */
export function sdScriptsImage(name: string, tokenizers: TokenizerSpec[], flagChecks: ImageSpec['flagChecks']): ImageSpec {
  return {
    name,
    ...ENGINE_BASES,
    builderAptPackages: [...ENGINE_BASES.builderAptPackages],
    runtimeAptPackages: [...ENGINE_BASES.runtimeAptPackages],
    torchBase: TORCH_BASE,
    pipRequirements: [...SD_SCRIPTS_REQUIREMENTS],
    // The scripts run from the checkout (cwd = workdir), so `library` imports without `pip install -e .`.
    engineSource: { kind: 'git', archive: SD_SCRIPTS_ARCHIVE },
    tokenizers,
    flagChecks,
    healthcheck: ['python', '-c', 'import torch, accelerate, library.train_util'],
    workdir: SD_SCRIPTS_DIR,
    env: { ...ENGINE_RUNTIME_ENV },
  };
}

/**
 * musubi-tuner's pyproject.toml dependencies at the pinned commit, resolved
 * together with TORCH_BASE (pip freeze), minus the torch layer.
 */
export const MUSUBI_REQUIREMENTS: string[] = [
  'accelerate==1.6.0',
  'av==14.0.1',
  'bitsandbytes==0.50.2',
  'certifi==2026.10.19.post1',
  'charset-normalizer==3.5.3',
  'diffusers==0.32.1',
  'easydict==1.13',
  'einops==0.7.0',
  'ftfy==6.3.1',
  'hf-xet==1.8.0',
  'huggingface-hub==0.34.3',
  'idna==3.21',
  'importlib_metadata==10.2.0',
  'lazy-importer==0.1.0',
  'opencv-python==4.10.0.84',
  'packaging==26.4',
  'psutil==7.2.2',
  'PyYAML==6.0.4',
  'regex==2026.12.2',
  'requests==2.34.2',
  'safetensors==0.4.5',
  'sentencepiece==0.2.1',
  'tokenizers==0.22.2',
  'toml==0.10.2',
  'tqdm==4.67.1',
  'transformers==4.57.6',
  'urllib3==2.8.0',
  'voluptuous==0.15.2',
  'wcwidth==0.9.5',
  'zipp==4.1.2',
];

/** Tokenizers musubi's FLUX code loads by repository id (flux/flux_utils.py CLIP_L_TOKENIZER_ID, T5_XXL_TOKENIZER_ID; T5 as the slow T5Tokenizer). */
export const MUSUBI_FLUX_TOKENIZERS: TokenizerSpec[] = [
  { repo: 'openai/clip-vit-large-patch14', loader: 'CLIPTokenizer', usedBy: 'musubi-tuner flux/flux_utils.py load_clip_l (CLIP_L_TOKENIZER_ID)' },
  { repo: 'google/t5-v1_1-xxl', loader: 'T5Tokenizer', usedBy: 'musubi-tuner flux/flux_utils.py load_t5xxl (T5_XXL_TOKENIZER_ID)' },
];

export interface MusubiImageOptions {
  /**
   * Image repository name. Recipes on the same engine version independently,
   * so each has its own repository (tags are recipe versions and must not collide).
   * @default 'musubi-tuner' (WAN)
   */
  name?: string;
  /** @default [UMT5_TOKENIZER] (WAN) */
  tokenizers?: TokenizerSpec[];
}

/** One musubi-tuner image per recipe: the same torch layer, requirements and engine archive; its own flag checks and tokenizers. */
export function musubiImage(flagChecks: ImageSpec['flagChecks'], options: MusubiImageOptions = {}): ImageSpec {
  return {
    name: options.name ?? 'musubi-tuner',
    ...ENGINE_BASES,
    builderAptPackages: [...ENGINE_BASES.builderAptPackages],
    runtimeAptPackages: [...ENGINE_BASES.runtimeAptPackages],
    torchBase: TORCH_BASE,
    pipRequirements: [...MUSUBI_REQUIREMENTS],
    // The scripts import `musubi_tuner.*`: src/ on PYTHONPATH stands in for `pip install -e .`.
    engineSource: { kind: 'git', archive: MUSUBI_ARCHIVE, pythonPath: ['src'] },
    tokenizers: options.tokenizers ?? [UMT5_TOKENIZER],
    flagChecks,
    cudaFreeImports: [{ module: 'musubi_tuner.wan.modules.t5', why: 'wan/modules/t5.py T5EncoderModel.__init__ default argument device=torch.cuda.current_device()' }],
    healthcheck: ['python', '-c', 'import torch, accelerate, musubi_tuner'],
    workdir: MUSUBI_DIR,
    env: { ...ENGINE_RUNTIME_ENV },
  };
}

/**
 * `accelerate launch` without the interactive `accelerate config`: every
 * setting the prompt would ask for is passed as a flag.
 */
export function accelerateLaunch(mixedPrecision: 'bf16' | 'fp16'): string[] {
  return [
    'accelerate',
    'launch',
    '--num_processes',
    '1',
    '--num_machines',
    '1',
    '--mixed_precision',
    mixedPrecision,
    '--dynamo_backend',
    'no',
    '--num_cpu_threads_per_process',
    '1',
  ];
}

/** Every `--flag` in an argv, for ImageSpec.flagChecks and the flag-existence tests. */
export function flagsOf(argv: string[]): string[] {
  return [...new Set(argv.filter((a) => /^--[a-z]/.test(a)).map((a) => a.split('=')[0]!))];
}

/** Absolute path of a base-model file inside the container. */
export function modelPath(input: RenderInput<unknown>, weights: WeightFile[], role: string): string {
  const fromInput = input.baseModelFiles[role];
  const fileName = fromInput ?? weights.find((w) => w.role === role)?.fileName;
  if (!fileName) throw new Error(`render: no base-model file for role '${role}'`);
  if (fileName.includes('..') || fileName.startsWith('/') || !/^[A-Za-z0-9._/-]+$/.test(fileName)) {
    throw new Error(`render: base-model file name for role '${role}' must be a relative path of [A-Za-z0-9._/-], got ${JSON.stringify(fileName)}`);
  }
  return `${CONTAINER_PATHS.models}/${fileName}`;
}

export function jobPath(file: string): string {
  return `${CONTAINER_PATHS.job}/${file}`;
}

/** Shared metadata: the keys the engines write (ss_*, modelspec.*) plus ours. */
export function stationthisMetadata(
  recipe: { id: string; version: string; engine: EngineRef },
  input: MetadataInput,
  engineKeys: Record<string, string>,
): Record<string, string> {
  return {
    ss_output_name: input.outputName,
    ...engineKeys,
    'modelspec.title': input.outputName,
    'modelspec.trigger_phrase': input.triggerWord,
    stationthis_trigger_word: input.triggerWord,
    stationthis_base_model: input.baseModel,
    stationthis_job_id: input.jobId,
    stationthis_recipe_id: recipe.id,
    stationthis_recipe_version: recipe.version,
    stationthis_engine: recipe.engine.name,
    stationthis_engine_commit: recipe.engine.commit,
  };
}

/** Format a number for argv the way Python's float()/int() will read it back. */
export function num(n: number): string {
  if (Number.isInteger(n)) return String(n);
  // Avoid 1.0000000000000001e-4 style noise from JS; 12 significant digits are plenty.
  return String(Number(n.toPrecision(12)));
}

export interface RecipeSpec<P> extends Omit<Recipe<P>, 'validate' | 'jsonSchema' | 'quote' | 'render'> {
  parameterSchema: z.ZodObject & z.ZodType<P>;
  /** Cross-field checks after the schema passed. */
  crossCheck?(value: P): ValidationIssue[];
  quote(parameters: P, dataset: DatasetSummary): Quote;
  renderJob(input: RenderInput<P>): RenderedJob;
}

/** Build a Recipe from its spec: validation, JSON Schema and render guards are uniform. */
export function defineRecipe<P>(spec: RecipeSpec<P>): Recipe<P> {
  const { crossCheck, renderJob, ...rest } = spec;
  const recipe: Recipe<P> = {
    ...rest,
    validate(raw: unknown) {
      return validateWith<P>(spec.parameterSchema, raw, crossCheck);
    },
    jsonSchema() {
      return toJsonSchema(spec.parameterSchema, `${spec.displayName} parameters`);
    },
    quote(parameters: P, dataset: DatasetSummary) {
      return spec.quote(parameters, dataset);
    },
    render(input: RenderInput<P>) {
      assertRenderSafe(input);
      const checked = validateWith<P>(spec.parameterSchema, input.parameters, crossCheck);
      if (!checked.ok) {
        const lines = checked.issues.map((i) => `${i.path}: ${i.message}${i.allowed ? ` (allowed: ${i.allowed})` : ''}`);
        throw new Error(`render ${spec.id}: parameters are invalid; validate() first:\n  - ${lines.join('\n  - ')}`);
      }
      const rendered = renderJob({ ...input, parameters: checked.value });
      for (const step of rendered.steps) {
        if (!Array.isArray(step.argv) || step.argv.some((a) => typeof a !== 'string')) {
          throw new Error(`render ${spec.id}: step '${step.name}' argv must be an array of strings`);
        }
      }
      return rendered;
    },
  };
  return recipe;
}

/**
 * Test runs prove the path, not the quality: two optimizer steps, whatever the
 * production minimum (100). A resumed test run trains what is left of the two
 * (sd-scripts and musubi restart their step count on resume: engine-saves.ts).
 */
export const TEST_RUN_TWO_STEPS: ArgvSubstitution = {
  flag: '--max_train_steps',
  action: 'replace',
  value: '2',
  minusResumedStep: true,
  reason: 'two optimizer steps (the schema minimum is 100 for production jobs)',
};
