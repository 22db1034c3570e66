export { DOCKER, createDockerClient, dockerConnectionOptions, DEFAULT_DOCKER_SOCKET, type DockerClientEnv } from './docker-client';
export { LABELS, MANAGED_LABEL_VALUE, MANAGED_LABEL_FILTER } from './labels';
export {
  CONTAINER_RUNTIME,
  type ContainerRuntime,
  type ContainerRunSpec,
  type ContainerMount,
  type ContainerRunObserver,
  type ContainerRunResult,
  type ContainerFailureKind,
  type LogStreamName,
  type RegistryAuth,
} from './container-runtime';
export {
  DockerContainerRuntime,
  ImagePullError,
  DOCKER_RUNTIME_OPTIONS,
  DEFAULT_DOCKER_RUNTIME_OPTIONS,
  resolveDockerRuntimeOptions,
  type DockerRuntimeOptions,
  type ResolvedDockerRuntimeOptions,
} from './docker-container-runtime';
export {
  buildContainerCreateOptions,
  validateRunSpec,
  containerLabels,
  ContainerSpecError,
  DEFAULT_USER,
  DEFAULT_PIDS_LIMIT,
  DEFAULT_STOP_GRACE_SECONDS,
  DEFAULT_GPU_SHM_BYTES,
  DEFAULT_CPU_SHM_BYTES,
  DEFAULT_TMP_TMPFS,
  GPU_ULIMITS,
} from './container-spec';
export { assertNoSecrets, secretNameReason, secretValueReason, SecretInEnvironmentError } from './env-guard';
export { LineSplitter, DockerStreamDemuxer, RingBuffer, DEFAULT_MAX_LINE_BYTES, type DemuxSink } from './log-stream';
export {
  GPU_INVENTORY,
  readGpuInventory,
  gpuInventoryFrom,
  parseNvidiaSmiCsv,
  parseGpuDevicesEnv,
  parseCpuSlotsEnv,
  runNvidiaSmi,
  NVIDIA_SMI_ARGS,
  GpuConfigError,
  type GpuDevice,
  type GpuInventory,
  type GpuInventoryEnv,
  type GpuEnvConfig,
  type NvidiaSmiRunner,
} from './gpu-inventory';
export { GpuAllocator, UnsatisfiableGpuRequestError, type GpuRequest, type Allocation } from './gpu-allocator';
export { registerDocker } from './register';
export { DOCKER_ENV_SCHEMA, parseDockerEnv, DockerEnvError, type DockerEnvConfig } from './docker-env';

export const LIB_NAME = '@stationthis/docker';
