import {
  assertResumeSafe,
  checkpointFileAt,
  checkpointStepOf,
  defaultSamplePrompts,
  formatSaveStep,
  jobStepOf,
  resumeStepOf,
  sampleStepOf,
  samplePromptsFor,
  sanitizeSamplePrompt,
  savePlanSteps,
  stateDirAt,
  type SavePlan,
} from '../index';

const PLAN: SavePlan = {
  everySteps: 250,
  totalSteps: 1000,
  checkpointTemplate: 'my_lora-step{step}.safetensors',
  stateTemplate: 'my_lora-step{step}-state',
  samples: { dir: 'sample', pattern: '^my_lora_(?<step>\\d{6})_\\d{2}_\\d{14}\\.png$' },
  stepsAfterResume: 'continues',
};

describe('save plan helpers', () => {
  it('lists the save steps strictly before totalSteps', () => {
    expect(savePlanSteps(PLAN)).toEqual([250, 500, 750]);
    expect(savePlanSteps({ ...PLAN, totalSteps: 1001 })).toEqual([250, 500, 750, 1000]);
    expect(savePlanSteps({ ...PLAN, everySteps: 2000 })).toEqual([]);
    expect(() => savePlanSteps({ ...PLAN, everySteps: 0 })).toThrow(/everySteps must be a positive integer/);
  });
  it('names checkpoints and state folders with the step padded to 8 digits', () => {
    expect(formatSaveStep(7)).toBe('00000007');
    expect(checkpointFileAt(PLAN, 250)).toBe('my_lora-step00000250.safetensors');
    expect(stateDirAt(PLAN, 500)).toBe('my_lora-step00000500-state');
    const { stateTemplate: _dropped, ...noState } = PLAN;
    expect(stateDirAt(noState, 500)).toBeUndefined();
    expect(() => checkpointFileAt(PLAN, -1)).toThrow(/non-negative integer/);
  });
  it('reads the step back from checkpoint and state names, and rejects look-alikes', () => {
    expect(checkpointStepOf(PLAN, 'my_lora-step00000250.safetensors')).toBe(250);
    expect(checkpointStepOf(PLAN, 'my_lora-step00000250.safetensors.tmp')).toBeNull();
    expect(checkpointStepOf(PLAN, 'my_lora.safetensors')).toBeNull();
    expect(checkpointStepOf(PLAN, 'other-step00000250.safetensors')).toBeNull();
    expect(resumeStepOf(PLAN, 'my_lora-step00000750-state')).toBe(750);
    expect(resumeStepOf(PLAN, '.tmp-my_lora-step00000750-state')).toBeNull();
    // Regex metacharacters in a template are literal.
    expect(checkpointStepOf({ ...PLAN, checkpointTemplate: 'a.b-step{step}.x' }, 'aXb-step00000001.x')).toBeNull();
  });
  it('reads the step of a sample from its file name', () => {
    expect(sampleStepOf(PLAN, 'my_lora_000250_01_20260101120000.png')).toBe(250);
    expect(sampleStepOf(PLAN, 'my_lora_000250_01_20260101120000.png.tmp')).toBeNull();
    expect(sampleStepOf(PLAN, 'prompt.txt')).toBeNull();
    const { samples: _dropped, ...noSamples } = PLAN;
    expect(sampleStepOf(noSamples, 'my_lora_000250_01_20260101120000.png')).toBeNull();
  });
  it("maps an engine's step to the job's step by stepsAfterResume", () => {
    const resume = { step: 500, stateDir: 'my_lora-step00000500-state' };
    expect(jobStepOf(PLAN, 750, resume)).toBe(750);
    expect(jobStepOf({ ...PLAN, stepsAfterResume: 'restarts' }, 250, resume)).toBe(750);
    expect(jobStepOf({ ...PLAN, stepsAfterResume: 'restarts' }, 250)).toBe(250);
  });
});

describe('sample prompts', () => {
  it('defaults to the trigger word and two prompts that use it', () => {
    const p = defaultSamplePrompts('sks_dog');
    expect(p[0]).toBe('sks_dog');
    expect(p).toHaveLength(3);
    for (const x of p) expect(x).toContain('sks_dog');
  });
  it('keeps a prompt on one line with no engine options', () => {
    expect(sanitizeSamplePrompt('a dog --w 4096 --h 4096\n--n ugly')).toBe('a dog w 4096 h 4096 n ugly');
    expect(sanitizeSamplePrompt('# comment-looking')).toBe('comment-looking');
    expect(sanitizeSamplePrompt('x'.repeat(400))).toHaveLength(300);
    expect(sanitizeSamplePrompt(' \n ')).toBe('');
  });
  it('uses the given prompts, else the defaults', () => {
    expect(samplePromptsFor({ triggerWord: 'sks', samplePrompts: ['  ', 'sks on a beach'] })).toEqual(['sks on a beach']);
    expect(samplePromptsFor({ triggerWord: 'sks', samplePrompts: [] })).toEqual(defaultSamplePrompts('sks'));
    expect(samplePromptsFor({ triggerWord: 'sks', samplePrompts: ['a', 'b', 'c', 'd', 'e'] })).toEqual(['a', 'b', 'c', 'd']);
  });
});

describe('assertResumeSafe', () => {
  it('accepts a relative state folder and refuses paths that leave the output folder', () => {
    expect(() => assertResumeSafe({ step: 10, stateDir: 'my_lora-step00000010-state' })).not.toThrow();
    expect(() => assertResumeSafe({ step: 10, stateDir: '../etc' })).toThrow(/relative folder/);
    expect(() => assertResumeSafe({ step: 10, stateDir: '/data/output/x' })).toThrow(/relative folder/);
    expect(() => assertResumeSafe({ step: 10, stateDir: 'a/../../b' })).toThrow(/relative folder/);
    expect(() => assertResumeSafe({ step: 0, stateDir: 'x' })).toThrow(/step must be > 0/);
  });
});
