/**
 * Opt-in check that the smoke trainer's saves and resume are exact, run in the
 * smoke image (Debian's python3-torch; the host has no torch):
 *   RECIPES_SMOKE_DOCKER=1 npx jest -c libs/recipes/jest.config.js smoke-resume
 * The trainer under test is this checkout's src/smoke/trainer.py, mounted over
 * the image's copy, so the image only provides the Python runtime. An
 * uninterrupted run and a run resumed from its step-5 state (as a re-claimed
 * attempt does it: the state folder put back into a fresh output folder) must
 * end at the same step with the same LoRA tensors, checkpoints and samples.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  checkpointFileAt,
  smokeRecipe,
  parseSafetensorsHeader,
  sampleStepOf,
  savePlanSteps,
  stateDirAt,
  type ProgressEvent,
  type RenderedJob,
  type ResumeFrom,
} from '../index';
import { renderInput } from '../__fixtures__/helpers';

const ENABLED = process.env['RECIPES_SMOKE_DOCKER'] === '1';
const IMAGE = process.env['RECIPES_SMOKE_IMAGE'] ?? '127.0.0.1:5000/stationthis/smoke-cpu:1.0.0';
const TRAINER = path.join(__dirname, '..', 'smoke', 'trainer.py');
const maybe = ENABLED ? describe : describe.skip;

maybe('smoke trainer saves and resume (Docker)', () => {
  const recipe = smokeRecipe;
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'recipes-smoke-resume-'));
  const dataset = path.join(work, 'dataset');
  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  function docker(args: string[]): { status: number | null; stdout: string; stderr: string } {
    return spawnSync('docker', ['run', '--rm', '--cpus', '2', '--network', 'none', '-u', `${process.getuid?.() ?? 0}`, ...args], { encoding: 'utf8' });
  }

  function render(resume?: ResumeFrom): RenderedJob {
    const v = recipe.validate({ steps: 12, batchSize: 4, saveEveryNSteps: 5, loraDropout: 0.1, sampleCount: 1 });
    if (!v.ok) throw new Error(JSON.stringify(v.issues));
    return recipe.render({ ...renderInput(recipe, v.value, { imageCount: 6 }), samplePrompts: ['sks_dog', 'sks_dog on a beach'], ...(resume ? { resume } : {}) });
  }

  /** Run a rendered job with a fresh job folder and the given output folder; returns the parsed progress. */
  function train(rendered: RenderedJob, output: string): ProgressEvent[] {
    const job = fs.mkdtempSync(path.join(work, 'job-'));
    for (const f of rendered.files) fs.writeFileSync(path.join(job, f.path), f.content);
    const parser = recipe.createProgressParser();
    const events: ProgressEvent[] = [];
    for (const step of rendered.steps) {
      const r = docker(['-v', `${dataset}:/data/dataset:ro`, '-v', `${job}:/data/job:ro`, '-v', `${output}:/data/output`, '-v', `${TRAINER}:${step.argv[1]}:ro`, IMAGE, ...step.argv]);
      events.push(...parser.feed(r.stdout), ...parser.feed(r.stderr));
      if (r.status !== 0) throw new Error(`trainer exited ${r.status}: ${r.stderr.slice(-2000)}`);
    }
    return events;
  }

  function tensorHash(file: string): string {
    return parseSafetensorsHeader(new Uint8Array(fs.readFileSync(file))).metadata['sshs_model_hash']!;
  }

  it('a run resumed from a mid-epoch state ends like the uninterrupted run', () => {
    fs.mkdirSync(dataset);
    const made = docker(['-v', `${dataset}:/d`, IMAGE, 'python3', '-c',
      "from PIL import Image, ImageDraw\nfor i in range(6):\n  im = Image.new('RGB', (96, 80), (40*i, 90, 200-30*i)); ImageDraw.Draw(im).ellipse((10+3*i, 10, 70, 60), fill=(255, 200, 0)); im.save('/d/img%d.png' % i); open('/d/img%d.txt' % i, 'w').write('sks dog')"]);
    expect(made.status).toBe(0);

    const rendered = render();
    const plan = rendered.outputs.saves!;
    expect(savePlanSteps(plan)).toEqual([5, 10]);
    const full = fs.mkdtempSync(path.join(work, 'full-'));
    const fullEvents = train(rendered, full);
    expect(fullEvents.filter((e) => e.kind === 'step').pop()).toMatchObject({ step: 12, totalSteps: 12 });
    for (const s of savePlanSteps(plan)) {
      expect(fs.existsSync(path.join(full, checkpointFileAt(plan, s)))).toBe(true);
      expect(fs.readdirSync(path.join(full, stateDirAt(plan, s)!)).sort()).toEqual(['state.pt', 'train_state.json']);
    }
    const sampleSteps = fs.readdirSync(path.join(full, plan.samples!.dir)).map((f) => sampleStepOf(plan, f));
    expect(sampleSteps.sort((a, b) => a! - b!)).toEqual([5, 5, 10, 10, 12]);
    // Nothing half-written is left under any name.
    expect(fs.readdirSync(full).filter((f) => f.startsWith('.tmp-'))).toEqual([]);

    // A re-claimed attempt: a fresh output folder holding only the step-5 state.
    const resume: ResumeFrom = { step: 5, stateDir: stateDirAt(plan, 5)! };
    const resumed = fs.mkdtempSync(path.join(work, 'resumed-'));
    fs.cpSync(path.join(full, resume.stateDir), path.join(resumed, resume.stateDir), { recursive: true });
    const resumedRender = render(resume);
    expect(resumedRender.files[0]!.content).toContain(`resume = "/data/output/${resume.stateDir}"`);
    const steps = train(resumedRender, resumed).filter((e) => e.kind === 'step');
    // The bar continues from the saved step: the first report is 5/12, the last 12/12.
    expect(steps[0]).toMatchObject({ step: 5, totalSteps: 12 });
    expect(steps.pop()).toMatchObject({ step: 12, totalSteps: 12 });

    const lora = rendered.outputs.lora;
    expect(tensorHash(path.join(resumed, lora))).toBe(tensorHash(path.join(full, lora)));
    expect(parseSafetensorsHeader(new Uint8Array(fs.readFileSync(path.join(resumed, lora)))).metadata['ss_steps']).toBe('12');
    expect(tensorHash(path.join(resumed, checkpointFileAt(plan, 10)))).toBe(tensorHash(path.join(full, checkpointFileAt(plan, 10))));
    for (const f of fs.readdirSync(path.join(resumed, 'samples'))) {
      expect(fs.readFileSync(path.join(resumed, 'samples', f)).equals(fs.readFileSync(path.join(full, 'samples', f)))).toBe(true);
    }
    // The state saved again at step 10 is the same state, byte for byte.
    const state10 = path.join(stateDirAt(plan, 10)!, 'state.pt');
    expect(fs.readFileSync(path.join(resumed, state10)).equals(fs.readFileSync(path.join(full, state10)))).toBe(true);
  }, 300_000);

  it('refuses a state folder from another training, with exit code 2', () => {
    const rendered = render();
    const plan = rendered.outputs.saves!;
    const out = fs.mkdtempSync(path.join(work, 'other-'));
    const full = fs.readdirSync(work).find((d) => d.startsWith('full-'))!;
    const stateDir = stateDirAt(plan, 5)!;
    fs.cpSync(path.join(work, full, stateDir), path.join(out, stateDir), { recursive: true });
    const v = recipe.validate({ steps: 12, batchSize: 4, saveEveryNSteps: 5, learningRate: 0.01 });
    if (!v.ok) throw new Error('invalid');
    const other = recipe.render({ ...renderInput(recipe, v.value, { imageCount: 6 }), resume: { step: 5, stateDir } });
    expect(() => train(other, out)).toThrow(/exited 2: .*different training/s);
  }, 120_000);
});
