/**
 * Pieces shared by the recipes: pinned engines, image descriptions, the
 * `accelerate launch` prefix, metadata and the recipe factory.
 */
import type { z } from 'zod';
import type {
  DatasetSummary,
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

/** Runtime environment for the CUDA engine images. No secrets. */
export const CUDA_RUNTIME_ENV: Record<string, string> = {
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

const CUDA_BASES = {
  builderBase: { image: 'nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04' },
  runtimeBase: { image: 'nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04' },
  builderAptPackages: ['git', 'ca-certificates', 'build-essential', 'python3.10', 'python3.10-venv', 'python3.10-dev'],
  runtimeAptPackages: ['python3.10', 'libgl1', 'libglib2.0-0', 'ca-certificates'],
  python: 'python3.10',
  pipExtraIndexUrls: ['https://download.pytorch.org/whl/cu124'],
} as const;

/** PyTorch pins shared by both kohya engines (sd-scripts README: tested with 2.6.0 + cu124). */
const TORCH_PINS = ['torch==2.6.0', 'torchvision==0.21.0'];

/** One image per recipe: SDXL and FLUX share the engine but version independently, so their tags must not collide. */
export function sdScriptsImage(name: string, flagChecks: ImageSpec['flagChecks']): ImageSpec {
  return {
    name,
    ...CUDA_BASES,
    builderAptPackages: [...CUDA_BASES.builderAptPackages],
    runtimeAptPackages: [...CUDA_BASES.runtimeAptPackages],
    pipExtraIndexUrls: [...CUDA_BASES.pipExtraIndexUrls],
    // requirements.txt at the pinned commit pins accelerate 1.6.0, transformers
    // 4.54.1, diffusers 0.32.1, safetensors 0.4.5 ... and ends with `-e .`;
    // it leaves bitsandbytes unpinned, so we pin it here (AdamW8bit).
    pipRequirements: [...TORCH_PINS, 'bitsandbytes==0.45.5'],
    engineSource: { kind: 'git', installCommand: ['python', '-m', 'pip', 'install', '--no-cache-dir', '-r', 'requirements.txt'] },
    networkedSteps: [
      'git clone https://github.com/kohya-ss/sd-scripts at the pinned commit (github.com)',
      'pip install torch/torchvision from https://download.pytorch.org/whl/cu124',
      'download the CLIP-L, CLIP-G and T5-XXL tokenizers into HF_HOME (huggingface.co)',
    ],
    buildSteps: [
      {
        description: 'Pre-download the SDXL and FLUX.1 tokenizers into HF_HOME so training needs no network',
        networked: true,
        argv: [
          'python',
          '-c',
          [
            'from transformers import CLIPTokenizer, T5TokenizerFast',
            "CLIPTokenizer.from_pretrained('openai/clip-vit-large-patch14')",
            "CLIPTokenizer.from_pretrained('laion/CLIP-ViT-bigG-14-laion2B-39B-b160k')",
            "T5TokenizerFast.from_pretrained('google/t5-v1_1-xxl')",
          ].join('; '),
        ],
      },
    ],
    flagChecks,
    healthcheck: ['python', '-c', 'import torch, accelerate, library.train_util'],
    workdir: SD_SCRIPTS_DIR,
    env: { ...CUDA_RUNTIME_ENV },
  };
}

export function musubiImage(flagChecks: ImageSpec['flagChecks']): ImageSpec {
  return {
    name: 'musubi-tuner',
    ...CUDA_BASES,
    builderAptPackages: [...CUDA_BASES.builderAptPackages],
    runtimeAptPackages: [...CUDA_BASES.runtimeAptPackages, 'libsm6', 'libxext6'],
    pipExtraIndexUrls: [...CUDA_BASES.pipExtraIndexUrls],
    // pyproject.toml at the pinned commit pins accelerate 1.6.0, diffusers
    // 0.32.1, transformers 4.57.6, safetensors 0.4.5, av 14.0.1, opencv ...;
    // torch >= 2.5.1 is needed for --sdpa (older versions give black videos).
    pipRequirements: [...TORCH_PINS, 'bitsandbytes==0.45.5'],
    engineSource: { kind: 'git', installCommand: ['python', '-m', 'pip', 'install', '--no-cache-dir', '-e', '.'] },
    networkedSteps: [
      'git clone https://github.com/kohya-ss/musubi-tuner at the pinned commit (github.com)',
      'pip install torch/torchvision from https://download.pytorch.org/whl/cu124',
      'download the umT5-XXL tokenizer into HF_HOME (huggingface.co)',
    ],
    buildSteps: [
      {
        description: 'Pre-download the umT5-XXL tokenizer used by the WAN text encoder into HF_HOME',
        networked: true,
        argv: ['python', '-c', "from transformers import AutoTokenizer; AutoTokenizer.from_pretrained('google/umt5-xxl')"],
      },
    ],
    flagChecks,
    healthcheck: ['python', '-c', 'import torch, accelerate, musubi_tuner'],
    workdir: MUSUBI_DIR,
    env: { ...CUDA_RUNTIME_ENV },
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
