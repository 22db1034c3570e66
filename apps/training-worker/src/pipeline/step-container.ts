/**
 * The container one recipe step runs in: the only place that decides what a
 * training container sees. The pipeline and the engine conformance suite
 * (tools/conformance) both build their specs here, so the suite proves the
 * engines run under exactly the production sandbox: no network unless the
 * recipe states why, non-root (the runtime's default uid 1000), read-only root
 * filesystem with a /tmp tmpfs, and only these mounts (dataset, control images
 * when the recipe has them, job files and each base-model file read-only; the
 * output folder writable).
 */
import type { ContainerRunSpec } from '@stationthis/docker';
import { CONTAINER_PATHS, type CommandStep, type Recipe } from '@stationthis/recipes';

export interface StepFolders {
  datasetDir: string;
  jobDir: string;
  outputDir: string;
  /** Control images of an edit model (FLUX.1 Kontext), mounted read-only at CONTAINER_PATHS.control; absent: no such mount. */
  controlDir?: string;
  /** Host paths of the base-model files, mounted one by one under CONTAINER_PATHS.models. */
  weights: { fileName: string; path: string }[];
  logFile: string;
}

export interface StepContainerInput {
  image: string;
  recipe: Pick<Recipe<unknown>, 'image' | 'network'>;
  step: Pick<CommandStep, 'argv' | 'name'>;
  folders: StepFolders;
  jobId: string;
  gpuDeviceIds: string[];
  memoryBytes: number;
  pidsLimit: number;
  labels: ContainerRunSpec['labels'];
  deadlineMs: number;
  stallTimeoutMs: number;
}

export function stepContainerSpec(input: StepContainerInput): ContainerRunSpec {
  const f = input.folders;
  return {
    image: input.image,
    argv: input.step.argv,
    workdir: input.recipe.image.workdir,
    // The whole environment: the image's own ENV plus these; nothing of the worker's.
    env: { HOME: CONTAINER_PATHS.scratch, PYTHONUNBUFFERED: '1', STATIONTHIS_JOB_ID: input.jobId },
    mounts: [
      { hostPath: f.datasetDir, containerPath: CONTAINER_PATHS.dataset, readOnly: true },
      ...(f.controlDir ? [{ hostPath: f.controlDir, containerPath: CONTAINER_PATHS.control, readOnly: true }] : []),
      { hostPath: f.jobDir, containerPath: CONTAINER_PATHS.job, readOnly: true },
      { hostPath: f.outputDir, containerPath: CONTAINER_PATHS.output, readOnly: false },
      ...f.weights.map((w) => ({ hostPath: w.path, containerPath: `${CONTAINER_PATHS.models}/${w.fileName}`, readOnly: true })),
    ],
    gpus: input.gpuDeviceIds.length > 0 ? { deviceIds: input.gpuDeviceIds } : null,
    network: input.recipe.network,
    memoryBytes: input.memoryBytes,
    pidsLimit: input.pidsLimit,
    labels: { ...input.labels, step: input.step.name },
    deadlineMs: input.deadlineMs,
    stallTimeoutMs: input.stallTimeoutMs,
    logFilePath: f.logFile,
  };
}
