import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { dockerHarness, sh, type DockerHarness, serviceEnv } from './__fixtures__/harness';
import { buildContainerCreateOptions } from './container-spec';
import { LABELS } from './labels';

jest.setTimeout(120_000);

/**
 * A stand-in worker in its own process: it creates, attaches and starts a
 * container with the runtime's exact create options, reports the id, and is
 * then SIGKILLed by the test (a worker crash: no `finally` runs).
 */
const CRASHING_WORKER = `
const Docker = require('dockerode');
const docker = new Docker({ socketPath: process.env.SOCK });
(async () => {
  const c = await docker.createContainer(JSON.parse(process.env.CREATE_OPTIONS));
  const s = await c.attach({ stream: true, stdout: true, stderr: true });
  s.resume();
  await c.start();
  process.stdout.write(c.id + '\\n');
  setInterval(() => {}, 1000);
})().catch((e) => { console.error(e); process.exit(1); });
`;

function crashingWorker(createOptions: object): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', CRASHING_WORKER], {
      cwd: path.resolve(__dirname, '../../..'),
      env: { ...process.env, SOCK: serviceEnv().dockerSocket, CREATE_OPTIONS: JSON.stringify(createOptions) },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      if (out.includes('\n')) {
        child.kill('SIGKILL');
        resolve(out.trim());
      }
    });
    child.on('exit', (code, sig) => sig !== 'SIGKILL' && reject(new Error(`worker exited early: ${code}`)));
  });
}

describe('orphan sweep (real engine)', () => {
  let h: DockerHarness;
  beforeAll(async () => {
    h = await dockerHarness('sweep');
  });
  afterAll(async () => {
    await h.cleanup();
  });

  it('removes a container left running by a crashed worker, keeps owned ones and ones running here', async () => {
    const orphanSpec = h.spec({ argv: sh('sleep 600'), labels: { jobId: h.jobId, attemptId: 'dead-attempt', workerId: h.workerId } });
    const orphanId = await crashingWorker(buildContainerCreateOptions(orphanSpec));
    const ownedSpec = h.spec({ argv: sh('sleep 600'), labels: { jobId: h.jobId, attemptId: 'live-attempt', workerId: h.workerId } });
    const ownedId = await crashingWorker(buildContainerCreateOptions(ownedSpec));
    expect((await h.docker.getContainer(orphanId).inspect()).State.Running).toBe(true);

    // A run in progress in this process, whose attempt the callback would disown.
    let activeId = '';
    let running!: Promise<unknown>;
    await new Promise<void>((res) => {
      running = h.runtime.run(h.spec({ argv: sh('sleep 3'), labels: { jobId: h.jobId, attemptId: 'active-here', workerId: h.workerId } }), {
        onStarted: (id) => {
          activeId = id;
          res();
        },
      });
    });

    const asked: string[] = [];
    const removed = await h.runtime.sweepOrphans(async (labels) => {
      // Only judge this suite's containers; other suites may be running in parallel.
      if (labels[LABELS.workerId] !== h.workerId) return true;
      asked.push(labels[LABELS.attemptId]);
      return labels[LABELS.attemptId] === 'live-attempt';
    });

    expect(removed).toEqual([orphanId]);
    expect(asked.sort()).toEqual(['dead-attempt', 'live-attempt']);
    await expect(h.docker.getContainer(orphanId).inspect()).rejects.toMatchObject({ statusCode: 404 });
    expect((await h.docker.getContainer(ownedId).inspect()).State.Running).toBe(true);
    expect((await h.docker.getContainer(activeId).inspect()).State.Running).toBe(true);

    // The owner's attempt ends: the next sweep takes it too.
    const removedLater = await h.runtime.sweepOrphans(async (labels) => labels[LABELS.workerId] !== h.workerId || labels[LABELS.attemptId] === 'active-here');
    expect(removedLater).toEqual([ownedId]);
    // The active run was left alone and finished normally.
    expect(await running).toMatchObject({ containerId: activeId, failureClass: null });
    expect(await h.leftovers()).toEqual([]);
  });

  it('keeps a container when ownership cannot be decided (the callback throws)', async () => {
    const spec = h.spec({ argv: sh('sleep 600') });
    const id = await crashingWorker(buildContainerCreateOptions(spec));
    const removed = await h.runtime.sweepOrphans(async (labels) => {
      if (labels[LABELS.workerId] !== h.workerId) return true;
      throw new Error('job store unreachable');
    });
    expect(removed).toEqual([]);
    expect((await h.docker.getContainer(id).inspect()).State.Running).toBe(true);
    const removedNow = await h.runtime.sweepOrphans(async (labels) => labels[LABELS.workerId] !== h.workerId);
    expect(removedNow).toEqual([id]);
    expect(await h.leftovers()).toEqual([]);
  });
});
