import Dockerode from 'dockerode';
import { Lifecycle, type DependencyContainer, type InjectionToken } from 'tsyringe';
import { CONTAINER_RUNTIME } from './container-runtime';
import { DOCKER, type DockerClientEnv } from './docker-client';
import { parseDockerEnv } from './docker-env';
import { DOCKER_RUNTIME_OPTIONS, DockerContainerRuntime } from './docker-container-runtime';
import { GpuAllocator } from './gpu-allocator';
import { GPU_INVENTORY, gpuInventoryFrom, type GpuInventoryEnv, type NvidiaSmiRunner } from './gpu-inventory';

/**
 * Binds this library into a composition root, after checking its environment
 * once with `parseDockerEnv` (DockerEnvError names every bad variable): DOCKER (from DOCKER_HOST),
 * CONTAINER_RUNTIME and DockerContainerRuntime (one singleton; its
 * DOCKER_RUNTIME_OPTIONS default to `{}` unless bound before), GPU_INVENTORY
 * (nvidia-smi or GPU_DEVICES / CPU_SLOTS, read once now) and a singleton
 * GpuAllocator. Async because the inventory runs nvidia-smi.
 */
export async function registerDocker(
  container: DependencyContainer,
  env: DockerClientEnv & GpuInventoryEnv = process.env,
  smi?: NvidiaSmiRunner,
): Promise<void> {
  for (const token of [DOCKER, CONTAINER_RUNTIME, GPU_INVENTORY] as Array<InjectionToken<unknown>>) {
    if (container.isRegistered(token)) {
      throw new Error(`registerDocker: ${String(token)} is already registered in this container; register the docker lib once per composition root.`);
    }
  }
  // The environment is read and checked here, once: every bad variable is named together.
  const config = parseDockerEnv(env);
  container.register(DOCKER, { useValue: new Dockerode(config.DOCKER_HOST) });
  container.register(GPU_INVENTORY, { useValue: await gpuInventoryFrom(config, smi) });
  // The defaults, unless the composition root bound its own options first.
  if (!container.isRegistered(DOCKER_RUNTIME_OPTIONS, true)) container.register(DOCKER_RUNTIME_OPTIONS, { useValue: {} });
  container.register(DockerContainerRuntime, { useClass: DockerContainerRuntime }, { lifecycle: Lifecycle.ContainerScoped });
  container.register(CONTAINER_RUNTIME, { useToken: DockerContainerRuntime });
  container.register(GpuAllocator, { useClass: GpuAllocator }, { lifecycle: Lifecycle.ContainerScoped });
}
