/**
 * The operator CLI's submit, against the real services: what it writes is
 * what the worker reads (recipe parameters included, which once went
 * missing), and a video is uploaded only for a recipe that trains on videos.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { jobParametersFromPlatformDoc } from '@stationthis/recipes';
import { encodePng } from '../src/cli/demo-images';
import { createHarness, ensureSmokeImage, Harness, REPO_ROOT } from './harness';

const run = promisify(execFile);
const CLI = join(REPO_ROOT, 'apps/training-worker/dist/cli/cli.js');

describe('cli submit', () => {
  let h: Harness;
  let dir: string;
  beforeAll(async () => {
    h = await createHarness('cli');
    dir = await mkdtemp(join(tmpdir(), 'cli-submit-'));
    const png = encodePng(16, 16, new Uint8Array(16 * 16 * 3).fill(90));
    for (let i = 1; i <= 5; i++) await writeFile(join(dir, `img_${i}.png`), png);
    await writeFile(join(dir, 'img_1.txt'), 'a photo of sks_cli');
    await writeFile(join(dir, 'clip_1.mp4'), Buffer.from('00000018667479706d703432', 'hex'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
    await h?.close();
  });

  const submit = async (...args: string[]) =>
    (await run(process.execPath, [CLI, 'submit', '--dir', dir, '--owner', '64b0000000000000000000c1', ...args], { env: h.env, cwd: REPO_ROOT })).stdout.trim();

  it('stores --param values where the worker reads them', async () => {
    const jobId = await submit('--model', 'SMOKE', '--trigger', 'sks_cli', '--param', 'steps=20', '--param', 'learningRate=0.0005', '--param', 'sampleCount=0');
    const job = await h.job(jobId);
    expect(jobParametersFromPlatformDoc(job as never)).toMatchObject({ steps: 20, learningRate: 0.0005, sampleCount: 0 });
    const dataset = await h.db.collection('datasets').findOne({});
    expect(dataset?.['images']).toHaveLength(5); // the smoke recipe takes no video: clip_1.mp4 stays behind
  });
});

describe('cli show', () => {
  let h: Harness;
  beforeAll(async () => {
    await ensureSmokeImage();
    h = await createHarness('cli-show');
  });
  afterAll(() => h?.close());

  const show = async (...args: string[]) => (await run(process.execPath, [CLI, 'show', ...args], { env: h.env, cwd: REPO_ROOT })).stdout;

  it("reads the quote, the charge and the settle decision from the current platform attempt's record", async () => {
    const { owner, wallet } = await h.seedAccount(5000);
    const datasetId = await h.seedDataset(owner);
    const jobId = await h.enqueue({ ownerAccountId: owner, datasetId, walletAddress: wallet, name: 'cli-show' } as never);
    const queued = await show(jobId);
    expect(queued).toMatch(/Platform attempt 0:\n {2}not claimed by a worker yet/);

    await h.runWorker();
    const job = await h.job(jobId);
    expect(job.status).toBe('COMPLETED');
    const out = await show(jobId);
    expect(out).toContain(`Job ${jobId}: COMPLETED`);
    expect(out).toContain(`Quote: ${job.estimatedCostPoints} points`);
    expect(out).toContain(`Charged: yes, ${job.estimatedCostPoints} points`);
    expect(out).toMatch(new RegExp(`Settled: completed, ${job.actualCostPoints} points used \\(training completed; decided by worker:`));
    expect(out).toMatch(/Recipe: smoke-cpu@\S+ \(stationthis-smoke /);

    const json = JSON.parse(await show(jobId, '--json'));
    expect(json).toMatchObject({ platformAttempt: 0, attempt: { _id: `${jobId}:0`, state: { charged: true, recipeId: 'smoke-cpu' } }, decision: { outcome: 'completed', usedPoints: job.actualCostPoints } });
  });
});
