/**
 * Pure helpers over SavePlan and ResumeFrom: which steps save, what the engine
 * names each save, and which save a file the worker finds belongs to. The
 * worker uses these instead of reading the templates itself, so a recipe can
 * change its engine's naming in one place.
 */
import type { ResumeFrom, SavePlan } from './contract';

/** Digits of `{step}` in SavePlan templates (the engines' `-step{:08d}`). */
export const SAVE_STEP_DIGITS = 8;

const STEP_TOKEN = '{step}';

function assertStep(step: number, what: string): void {
  if (!Number.isInteger(step) || step < 0) throw new Error(`${what}: step must be a non-negative integer, got ${String(step)}`);
}

/** `step` zero-padded to 8 digits, as the engines write it. */
export function formatSaveStep(step: number): string {
  assertStep(step, 'formatSaveStep');
  return String(step).padStart(SAVE_STEP_DIGITS, '0');
}

function fill(template: string, step: number): string {
  return template.split(STEP_TOKEN).join(formatSaveStep(step));
}

/** A literal string as a regex source (for SavePlan.samples.pattern). */
export function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Inverse of `fill`: the step a name made from `template` carries, or null when the name is not one. */
function stepFromTemplate(template: string, name: string): number | null {
  const source = template.split(STEP_TOKEN).map(escapeRegExp).join(`(\\d{${SAVE_STEP_DIGITS}})`);
  const m = new RegExp(`^${source}$`).exec(name);
  if (!m) return null;
  const steps = m.slice(1).map(Number);
  // A template naming the step twice must name the same step twice.
  if (steps.length === 0 || steps.some((s) => s !== steps[0])) return null;
  return steps[0]!;
}

/** The steps at which the plan saves, strictly before `totalSteps` (the final LoRA is saved at totalSteps besides). */
export function savePlanSteps(plan: SavePlan): number[] {
  if (!Number.isInteger(plan.everySteps) || plan.everySteps <= 0) throw new Error(`savePlanSteps: everySteps must be a positive integer, got ${String(plan.everySteps)}`);
  const out: number[] = [];
  for (let s = plan.everySteps; s < plan.totalSteps; s += plan.everySteps) out.push(s);
  return out;
}

/** The checkpoint LoRA of the save at `step`, relative to CONTAINER_PATHS.output. */
export function checkpointFileAt(plan: SavePlan, step: number): string {
  return fill(plan.checkpointTemplate, step);
}

/** The engine-state folder of the save at `step`, relative to output; undefined when the recipe cannot resume. */
export function stateDirAt(plan: SavePlan, step: number): string | undefined {
  return plan.stateTemplate === undefined ? undefined : fill(plan.stateTemplate, step);
}

/** The step of a checkpoint path (relative to output, as in the template), or null when it is not one. */
export function checkpointStepOf(plan: SavePlan, path: string): number | null {
  return stepFromTemplate(plan.checkpointTemplate, path);
}

/** The step of a state folder path (relative to output, as in the template), or null when it is not one. */
export function resumeStepOf(plan: SavePlan, stateDir: string): number | null {
  return plan.stateTemplate === undefined ? null : stepFromTemplate(plan.stateTemplate, stateDir);
}

/**
 * The step of a sample image, from its file name (no folder: the names found
 * in `plan.samples.dir`), or null when the file is not one of this plan's
 * samples (a temp file, another job's name). The step is the engine's own
 * number: after a resume of a `restarts` engine, add `ResumeFrom.step`.
 */
export function sampleStepOf(plan: SavePlan, fileName: string): number | null {
  if (!plan.samples) return null;
  const m = new RegExp(plan.samples.pattern).exec(fileName);
  const raw = m?.groups?.['step'];
  if (raw === undefined || !/^\d+$/.test(raw)) return null;
  return Number(raw);
}

/** The job's step for a step number the engine reported or named a file by, after resuming from `resume`. */
export function jobStepOf(plan: SavePlan, engineStep: number, resume?: ResumeFrom): number {
  return resume && plan.stepsAfterResume === 'restarts' ? engineStep + resume.step : engineStep;
}

/** Longest sample prompt the recipes pass to an engine. */
export const SAMPLE_PROMPT_MAX_LENGTH = 300;
/** Most sample prompts per save: each costs a full sampling run at every save. */
export const SAMPLE_PROMPTS_MAX = 4;

/**
 * The sample prompts a job uses when the user gave none: the bare trigger
 * word (what the LoRA learned, with nothing else), and two prompts in the
 * style users write on the platform.
 */
export function defaultSamplePrompts(triggerWord: string): string[] {
  return [triggerWord, `a photo of ${triggerWord}, detailed, high quality`, `${triggerWord} in a sunlit garden, cinematic lighting`];
}

/**
 * One user prompt made safe for an engine's prompt file: one line, no engine
 * option markers (`--w 4096` in kohya's and musubi's prompt syntax would set
 * the sample size), no characters that end a TOML string badly, trimmed to
 * SAMPLE_PROMPT_MAX_LENGTH. Empty when nothing is left.
 */
export function sanitizeSamplePrompt(prompt: string): string {
  return (
    prompt
      .normalize('NFKC')
      // Control characters (newlines above all) would start another prompt line.
      // eslint-disable-next-line no-control-regex
      .replace(/[\u0000-\u001f\u007f]+/g, ' ')
      // kohya/musubi split a prompt line on " --"; a leading "--" is an option too.
      .replace(/(^|\s)-{2,}/g, '$1')
      .replace(/\s+/g, ' ')
      .trim()
      // Prompt files skip lines starting with '#' (comments), which would drop the prompt.
      .replace(/^#+\s*/, '')
      .slice(0, SAMPLE_PROMPT_MAX_LENGTH)
      .trim()
  );
}

/** The prompts a render uses: the given ones sanitised (empties dropped, at most SAMPLE_PROMPTS_MAX), else the defaults. */
export function samplePromptsFor(input: { samplePrompts?: string[]; triggerWord: string }): string[] {
  const given = (input.samplePrompts ?? []).map(sanitizeSamplePrompt).filter((p) => p.length > 0);
  return (given.length > 0 ? given : defaultSamplePrompts(input.triggerWord)).slice(0, SAMPLE_PROMPTS_MAX);
}

/**
 * Check a ResumeFrom before it is rendered into an engine argument: the state
 * folder must be a plain relative path inside the output folder.
 */
export function assertResumeSafe(resume: ResumeFrom): void {
  assertStep(resume.step, 'resume');
  if (resume.step === 0) throw new Error('resume.step must be > 0: a state saved at step 0 is a fresh start; omit resume');
  const d = resume.stateDir;
  if (typeof d !== 'string' || !/^[A-Za-z0-9_][A-Za-z0-9_.-]*(\/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$/.test(d) || d.split('/').some((p) => p === '..' || p === '.')) {
    throw new Error(`resume.stateDir ${JSON.stringify(d)} must be a relative folder inside the output folder (letters, digits, '_', '.', '-', '/'); pass the stateDirAt() of the save`);
  }
}
