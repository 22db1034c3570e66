/**
 * Test-run profiles: the substitutions are applied exactly, and every flag a
 * profile changes exists in the recipe's rendered argv, so a renamed flag
 * cannot silently leave a CPU test run training for the production step count.
 */
import { applyArgvSubstitutions, listRecipes, requiredWeights, testRunWeights, type Recipe } from '../index';
import { renderInput } from '../__fixtures__/helpers';

describe('applyArgvSubstitutions', () => {
  const argv = ['train.py', '--max_train_steps', '1000', '--fp8_base', '--blocks_to_swap', '20', '--lr', '1e-4'];

  it('replaces a value, drops a switch and a flag with its value, and reports each change', () => {
    const { argv: out, applied } = applyArgvSubstitutions(argv, [
      { flag: '--max_train_steps', action: 'replace', value: '2', reason: 'r1' },
      { flag: '--fp8_base', action: 'drop', reason: 'r2' },
      { flag: '--blocks_to_swap', action: 'drop', arity: 1, reason: 'r3' },
    ]);
    expect(out).toEqual(['train.py', '--max_train_steps', '2', '--lr', '1e-4']);
    expect(applied).toEqual(['--max_train_steps 1000 -> 2 (r1)', 'dropped --fp8_base (r2)', 'dropped --blocks_to_swap (r3)']);
  });

  it('leaves a step without the flag alone and never mutates its input', () => {
    const copy = [...argv];
    const { argv: out, applied } = applyArgvSubstitutions(argv, [{ flag: '--absent', action: 'drop', reason: 'x' }]);
    expect(out).toEqual(argv);
    expect(applied).toEqual([]);
    expect(argv).toEqual(copy);
  });
});

describe.each(listRecipes().filter((r) => r.testRun).map((r) => [r.id, r as Recipe] as const))('%s test-run profile', (_id, recipe) => {
  const params = (recipe.validate({}) as { ok: true; value: Record<string, unknown> }).value;
  const rendered = recipe.render(renderInput(recipe, params));

  it('changes only flags the rendered steps really have', () => {
    for (const s of recipe.testRun!.substitutions) {
      expect(rendered.steps.some((step) => step.argv.includes(s.flag))).toBe(true);
    }
  });

  it('runs the training step for two optimizer steps', () => {
    const train = rendered.steps.find((s) => s.reportsTrainingProgress)!;
    const { argv } = applyArgvSubstitutions(train.argv, recipe.testRun!.substitutions);
    expect(argv[argv.indexOf('--max_train_steps') + 1]).toBe('2');
  });

  it('overrides only weight roles the recipe has', () => {
    const roles = new Set(recipe.weights.map((w) => w.role));
    for (const o of recipe.testRun!.weightOverrides ?? []) expect(roles.has(o.role)).toBe(true);
    const { weights, applied } = testRunWeights(recipe, requiredWeights(recipe, params as never));
    expect(weights).toHaveLength(requiredWeights(recipe, params as never).length);
    expect(applied.length).toBeLessThanOrEqual((recipe.testRun!.weightOverrides ?? []).length);
  });
});

it('every product recipe has a test-run profile (the conformance suite and the engine demo need one)', () => {
  expect(listRecipes().filter((r) => r.product && !r.testRun).map((r) => r.id)).toEqual([]);
});
