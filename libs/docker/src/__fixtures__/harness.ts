/**
 * Test harness for suites that talk to the real Docker engine. Each suite gets
 * a unique worker id (so its containers carry a label nothing else uses), a
 * temp dir, and an afterAll safety net that removes anything still labelled.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rm } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type Dockerode from 'dockerode';
// Shared test support sits outside every Nx project by design, so the boundary rule cannot place it.
// eslint-disable-next-line @nx/enforce-module-boundaries
import { serviceEnv } from '../../../../tools/testing/support';

export { serviceEnv };
import { createDockerClient } from '../docker-client';
import { DockerContainerRuntime } from '../docker-container-runtime';
import type { ContainerRunSpec } from '../container-runtime';
import { LABELS } from '../labels';

export const BASE_IMAGE = serviceEnv().baseImage;

export interface DockerHarness {
  docker: Dockerode;
  runtime: DockerContainerRuntime;
  workerId: string;
  jobId: string;
  dir: string;
  spec(overrides?: Partial<ContainerRunSpec>): ContainerRunSpec;
  /** A world-writable host dir (the container runs as uid 1000). */
  mkdir(name: string): Promise<string>;
  /** Managed containers still present for this suite's worker id. */
  leftovers(): Promise<Dockerode.ContainerInfo[]>;
  cleanup(): Promise<void>;
}

export async function dockerHarness(suite: string): Promise<DockerHarness> {
  const docker = createDockerClient({ DOCKER_HOST: `unix://${serviceEnv().dockerSocket}` });
  const runtime = new DockerContainerRuntime(docker);
  const suffix = randomBytes(4).toString('hex');
  const workerId = `test-worker-${suite}-${suffix}`;
  const jobId = `test-job-${suite}-${suffix}`;
  const dir = await mkdtemp(path.join(os.tmpdir(), `st-docker-${suite}-`));
  let n = 0;
  const leftovers = () => docker.listContainers({ all: true, filters: { label: [`${LABELS.workerId}=${workerId}`] } });
  return {
    docker,
    runtime,
    workerId,
    jobId,
    dir,
    spec: (overrides = {}) => {
      n++;
      return {
        image: BASE_IMAGE,
        argv: ['true'],
        workdir: '/tmp',
        mounts: [],
        gpus: null,
        labels: { jobId, attemptId: `attempt-${n}`, workerId },
        deadlineMs: 60_000,
        stallTimeoutMs: 60_000,
        stopGraceSeconds: 1,
        logFilePath: path.join(dir, `run-${n}.log`),
        ...overrides,
      };
    },
    mkdir: async (name: string) => {
      const p = path.join(dir, name);
      await mkdir(p, { recursive: true });
      await chmod(p, 0o777);
      return p;
    },
    leftovers,
    cleanup: async () => {
      for (const c of await leftovers()) await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** `bash -c script` as argv. */
export const sh = (script: string): string[] => ['bash', '-c', script];
