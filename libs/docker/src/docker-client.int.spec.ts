import { createDockerClient, dockerConnectionOptions } from './docker-client';
import { serviceEnv } from './__fixtures__/harness';

describe('createDockerClient', () => {
  it('reads DOCKER_HOST, defaulting to the local unix socket', () => {
    expect(dockerConnectionOptions({})).toEqual({ socketPath: '/var/run/docker.sock' });
    expect(dockerConnectionOptions({ DOCKER_HOST: 'unix:///run/user/1000/docker.sock' })).toEqual({ socketPath: '/run/user/1000/docker.sock' });
    expect(dockerConnectionOptions({ DOCKER_HOST: 'tcp://10.0.0.5:2375' })).toEqual({ protocol: 'http', host: '10.0.0.5', port: 2375 });
    expect(dockerConnectionOptions({ DOCKER_HOST: 'https://gpu-1:2376' })).toEqual({ protocol: 'https', host: 'gpu-1', port: 2376 });
    expect(() => dockerConnectionOptions({ DOCKER_HOST: 'ssh://gpu-1' })).toThrow(/unsupported scheme/);
  });

  it('talks to the real engine', async () => {
    const docker = createDockerClient({ DOCKER_HOST: `unix://${serviceEnv().dockerSocket}` });
    expect(String(await docker.ping())).toBe('OK');
  });
});
