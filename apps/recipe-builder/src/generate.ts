/**
 * `generate`: renders every selected recipe into build/<recipe-id>/.
 */
import { join } from 'node:path';
import { renderBuildContext, writeBuildContext, type BuildContext } from './build-context';
import type { BuildableRecipe } from './recipe-types';

export interface GeneratedContext {
  recipe: BuildableRecipe;
  dir: string;
  context: BuildContext;
}

/** The recipes named in `only` (all when empty), failing on unknown or duplicate ids. */
export function selectRecipes(recipes: BuildableRecipe[], only: string[] | undefined): BuildableRecipe[] {
  const ids = new Set<string>();
  for (const r of recipes) {
    if (ids.has(r.id)) throw new Error(`Two recipes share the id '${r.id}'; recipe ids must be unique`);
    ids.add(r.id);
  }
  if (!only || only.length === 0) return [...recipes].sort((a, b) => a.id.localeCompare(b.id));
  const unknown = only.filter((id) => !ids.has(id));
  if (unknown.length > 0) throw new Error(`Unknown recipe id(s) ${unknown.join(', ')}; known: ${[...ids].sort().join(', ')}`);
  return recipes.filter((r) => only.includes(r.id)).sort((a, b) => a.id.localeCompare(b.id));
}

export async function generateBuildContexts(recipes: BuildableRecipe[], outDir: string, only?: string[]): Promise<GeneratedContext[]> {
  const selected = selectRecipes(recipes, only);
  // Render everything first: a broken recipe fails the run before any folder is touched.
  const rendered = selected.map((recipe) => ({ recipe, dir: join(outDir, recipe.id), context: renderBuildContext(recipe) }));
  for (const r of rendered) await writeBuildContext(r.dir, r.context);
  return rendered;
}
