/** What each recipe renders for intermediate saves and for a resumed attempt. */
import { applyArgvSubstitutions, getRecipe, jobStepOf, sampleStepOf, savePlanSteps, stateDirAt, type Recipe, type RenderInput, type RenderedJob, type ResumeFrom } from '../index';
import { renderInput } from '../__fixtures__/helpers';

function render(id: string, raw: Record<string, unknown>, extra: Pick<RenderInput<unknown>, 'samplePrompts' | 'resume'> = {}): RenderedJob {
  const recipe = getRecipe(id) as Recipe;
  const v = recipe.validate(raw);
  if (!v.ok) throw new Error(JSON.stringify(v.issues));
  return recipe.render({ ...renderInput(recipe, v.value), ...extra });
}

function trainArgv(job: RenderedJob): string[] {
  return job.steps.find((s) => s.name === 'train')!.argv;
}

function flag(argv: string[], name: string): string | undefined {
  const i = argv.indexOf(name);
  return i < 0 ? undefined : argv[i + 1];
}

/** The musubi-tuner recipes: samples named `_000` (frame 0), no `--initial_step`. */
const MUSUBI = ['wan-lora', 'kontext-lora', 'flux2-klein-lora'];

describe.each(['sdxl-lora', 'flux-lora', 'wan-lora', 'kontext-lora', 'flux2-klein-lora'])('%s saves and resume', (id) => {
  const resume: ResumeFrom = { step: 500, stateDir: 'my_lora_v1-step00000500-state' };

  it('saves checkpoint, state and samples at each interval, keeping three states', () => {
    const job = render(id, { steps: 1000, saveEveryNSteps: 250 });
    const plan = job.outputs.saves!;
    expect(plan).toMatchObject({ everySteps: 250, totalSteps: 1000, stepsAfterResume: 'restarts', stateTemplate: 'my_lora_v1-step{step}-state' });
    expect(savePlanSteps(plan)).toEqual([250, 500, 750]);
    const argv = trainArgv(job);
    expect(flag(argv, '--save_every_n_steps')).toBe('250');
    expect(argv).toContain('--save_state');
    expect(flag(argv, '--save_last_n_steps_state')).toBe('500');
    expect(flag(argv, '--sample_every_n_steps')).toBe('250');
    expect(flag(argv, '--max_train_steps')).toBe('1000');
    expect(argv).not.toContain('--resume');
    const prompts = job.files.find((f) => f.path === 'sample_prompts.txt')!.content.trim().split('\n');
    expect(prompts).toHaveLength(3);
    // Kontext and FLUX.2 add their guidance (`--g`) after the steps.
    for (const line of prompts) expect(line).toMatch(/^[^-]*sks_dog.* --w \d+ --h \d+ .*--d 42 --s \d+( --g [\d.]+)?$/);
    // The engines' own names: kohya `<name>_<step:06d>_<i:02d>_<ts>_<seed>.png`, musubi adds `_000` (frame 0).
    const sample = MUSUBI.includes(id) ? 'my_lora_v1_000250_01_20261207021500_42_000.png' : 'my_lora_v1_000250_01_20261207021500_42.png';
    expect(sampleStepOf(plan, sample)).toBe(250);
    expect(sampleStepOf(plan, 'my_lora_v1_e000002_01_20261207021500_42.png')).toBeNull();
  });

  it('uses the given sample prompts, one line each, with no injected options', () => {
    const job = render(id, { steps: 1000, saveEveryNSteps: 250 }, { samplePrompts: ['sks_dog on a beach --w 4096', 'portrait of sks_dog'] });
    const lines = job.files.find((f) => f.path === 'sample_prompts.txt')!.content.trim().split('\n');
    expect(lines.map((l) => l.split(' --')[0])).toEqual(['sks_dog on a beach w 4096', 'portrait of sks_dog']);
  });

  it('resumes from the state with the remaining steps, the count restarting at 0', () => {
    const job = render(id, { steps: 1000, saveEveryNSteps: 250 }, { resume });
    const argv = trainArgv(job);
    expect(flag(argv, '--resume')).toBe('/data/output/my_lora_v1-step00000500-state');
    expect(flag(argv, '--max_train_steps')).toBe('500');
    if (!MUSUBI.includes(id)) expect(flag(argv, '--initial_step')).toBe('0');
    // The plan stays the job's; the engine's step 250 after resuming at 500 is the job's 750.
    expect(job.outputs.saves!.totalSteps).toBe(1000);
    expect(jobStepOf(job.outputs.saves!, 250, resume)).toBe(750);
  });

  it('refuses a resume at or past the last step, or outside the output folder', () => {
    expect(() => render(id, { steps: 1000, saveEveryNSteps: 250 }, { resume: { step: 1000, stateDir: 'x' } })).toThrow(/must be below the job's 1000 steps/);
    expect(() => render(id, { steps: 1000, saveEveryNSteps: 250 }, { resume: { step: 500, stateDir: '../x' } })).toThrow(/relative folder/);
  });

  it('a resumed CPU test run trains what is left of its two steps', () => {
    const recipe = getRecipe(id);
    const job = render(id, { steps: 100, saveEveryNSteps: 1 }, { resume: { step: 1, stateDir: stateDirAt(render(id, { steps: 100, saveEveryNSteps: 1 }).outputs.saves!, 1)! } });
    const { argv, applied } = applyArgvSubstitutions(trainArgv(job), recipe.testRun!.substitutions, { resumedAtStep: 1 });
    expect(flag(argv, '--max_train_steps')).toBe('1');
    expect(argv).not.toContain('--sample_prompts');
    expect(applied.join('\n')).toMatch(/--max_train_steps 99 -> 1 .*resumed at step 1/);
    expect(() => applyArgvSubstitutions(trainArgv(job), recipe.testRun!.substitutions, { resumedAtStep: 2 })).toThrow(/leaves no steps after resuming at step 2/);
  });
});

describe('kohya cosine schedule after a resume', () => {
  it('bends the restarted cosine back onto the job schedule', () => {
    const argv = trainArgv(render('sdxl-lora', { steps: 1000, saveEveryNSteps: 250, lrScheduler: 'cosine', lrWarmupSteps: 100 }, { resume: { step: 500, stateDir: 'my_lora_v1-step00000500-state' } }));
    // 0.5 * (500 - 100) / (1000 - 100)
    expect(flag(argv, '--lr_scheduler_args')).toBe(`num_cycles=${0.5 * 400 / 900}`);
    const constant = trainArgv(render('sdxl-lora', { steps: 1000, saveEveryNSteps: 250 }, { resume: { step: 500, stateDir: 'my_lora_v1-step00000500-state' } }));
    expect(constant).not.toContain('--lr_scheduler_args');
  });
});

describe('no saves', () => {
  it.each(['sdxl-lora', 'flux-lora', 'wan-lora', 'kontext-lora', 'flux2-klein-lora', 'smoke-cpu'])('%s renders no SavePlan and no state when saveEveryNSteps is 0', (id) => {
    const job = render(id, { saveEveryNSteps: 0 });
    expect(job.outputs.saves).toBeUndefined();
    expect(trainArgv(job)).not.toContain('--save_state');
  });
});

describe('smoke saves and resume', () => {
  it('renders the plan, prompts, state switch and resume path', () => {
    const job = render('smoke-cpu', { steps: 100, saveEveryNSteps: 25 }, { samplePrompts: ['sks_dog "quoted"\nnext'], resume: { step: 50, stateDir: 'my_lora_v1-step00000050-state' } });
    expect(job.outputs.saves).toEqual({
      everySteps: 25,
      totalSteps: 100,
      checkpointTemplate: 'my_lora_v1-step{step}.safetensors',
      stateTemplate: 'my_lora_v1-step{step}-state',
      samples: { dir: 'samples', pattern: '^my_lora_v1_(?<step>\\d{6,})_\\d{2}\\.png$' },
      stepsAfterResume: 'continues',
    });
    const toml = job.files[0]!.content;
    expect(toml).toContain('save_state = true');
    expect(toml).toContain('sample_prompts = ["sks_dog \\"quoted\\" next"]');
    expect(toml).toContain('resume = "/data/output/my_lora_v1-step00000050-state"');
    expect(sampleStepOf(job.outputs.saves!, 'my_lora_v1_000050_00.png')).toBe(50);
  });
});
