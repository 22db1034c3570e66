import Dockerode from 'dockerode';
import type { InjectionToken } from 'tsyringe';

/** The dockerode client. Bind it with `createDockerClient(process.env)` at the composition root. */
export const DOCKER = Symbol('Docker') as InjectionToken<Dockerode>;

export interface DockerClientEnv {
  /** `unix:///var/run/docker.sock` (default), `tcp://host:2375`, `http://host:2375` or `https://host:2376`. */
  DOCKER_HOST?: string;
  [key: string]: string | undefined;
}

export const DEFAULT_DOCKER_SOCKET = '/var/run/docker.sock';

/** Connection options for dockerode, parsed from `DOCKER_HOST`. Exported for tests and diagnostics. */
export function dockerConnectionOptions(env: DockerClientEnv): Dockerode.DockerOptions {
  const raw = (env.DOCKER_HOST ?? '').trim();
  if (raw === '') return { socketPath: DEFAULT_DOCKER_SOCKET };
  if (raw.startsWith('unix://')) return { socketPath: raw.slice('unix://'.length) };
  if (raw.startsWith('/')) return { socketPath: raw };
  let url: URL;
  try {
    url = new URL(raw.replace(/^tcp:\/\//, 'http://'));
  } catch {
    throw new Error(
      `DOCKER_HOST="${raw}" is not a valid Docker endpoint. Use unix:///path/to/docker.sock or tcp://host:port.`,
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new Error(`DOCKER_HOST="${raw}" uses an unsupported scheme "${url.protocol}". Use unix://, tcp://, http:// or https://.`);
  }
  const protocol = url.protocol === 'https:' ? 'https' : 'http';
  return { protocol, host: url.hostname, port: url.port ? Number(url.port) : protocol === 'https' ? 2376 : 2375 };
}

/** A dockerode client for `DOCKER_HOST` (default: the local unix socket). */
export function createDockerClient(env: DockerClientEnv = process.env): Dockerode {
  return new Dockerode(dockerConnectionOptions(env));
}
