/**
 * Intermediate saves and resume for the two accelerate-based engines, kohya
 * sd-scripts (SDXL, FLUX.1) and musubi-tuner (WAN), at the pinned commits.
 * Both name their saves alike (library/train_util.py and
 * musubi_tuner/utils/train_utils.py): STEP_FILE_NAME `{name}-step{:08d}` plus
 * `.safetensors`, STEP_STATE_NAME `{name}-step{:08d}-state` (accelerate's
 * save_state folder), and sample files `sample/{name}_{step:06d}_{i:02d}_
 * {YYYYmmddHHMMSS}_{seed}` (`.png`; musubi writes `_000.png` per frame for a
 * one-frame sample and `.mp4` otherwise). Both write each save synchronously in
 * the training loop, sample images first, then the LoRA, then the state.
 *
 * How they count steps after `--resume` at these commits:
 * - sd-scripts reads train_state.json (current_step) from the state, but with
 *   --skip_until_initial_step it sets `global_step = initial_step` after
 *   subtracting the skipped epochs (train_network.py ~1340), i.e. the saved
 *   step modulo the steps per epoch, so saves are misnamed and the run
 *   overtrains; without it, it restarts global_step at 0 and trains
 *   max_train_steps again. So we pass `--initial_step 0` (ignore the state's
 *   step, start the count at 0) and `--max_train_steps <remaining>`.
 * - musubi always restarts at global_step 0 ("TODO skip until initial step",
 *   training/trainer_base.py) and trains max_train_steps: we pass the remaining
 *   steps.
 * Both therefore `restart`: after resuming from step N the engine reports,
 * names checkpoints, states and samples, and writes ss_steps by k = 1, 2, ...;
 * the job's step is N + k (jobStepOf). N is a multiple of the save interval
 * (it is a save), so the engine's saves at k ≡ 0 fall on the job's save steps.
 *
 * What the state restores (accelerate load_state): the LoRA weights, the
 * optimizer state, the LR scheduler's step (`last_epoch`), and the torch,
 * CUDA, NumPy and Python RNG states. What a resume does not guarantee: the
 * same data order as an uninterrupted run (the dataloader starts a new epoch,
 * shuffled from the restored RNG, rather than the rest of the interrupted
 * one), so the resumed LoRA is an equally trained LoRA, not the same bytes;
 * ss_steps / ss_epoch / ss_max_train_steps in files written after a resume
 * count from the resume.
 */
import type { ArgvSubstitution, ResumeFrom, SavePlan } from '../contract';
import { CONTAINER_PATHS } from '../contract';
import { assertResumeSafe, escapeRegExp } from '../saves';

/** Save intervals of state the engine keeps on disk: the newest three, so the worker can still upload one while the next is written. */
export const KEPT_STATES = 3;

/** The sample file suffix each engine writes for a still image. */
export type SampleKind = 'kohya-png' | 'musubi-frame-png';

/**
 * The SavePlan of an sd-scripts or musubi job, or undefined when it saves only
 * the final LoRA (saveEveryNSteps 0 or not below steps).
 */
export function accelerateSavePlan(outputName: string, steps: number, everySteps: number, samples: SampleKind | undefined): SavePlan | undefined {
  if (everySteps <= 0 || everySteps >= steps) return undefined;
  const name = escapeRegExp(outputName);
  // `{name}_{steps:06d}_{enum:02d}_{ts}{_seed}`; epoch-end samples (`e000003`) are not step saves and do not match.
  const stem = `^${name}_(?<step>\\d{6,})_\\d{2}_\\d{14}(?:_\\d+)?`;
  return {
    everySteps,
    totalSteps: steps,
    checkpointTemplate: `${outputName}-step{step}.safetensors`,
    stateTemplate: `${outputName}-step{step}-state`,
    ...(samples ? { samples: { dir: 'sample', pattern: `${stem}${samples === 'kohya-png' ? '' : '_\\d{3}'}\\.png$` } } : {}),
    stepsAfterResume: 'restarts',
  };
}

/** `--save_state` with a bound on the states kept (sd-scripts/musubi `--save_last_n_steps_state`). */
export function saveStateFlags(everySteps: number): string[] {
  // The engine removes the state saved at `step - n - 1` rounded down to the interval: n = (KEPT - 1) * every keeps KEPT.
  return ['--save_state', '--save_last_n_steps_state', String((KEPT_STATES - 1) * everySteps)];
}

/** The steps a run trains: all of them, or what is left after the resumed step (the engines restart their count). */
export function stepsToTrain(steps: number, resume: ResumeFrom | undefined): number {
  if (!resume) return steps;
  assertResumeSafe(resume);
  if (resume.step >= steps) throw new Error(`resume.step ${resume.step} must be below the job's ${steps} steps: a finished job has nothing to resume`);
  return steps - resume.step;
}

/** `--resume <state>`: the state folder the worker put back into the output folder. */
export function resumeFlags(resume: ResumeFrom): string[] {
  assertResumeSafe(resume);
  return ['--resume', `${CONTAINER_PATHS.output}/${resume.stateDir}`];
}

/**
 * `--lr_scheduler_args num_cycles=c` that makes diffusers' cosine-with-warmup
 * schedule of a run restarted with `remaining` of `steps` steps follow the
 * uninterrupted schedule. The restored scheduler step is the job's step s,
 * but its lambda was built with num_training_steps = remaining:
 * cos(pi * 2c * (s - w) / max(1, remaining - w)) must equal
 * cos(pi * (s - w) / max(1, steps - w)).
 */
export function cosineResumeFlags(steps: number, remaining: number, warmupSteps: number): string[] {
  const cycles = (0.5 * Math.max(1, remaining - warmupSteps)) / Math.max(1, steps - warmupSteps);
  // Full precision: Python's ast.literal_eval reads JavaScript's shortest round-trip form.
  return ['--lr_scheduler_args', `num_cycles=${String(cycles)}`];
}

/** Test runs on CPU do not sample: each sample is a full denoising run of the base model per prompt, minutes on two cores. */
export const TEST_RUN_NO_SAMPLES: ArgvSubstitution[] = [
  { flag: '--sample_prompts', action: 'drop', arity: 1, reason: 'CPU: sampling runs the full model for every denoising step of every prompt (minutes per image on two cores)' },
  { flag: '--sample_every_n_steps', action: 'drop', arity: 1, reason: 'CPU: no sampling (see --sample_prompts)' },
];
