/**
 * Stand-in recipes shaped like the real ones in libs/recipes. The renderer's
 * unit tests use these so they do not break when a recipe's pins move; the
 * integration tests build the real recipes.
 */
import type { BuildableRecipe } from '../recipe-types';

const CUDA_DEVEL = { image: 'nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04' };
const CUDA_RUNTIME = { image: 'nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04' };
const UBUNTU_BUILDER_APT = ['build-essential', 'ca-certificates', 'git', 'python3.10', 'python3.10-dev', 'python3.10-venv'];
const UBUNTU_RUNTIME_APT = ['ca-certificates', 'libgl1', 'libglib2.0-0', 'python3.10'];

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
    builderBase: { ...CUDA_DEVEL, digest: 'sha256:' + 'a'.repeat(64) },
    runtimeBase: CUDA_RUNTIME,
    builderAptPackages: UBUNTU_BUILDER_APT,
    runtimeAptPackages: UBUNTU_RUNTIME_APT,
    python: 'python3.10',
    pipRequirements: ['torch==2.6.0', 'torchvision==0.21.0', 'accelerate==1.6.0', 'transformers==4.54.1', 'safetensors==0.4.5'],
    pipExtraIndexUrls: ['https://download.pytorch.org/whl/cu124'],
    engineSource: { kind: 'git', installCommand: ['pip', 'install', '--no-deps', '-e', '.'] },
    networkedSteps: ['git fetch of kohya-ss/sd-scripts from github.com', 'pip install torch from download.pytorch.org/whl/cu124'],
    healthcheck: ['python', '-c', 'import torch, library.train_util'],
    workdir: '/opt/sd-scripts',
    env: { HF_HOME: '/tmp/hf', ACCELERATE_MIXED_PRECISION: 'bf16' },
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
    builderBase: CUDA_DEVEL,
    runtimeBase: CUDA_RUNTIME,
    builderAptPackages: UBUNTU_BUILDER_APT,
    runtimeAptPackages: [...UBUNTU_RUNTIME_APT, 'ffmpeg'],
    python: 'python3.10',
    pipRequirements: ['torch==2.6.0', 'av==14.0.1'],
    pipExtraIndexUrls: ['https://download.pytorch.org/whl/cu124'],
    engineSource: { kind: 'git', installCommand: ['pip', 'install', '--no-deps', '-e', '.'] },
    networkedSteps: ['git fetch of kohya-ss/musubi-tuner from github.com'],
    healthcheck: ['python', '-c', 'import musubi_tuner'],
    workdir: '/opt/musubi-tuner',
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
    networkedSteps: [],
    healthcheck: ['python', '-c', 'import torch'],
    workdir: '/opt/smoke',
    env: { OMP_NUM_THREADS: '1' },
  },
};

export const fixtureRecipes: BuildableRecipe[] = [fixtureSdxl, fixtureWan, fixtureSmoke];
