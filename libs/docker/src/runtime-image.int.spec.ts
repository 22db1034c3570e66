import { writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import type Dockerode from 'dockerode';
import { dockerHarness, type DockerHarness, serviceEnv } from './__fixtures__/harness';
import { ImagePullError } from './docker-container-runtime';

jest.setTimeout(180_000);

async function follow(docker: Dockerode, stream: NodeJS.ReadableStream): Promise<void> {
  const out = await new Promise<Array<{ error?: string; errorDetail?: { message?: string } }>>((res, rej) =>
    docker.modem.followProgress(stream, (e: Error | null, o: unknown[]) => (e ? rej(e) : res(o as never))),
  );
  const bad = out.find((e) => e.error || e.errorDetail);
  if (bad) throw new Error(bad.errorDetail?.message ?? bad.error);
}

describe('ensureImage (real engine and local registry)', () => {
  let h: DockerHarness;
  const registry = serviceEnv().registry;
  // A fixed tag, so repeated runs overwrite one registry entry instead of piling up.
  const ref = `${registry}/stationthis-test/docker-lib-pull:ensure-image`;
  beforeAll(async () => {
    h = await dockerHarness('image');
  });
  afterAll(async () => {
    await h.docker.getImage(ref).remove({ force: true }).catch(() => undefined);
    await h.cleanup();
  });

  it('does nothing for a present image', async () => {
    await expect(h.runtime.ensureImage(serviceEnv().baseImage)).resolves.toBeUndefined();
  });

  it('pulls an absent image from the registry (with auth passed through) and it is then present', async () => {
    // A tiny image, built, pushed, and removed locally so ensureImage must pull it.
    await writeFile(path.join(h.dir, 'Dockerfile'), 'FROM scratch\nCOPY hello.txt /hello.txt\n');
    await writeFile(path.join(h.dir, 'hello.txt'), 'hello\n');
    await follow(h.docker, await h.docker.buildImage({ context: h.dir, src: ['Dockerfile', 'hello.txt'] }, { t: ref, labels: { 'ai.stationthis.test': 'docker-lib' } }));
    await follow(h.docker, await h.docker.getImage(ref).push({ authconfig: {} as never }));
    await h.docker.getImage(ref).remove({ force: true });
    await expect(h.docker.getImage(ref).inspect()).rejects.toMatchObject({ statusCode: 404 });

    await h.runtime.ensureImage(ref, { username: 'stationthis', password: 'not-needed-locally', serveraddress: registry });
    const info = await h.docker.getImage(ref).inspect();
    expect(info.RepoTags).toContain(ref);
  });

  it('fails with a clear error for an image the registry does not have', async () => {
    const missing = `${registry}/stationthis-test/docker-lib-missing:nope`;
    const err = await h.runtime.ensureImage(missing).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImagePullError);
    expect((err as Error).message).toMatch(/Could not pull image "127\.0\.0\.1:5000\/stationthis-test\/docker-lib-missing:nope"/);
    expect((err as Error).message).not.toMatch(/not-needed-locally/);
  });
});
