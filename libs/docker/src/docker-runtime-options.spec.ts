import { container as rootContainer } from 'tsyringe';
import { createDockerClient } from './docker-client';
import {
  DEFAULT_DOCKER_RUNTIME_OPTIONS,
  DOCKER_RUNTIME_OPTIONS,
  DockerContainerRuntime,
  resolveDockerRuntimeOptions,
} from './docker-container-runtime';
import { registerDocker } from './register';

// A client for a socket nobody listens on: nothing here talks to an engine.
const docker = () => createDockerClient({ DOCKER_HOST: 'unix:///nonexistent/docker.sock' });

describe('DockerContainerRuntime options', () => {
  it('fills in the documented defaults and keeps what is given', () => {
    expect(resolveDockerRuntimeOptions()).toEqual({ maxLineBytes: 8192, lastLines: 50, streamEndTimeoutMs: 10_000, pullTimeoutMs: 3_600_000 });
    expect(resolveDockerRuntimeOptions({ lastLines: 5 })).toEqual({ ...DEFAULT_DOCKER_RUNTIME_OPTIONS, lastLines: 5 });
    expect(Object.isFrozen(resolveDockerRuntimeOptions())).toBe(true);
  });

  it.each([
    [{ lastLines: 0 }, /lastLines must be a positive whole number, got 0/],
    [{ pullTimeoutMs: 1.5 }, /pullTimeoutMs must be a positive whole number/],
    [{ maxLineBytes: Number.NaN }, /maxLineBytes/],
    [{ lastLine: 3 } as never, /Unknown DockerContainerRuntime option\(s\): lastLine/],
  ])('rejects %j once, when the runtime is made', (options, message) => {
    expect(() => resolveDockerRuntimeOptions(options)).toThrow(message);
    expect(() => new DockerContainerRuntime(docker(), options)).toThrow(message);
  });

  it('registerDocker binds the defaults, or keeps options the composition root bound first', async () => {
    const env = { DOCKER_HOST: 'unix:///nonexistent/docker.sock', GPU_DEVICES: 'none' };
    const plain = rootContainer.createChildContainer();
    await registerDocker(plain, env, async () => null);
    expect(plain.resolve(DOCKER_RUNTIME_OPTIONS)).toEqual({});
    expect(plain.resolve(DockerContainerRuntime)).toBeInstanceOf(DockerContainerRuntime);

    const parent = rootContainer.createChildContainer();
    parent.register(DOCKER_RUNTIME_OPTIONS, { useValue: { lastLines: 0 } });
    const child = parent.createChildContainer();
    await registerDocker(child, env, async () => null);
    expect(child.resolve(DOCKER_RUNTIME_OPTIONS)).toEqual({ lastLines: 0 });
    // Checked once, where the runtime is made: a bad binding fails at start, naming the option.
    expect(() => child.resolve(DockerContainerRuntime)).toThrow(/lastLines must be a positive whole number/);
  });
});
