/**
 * Build stream handling against the real Docker engine (no mocks): errors
 * inside an HTTP 200 stream, build timeouts, push failures.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Docker from 'dockerode';
import { serviceEnv } from '../../../tools/testing/support';
import { buildImage, pushImage } from './docker-image';

const env = serviceEnv();
const docker = new Docker({ socketPath: env.dockerSocket });
const TEST_REPO = 'recipe-builder-test/stream';

describe('docker-image against the real engine', () => {
  let dir: string;
  const tagsToRemove: string[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rb-stream-'));
  });
  afterAll(async () => {
    // The ok-a/ok-b tags stay: the next run rebuilds the same image from cache, so nothing piles up.
    for (const ref of tagsToRemove) await docker.getImage(ref).remove({ noprune: true }).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });

  async function context(name: string, dockerfile: string): Promise<string> {
    const ctx = join(dir, name);
    await rm(ctx, { recursive: true, force: true });
    await mkdir(ctx, { recursive: true });
    await writeFile(join(ctx, 'Dockerfile'), dockerfile);
    await writeFile(join(ctx, '.dockerignore'), '*\n!Dockerfile\n!keep.txt\n');
    await writeFile(join(ctx, 'keep.txt'), 'kept\n');
    await writeFile(join(ctx, 'ignored.txt'), 'must not reach the daemon\n');
    return ctx;
  }

  it('builds, applies .dockerignore, tags every reference, and counts cached steps', async () => {
    // Two stages: the result must be the last stage, not the first (each stage reports an aux.ID).
    const ctx = await context(
      'ok',
      `FROM ${env.baseImage} AS first\nRUN echo first > /first.txt\nFROM ${env.baseImage}\nCOPY --from=first /first.txt /first.txt\nCOPY . /ctx/\nRUN test -f /ctx/keep.txt && test ! -e /ctx/ignored.txt\nLABEL stage=last\n`,
    );
    const tags = [`${TEST_REPO}:ok-a`, `${TEST_REPO}:ok-b`];
    const first = await buildImage(docker, ctx, { tags, timeoutMs: 120_000 });
    expect(first.imageId).toMatch(/^sha256:[0-9a-f]{64}$/);
    for (const t of tags) expect((await docker.getImage(t).inspect()).Id).toBe(first.imageId);
    expect((await docker.getImage(first.imageId).inspect()).Config.Labels).toEqual({ stage: 'last' });
    const again = await buildImage(docker, ctx, { tags, timeoutMs: 120_000 });
    expect(again.imageId).toBe(first.imageId);
    expect(again.cachedSteps).toBe(again.totalSteps - 2); // everything but the two FROMs
    expect(again.steps.filter((s) => !s.cached).every((s) => s.instruction.startsWith('FROM '))).toBe(true);
  });

  it('fails on an error reported inside the build stream (HTTP 200)', async () => {
    const ctx = await context('fail', `FROM ${env.baseImage}\nRUN echo failing on purpose && exit 3\n`);
    const lines: string[] = [];
    await expect(
      buildImage(docker, ctx, { tags: [`${TEST_REPO}:fail`], timeoutMs: 120_000, nocache: true, onEvent: (e) => lines.push(e.stream ?? '') }),
    ).rejects.toThrow(/Build of .* failed: .*returned a non-zero code: 3/);
    expect(lines.join('')).toContain('failing on purpose');
  });

  it('fails on a Dockerfile the daemon rejects', async () => {
    const ctx = await context('bad', `FROM ${env.baseImage}\nNOTANINSTRUCTION x\n`);
    await expect(buildImage(docker, ctx, { tags: [`${TEST_REPO}:bad`], timeoutMs: 60_000 })).rejects.toThrow(/notaninstruction|unknown instruction/i);
  });

  it('aborts a build that runs past its timeout, and the daemon stops it', async () => {
    const marker = `rb-timeout-${Date.now()}`;
    const ctx = await context('slow', `FROM ${env.baseImage}\nRUN echo ${marker} && sleep 45\n`);
    const started = Date.now();
    await expect(buildImage(docker, ctx, { tags: [`${TEST_REPO}:slow`], timeoutMs: 4_000, nocache: true })).rejects.toThrow(/did not finish within 4 s/);
    expect(Date.now() - started).toBeLessThan(15_000);
    // The aborted request cancels the build: its RUN container goes away.
    const deadline = Date.now() + 20_000;
    let running = 1;
    while (Date.now() < deadline) {
      const all = await docker.listContainers({ all: false });
      running = all.filter((c) => c.Command.includes(marker)).length;
      if (running === 0) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(running).toBe(0);
  });

  it('fails on a push error inside the stream', async () => {
    const ref = '127.0.0.1:5999/recipe-builder-test/unreachable:1';
    await docker.getImage(env.baseImage).tag({ repo: '127.0.0.1:5999/recipe-builder-test/unreachable', tag: '1' });
    tagsToRemove.push(ref);
    await expect(pushImage(docker, ref, undefined, 60_000)).rejects.toThrow(/Push of 127\.0\.0\.1:5999\/recipe-builder-test\/unreachable:1 failed: .*(connection refused|connect)/);
  });
});
