import { container as rootContainer } from 'tsyringe';
import { CONTAINER_RUNTIME } from './container-runtime';
import { DOCKER } from './docker-client';
import { DockerContainerRuntime } from './docker-container-runtime';
import { GpuAllocator } from './gpu-allocator';
import { GPU_INVENTORY } from './gpu-inventory';
import { registerDocker } from './register';
import { serviceEnv } from './__fixtures__/harness';

describe('registerDocker', () => {
  it('binds the runtime, the client, the inventory and one allocator per container', async () => {
    const c = rootContainer.createChildContainer();
    await registerDocker(c, { DOCKER_HOST: `unix://${serviceEnv().dockerSocket}`, GPU_DEVICES: '0:24,1:24' }, async () => null);
    const runtime = c.resolve(CONTAINER_RUNTIME);
    expect(runtime).toBeInstanceOf(DockerContainerRuntime);
    expect(c.resolve(CONTAINER_RUNTIME)).toBe(runtime);
    expect(c.resolve(DockerContainerRuntime)).toBe(runtime);
    expect(c.resolve(GPU_INVENTORY).gpus).toHaveLength(2);
    expect(c.resolve(GpuAllocator)).toBe(c.resolve(GpuAllocator));
    expect(c.resolve(GpuAllocator).capacity()).toBe(2);
    expect(String(await c.resolve(DOCKER).ping())).toBe('OK');
    await expect(registerDocker(c, {}, async () => null)).rejects.toThrow(/already registered/);
  });
});
