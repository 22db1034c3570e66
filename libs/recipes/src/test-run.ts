/**
 * Applying a recipe's TestRunProfile: pure functions shared by the
 * conformance suite and the worker's CPU test runs, so both run the very
 * same argv.
 */
import type { ArgvSubstitution, Recipe, WeightFile } from './contract';

/**
 * Apply substitutions to one step's argv. A flag the step does not have is
 * left alone (cache steps take fewer flags than the training step).
 * Returns the new argv and one line per change made, with its reason.
 */
export function applyArgvSubstitutions(argv: readonly string[], subs: readonly ArgvSubstitution[]): { argv: string[]; applied: string[] } {
  let out = [...argv];
  const applied: string[] = [];
  for (const s of subs) {
    const i = out.indexOf(s.flag);
    if (i < 0) continue;
    if (s.action === 'replace') {
      const arity = s.arity ?? 1;
      const before = out.slice(i + 1, i + 1 + arity).join(' ');
      out = [...out.slice(0, i + 1), s.value ?? '', ...out.slice(i + 1 + arity)];
      applied.push(`${s.flag} ${before} -> ${s.value ?? ''} (${s.reason})`);
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
