import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { SavePlan } from '@stationthis/recipes';
import { finalSamples } from '../steps/publish-step';
import { engineSaveSteps, inside, plannedSaveCount, safetensorsComplete } from './save-files';
import { StepMap } from './step-map';

const plan = (mode: SavePlan['stepsAfterResume']): SavePlan => ({
  everySteps: 10,
  totalSteps: 45,
  checkpointTemplate: 'n-step{step}.safetensors',
  stateTemplate: 'n-step{step}-state',
  samples: { dir: 'samples', pattern: '^n_(?<step>\\d{6,})_\\d{2}\\.png$' },
  stepsAfterResume: mode,
});

function safetensors(tensorBytes: number): Buffer {
  const header = Buffer.from(JSON.stringify({ __metadata__: { a: 'b' }, w: { dtype: 'F16', shape: [tensorBytes / 2], data_offsets: [0, tensorBytes] } }));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  return Buffer.concat([len, header, Buffer.alloc(tensorBytes, 1)]);
}

describe('intermediate saves: plan arithmetic', () => {
  it('lists the engine-numbered saves of a run, from scratch and resumed', () => {
    expect(engineSaveSteps(plan('continues'), 0)).toEqual([10, 20, 30, 40]);
    // A continuing engine resumed at 20 counts on: only later saves are new.
    expect(engineSaveSteps(plan('continues'), 20)).toEqual([30, 40]);
    // A restarting engine resumed at 20 counts 0..25: its saves are job steps 30 and 40.
    expect(engineSaveSteps(plan('restarts'), 20)).toEqual([10, 20]);
    expect(plannedSaveCount(plan('continues'))).toBe(4);
  });

  it('maps a restarted engine onto the job: steps, totals and save names', () => {
    const restarted = new StepMap(20, 'restarts', 45);
    expect(restarted.toJob(10)).toBe(30);
    expect(restarted.event({ kind: 'step', step: 3, totalSteps: 25, loss: 0.1 })).toEqual({ kind: 'step', step: 23, totalSteps: 45, loss: 0.1 });
    const continued = new StepMap(20, 'continues', 45);
    expect(continued.toJob(30)).toBe(30);
    expect(continued.event({ kind: 'step', step: 23, totalSteps: 45 })).toEqual({ kind: 'step', step: 23, totalSteps: 45 });
  });

  it('refuses save paths outside the output folder', () => {
    expect(inside('/out', 'a/b')).toBe('/out/a/b');
    expect(() => inside('/out', '../etc/passwd')).toThrow(/leaves the output folder/);
  });

  it('picks the final samples as previews, not a checkpoint\'s', () => {
    const names = ['n_000010_00.png', 'n_000010_01.png', 'n_000045_00.png', 'n_000045_01.png', 'n_000020_00.png'];
    expect(finalSamples(names, plan('continues'))).toEqual(['n_000045_00.png', 'n_000045_01.png']);
    expect(finalSamples(['b.png', 'a.png'], undefined)).toEqual(['a.png', 'b.png']);
  });
});

describe('intermediate saves: a checkpoint is uploaded only when whole', () => {
  let dir: string;
  beforeAll(async () => (dir = await mkdtemp(join(tmpdir(), 'saves-'))));
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('accepts a complete file and refuses a torn or missing one', async () => {
    const file = join(dir, 'a.safetensors');
    const body = safetensors(64);
    await writeFile(file, body);
    expect(await safetensorsComplete(file)).toEqual({ ok: true, bytes: body.length });
    await truncate(file, body.length - 1);
    expect(await safetensorsComplete(file)).toMatchObject({ ok: false, why: expect.stringMatching(/need .* bytes/) });
    await truncate(file, 20);
    expect(await safetensorsComplete(file)).toMatchObject({ ok: false });
    expect(await safetensorsComplete(join(dir, 'missing.safetensors'))).toMatchObject({ ok: false, why: 'the file does not exist' });
  });
});
