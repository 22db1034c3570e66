import { container as rootContainer } from 'tsyringe';
import { CONTAINER_RUNTIME } from './container-runtime';
import { DEFAULT_DOCKER_SOCKET } from './docker-client';
import { DockerEnvError, parseDockerEnv } from './docker-env';
import { registerDocker } from './register';

describe('parseDockerEnv', () => {
  it('gives the documented defaults for an empty environment', () => {
    expect(parseDockerEnv({})).toEqual({ DOCKER_HOST: { socketPath: DEFAULT_DOCKER_SOCKET }, GPU_DEVICES: null, CPU_SLOTS: undefined });
  });

  it('parses every variable it reads and ignores the others', () => {
    expect(parseDockerEnv({ DOCKER_HOST: 'tcp://10.0.0.2:2375', GPU_DEVICES: '0:24,1:48', CPU_SLOTS: '2', MONGO_URL: 'mongodb://x' })).toEqual({
      DOCKER_HOST: { protocol: 'http', host: '10.0.0.2', port: 2375 },
      GPU_DEVICES: [
        { index: 0, deviceId: '0', name: 'configured GPU 0', vramGb: 24 },
        { index: 1, deviceId: '1', name: 'configured GPU 1', vramGb: 48 },
      ],
      CPU_SLOTS: 2,
    });
    expect(parseDockerEnv({ GPU_DEVICES: 'none', CPU_SLOTS: '0' })).toMatchObject({ GPU_DEVICES: [], CPU_SLOTS: 0 });
  });

  it('names every bad variable at once, with what to write instead', () => {
    const err = (() => {
      try {
        parseDockerEnv({ DOCKER_HOST: 'ftp://x', GPU_DEVICES: 'gpu0', CPU_SLOTS: '-1' });
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(DockerEnvError);
    const problems = (err as DockerEnvError).problems;
    expect(problems).toHaveLength(3);
    expect(problems[0]).toMatch(/^DOCKER_HOST: .*unsupported scheme "ftp:"/);
    expect(problems[1]).toMatch(/^GPU_DEVICES: .*index:vramGb/);
    expect(problems[2]).toMatch(/^CPU_SLOTS: .*non-negative integer/);
    expect((err as Error).message).toMatch(/Invalid Docker\/GPU configuration/);
  });

  it('registerDocker refuses a bad environment before binding anything', async () => {
    const c = rootContainer.createChildContainer();
    await expect(registerDocker(c, { CPU_SLOTS: 'two' }, async () => null)).rejects.toThrow(/CPU_SLOTS: CPU_SLOTS="two" must be a non-negative integer/);
    expect(c.isRegistered(CONTAINER_RUNTIME)).toBe(false);
  });
});
