/**
 * Stand-in recipes shaped like the real ones in libs/recipes. The renderer's
 * unit tests use these so they do not break when a recipe's pins move; the
 * integration tests build the real recipes.
 */
import type { BuildableRecipe } from '../recipe-types';

const DEBIAN = { image: 'debian:bookworm-slim' };
const BUILDER_APT = ['ca-certificates', 'git', 'python3', 'python3-venv'];
const RUNTIME_APT = ['ca-certificates', 'git', 'libgl1', 'libglib2.0-0', 'python3'];
const TORCH_BASE = { name: 'torch-py311', pipRequirements: ['torch==2.6.0', 'torchvision==0.21.0', 'numpy==2.4.6'] };
const ARCHIVE_SHA = 'e'.repeat(64);

export const fixtureSdxl: BuildableRecipe = {
  id: 'sdxl-lora',
  version: '1.0.0',
  family: 'SDXL',
  displayName: 'SDXL LoRA',
  description: 'SDXL LoRA with kohya-ss/sd-scripts',
  product: true,
  engine: {
    name: 'kohya-sd-scripts',
    repository: 'https://github.com/kohya-ss/sd-scripts',
    commit: '48d368fa55579d0c1a8a2ec4fa0c9b4b1a4a8e64',
  },
  image: {
    name: 'sdxl-kohya',
    builderBase: { ...DEBIAN, digest: 'sha256:' + 'a'.repeat(64) },
    runtimeBase: DEBIAN,
    builderAptPackages: BUILDER_APT,
    runtimeAptPackages: RUNTIME_APT,
    python: 'python3',
    torchBase: TORCH_BASE,
    pipRequirements: ['accelerate==1.6.0', 'transformers==4.54.1', 'safetensors==0.4.5'],
    engineSource: { kind: 'git', archive: { fileName: 'sd-scripts-48d368fa.tar.gz', sha256: ARCHIVE_SHA, topFolder: 'sd-scripts' } },
    tokenizers: [{ repo: 'openai/clip-vit-large-patch14', loader: 'CLIPTokenizer', usedBy: 'library/strategy_sdxl.py' }],
    healthcheck: ['python', '-c', 'import torch, library.train_util'],
    workdir: '/opt/sd-scripts',
    env: { HF_HOME: '/opt/hf-home', HF_HUB_OFFLINE: '1', TRANSFORMERS_OFFLINE: '1', ACCELERATE_MIXED_PRECISION: 'bf16' },
  },
};

export const fixtureWan: BuildableRecipe = {
  id: 'wan-lora',
  version: '0.3.0',
  family: 'WAN',
  displayName: 'Wan 2.x LoRA',
  description: 'Wan LoRA with kohya-ss/musubi-tuner',
  product: true,
  engine: {
    name: 'musubi-tuner',
    repository: 'https://github.com/kohya-ss/musubi-tuner',
    commit: '30c658c4b0f3f3a5a1c1d2e6e7b1a9f0c2d4e6f8',
  },
  image: {
    name: 'wan-musubi',
    builderBase: DEBIAN,
    runtimeBase: DEBIAN,
    builderAptPackages: BUILDER_APT,
    runtimeAptPackages: RUNTIME_APT,
    python: 'python3',
    torchBase: TORCH_BASE,
    pipRequirements: ['av==14.0.1'],
    engineSource: { kind: 'git', archive: { fileName: 'musubi-tuner-30c658c4.tar.gz', sha256: ARCHIVE_SHA, topFolder: 'musubi-tuner' }, pythonPath: ['src'] },
    tokenizers: [{ repo: 'Wan-AI/Wan2.1-T2V-14B', subfolder: 'google/umt5-xxl', loader: 'AutoTokenizer', usedBy: 'wan/modules/t5.py' }],
    cudaFreeImports: [{ module: 'musubi_tuner.wan.modules.t5', why: 'default argument device=torch.cuda.current_device()' }],
    healthcheck: ['python', '-c', 'import musubi_tuner'],
    workdir: '/opt/musubi-tuner',
    env: { HF_HOME: '/opt/hf-home', HF_HUB_OFFLINE: '1' },
  },
};

export const fixtureSmoke: BuildableRecipe = {
  id: 'smoke-cpu',
  version: '0.1.0',
  family: 'SMOKE',
  displayName: 'CPU smoke test',
  description: 'A tiny CPU-only trainer that exercises the pipeline end to end',
  product: false,
  engine: {
    name: 'stationthis-smoke',
    repository: 'https://github.com/stationthis/training-system',
    commit: '0123456789abcdef0123456789abcdef01234567',
  },
  image: {
    name: 'smoke-cpu',
    builderBase: { image: 'debian:bookworm-20251117-slim' },
    runtimeBase: { image: 'debian:bookworm-20251117-slim' },
    builderAptPackages: ['python3', 'python3-venv'],
    runtimeAptPackages: ['python3', 'python3-torch'],
    python: 'python3',
    pipRequirements: [],
    engineSource: { kind: 'bundled', files: { 'smoke_train.py': 'import torch\nprint("smoke")\n', 'lib/util.py': 'X = 1\n' } },
    healthcheck: ['python', '-c', 'import torch'],
    workdir: '/opt/smoke',
    env: { OMP_NUM_THREADS: '1' },
  },
};

export const fixtureRecipes: BuildableRecipe[] = [fixtureSdxl, fixtureWan, fixtureSmoke];
