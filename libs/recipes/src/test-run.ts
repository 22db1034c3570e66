/**
 * Applying a recipe's TestRunProfile: pure functions shared by the
 * conformance suite and the worker's CPU test runs, so both run the very
 * same argv.
 */
import type { ArgvSubstitution, Recipe, WeightFile } from './contract';

/** How the run being changed starts. */
export interface TestRunContext {
  /** The run resumes from the state saved at this step (RenderInput.resume.step). */
  resumedAtStep?: number;
}

/** The value a replace substitution sets on this run. */
function substitutionValue(s: ArgvSubstitution, context: TestRunContext): string {
  const value = s.value ?? '';
  const resumed = context.resumedAtStep ?? 0;
  if (!s.minusResumedStep || resumed === 0) return value;
  const left = Number(value) - resumed;
  if (!Number.isInteger(left) || left <= 0) {
    throw new Error(`test run: ${s.flag} ${value} leaves no steps after resuming at step ${resumed}; resume a test run from a step below ${value}`);
  }
  return String(left);
}

/**
 * Apply substitutions to one step's argv. A flag the step does not have is
 * left alone (cache steps take fewer flags than the training step).
 * Returns the new argv and one line per change made, with its reason. Pass
 * `resumedAtStep` when the rendered job resumes (RenderInput.resume), so a
 * step count the engine restarts covers only what is left.
 */
export function applyArgvSubstitutions(
  argv: readonly string[],
  subs: readonly ArgvSubstitution[],
  context: TestRunContext = {},
): { argv: string[]; applied: string[] } {
  let out = [...argv];
  const applied: string[] = [];
  for (const s of subs) {
    const i = out.indexOf(s.flag);
    if (i < 0) continue;
    if (s.action === 'replace') {
      const arity = s.arity ?? 1;
      const before = out.slice(i + 1, i + 1 + arity).join(' ');
      const value = substitutionValue(s, context);
      out = [...out.slice(0, i + 1), value, ...out.slice(i + 1 + arity)];
      applied.push(`${s.flag} ${before} -> ${value} (${s.reason}${value !== (s.value ?? '') ? `; resumed at step ${context.resumedAtStep}` : ''})`);
    } else {
      const arity = s.arity ?? 0;
      out = [...out.slice(0, i), ...out.slice(i + 1 + arity)];
      applied.push(`dropped ${s.flag} (${s.reason})`);
    }
  }
  return { argv: out, applied };
}

/** The weight files of a test run: the recipe's, with the profile's overrides by role. */
export function testRunWeights(recipe: Pick<Recipe, 'testRun'>, weights: readonly WeightFile[]): { weights: WeightFile[]; applied: string[] } {
  const applied: string[] = [];
  const out = weights.map((w) => {
    const o = recipe.testRun?.weightOverrides?.find((x) => x.role === w.role);
    if (!o) return w;
    applied.push(`${w.role}: ${w.fileName} -> ${o.fileName} (${o.reason})`);
    return { ...w, fileName: o.fileName };
  });
  return { weights: out, applied };
}
