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
import { createHarness, Harness, REPO_ROOT } from './harness';

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
