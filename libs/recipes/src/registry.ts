/** The recipe registry: look-ups by id and by the platform's modelType/baseModel. */
import type { Recipe, WeightFile } from './contract';
import { flux2KleinRecipe } from './recipes/flux2-klein';
import { fluxRecipe } from './recipes/flux';
import { kontextRecipe } from './recipes/kontext';
import { sdxlRecipe } from './recipes/sdxl';
import { smokeRecipe } from './recipes/smoke';
import { wanRecipe } from './recipes/wan';

/** Every recipe, in display order. Internal (product: false) recipes last. Adding a family: one entry here. */
const ALL: ReadonlyArray<Recipe> = [sdxlRecipe, fluxRecipe, kontextRecipe, wanRecipe, flux2KleinRecipe, smokeRecipe] as unknown as ReadonlyArray<Recipe>;

export interface RegistryOptions {
  /**
   * Ids of `operator-only` recipes an operator has enabled (the worker reads
   * them from RECIPES_ENABLED): they join the menu and their model types map.
   * @default []
   */
  enabled?: readonly string[];
}

export interface ListRecipesOptions extends RegistryOptions {
  /** Add the internal recipes (product: false, such as the CPU smoke recipe) and every operator-only recipe. @default false */
  includeInternal?: boolean;
}

function onMenu(r: Recipe, options: RegistryOptions): boolean {
  return (r.availability ?? 'menu') === 'menu' || (options.enabled ?? []).includes(r.id);
}

/** Recipes offered to users, in display order. */
export function listRecipes(options: ListRecipesOptions = {}): Recipe[] {
  if (options.includeInternal === true) return [...ALL];
  return ALL.filter((r) => r.product && onMenu(r, options));
}

/** Any recipe by id, operator-only ones included (tests, conformance, image builds). */
export function getRecipe(id: string): Recipe {
  const recipe = ALL.find((r) => r.id === id);
  if (!recipe) {
    throw new Error(`unknown recipe id ${JSON.stringify(id)}; valid ids: ${ALL.map((r) => r.id).join(', ')}`);
  }
  return recipe;
}

/** The platform model types a recipe trains (its `modelTypes`, else its family), upper-case. */
export function modelTypesOf(recipe: Pick<Recipe, 'family' | 'modelTypes'>): string[] {
  return (recipe.modelTypes ?? [recipe.family]).map((t) => t.trim().toUpperCase());
}

/**
 * Map the platform's `trainingJobs.modelType` / `baseModel` (any case) to its
 * recipe. Throws for unknown types, and for an operator-only recipe nobody
 * enabled, with the list of supported types.
 */
export function recipeForModelType(modelType: string, options: RegistryOptions = {}): Recipe {
  const key = String(modelType ?? '').trim().toUpperCase();
  const available = ALL.filter((r) => onMenu(r, options));
  const supported = available.flatMap(modelTypesOf).join(', ');
  const recipe = available.find((r) => modelTypesOf(r).includes(key));
  if (recipe) return recipe;
  const off = ALL.find((r) => modelTypesOf(r).includes(key));
  if (off) {
    throw new Error(`${off.displayName} (${off.id}) is not offered yet: an operator enables it with RECIPES_ENABLED=${off.id}. Supported model types: ${supported}`);
  }
  throw new Error(`unknown model type ${JSON.stringify(modelType)}; supported model types: ${supported}`);
}

/** The weight files a job with these parameters needs (all of recipe.weights unless the recipe narrows them). */
export function requiredWeights<P>(recipe: Recipe<P>, parameters: P): WeightFile[] {
  return recipe.weightsFor ? recipe.weightsFor(parameters) : recipe.weights;
}
