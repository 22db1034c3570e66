import type Dockerode from 'dockerode';
import { z } from 'zod';
import { dockerConnectionOptions } from './docker-client';
import { parseCpuSlotsEnv, parseGpuDevicesEnv } from './gpu-inventory';

/** A value one of the pure parsers rejects becomes a zod issue with the parser's own message. */
function via<T>(parse: (value: string | undefined) => T) {
  return (value: string | undefined, ctx: z.RefinementCtx): T => {
    try {
      return parse(value);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: err instanceof Error ? err.message : String(err) });
      return z.NEVER;
    }
  };
}

/**
 * The environment this library reads, in one place: parsed and checked once
 * (by `registerDocker`), every problem reported together.
 */
export const DOCKER_ENV_SCHEMA = z.object({
  /** `unix:///path`, `tcp://host:port`, `http(s)://host:port`. @default unix:///var/run/docker.sock */
  DOCKER_HOST: z.string().optional().transform(via((v): Dockerode.DockerOptions => dockerConnectionOptions({ DOCKER_HOST: v }))),
  /** `0:24,1:24` (index:VRAM GiB) or `none`. @default the GPUs nvidia-smi reports, none without it */
  GPU_DEVICES: z.string().optional().transform(via(parseGpuDevicesEnv)),
  /** Concurrent CPU-only runs. @default 1 on a GPU-less host, 0 on a GPU host */
  CPU_SLOTS: z.string().optional().transform(via(parseCpuSlotsEnv)),
});

/** What `DOCKER_ENV_SCHEMA` makes of the environment. */
export type DockerEnvConfig = z.output<typeof DOCKER_ENV_SCHEMA>;

export class DockerEnvError extends Error {
  readonly code = 'DOCKER.INVALID_ENV';
  constructor(readonly problems: string[]) {
    super(`Invalid Docker/GPU configuration in the environment:\n  - ${problems.join('\n  - ')}\nFix these variables (see libs/docker/README.md) and start the worker again.`);
    this.name = 'DockerEnvError';
  }
}

/** Parses `DOCKER_HOST`, `GPU_DEVICES` and `CPU_SLOTS`; throws `DockerEnvError` naming every bad variable. */
export function parseDockerEnv(env: Record<string, string | undefined> = process.env): DockerEnvConfig {
  const parsed = DOCKER_ENV_SCHEMA.safeParse(env);
  if (parsed.success) return parsed.data;
  throw new DockerEnvError(parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`));
}
