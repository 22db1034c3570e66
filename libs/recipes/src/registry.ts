/** The recipe registry: look-ups by id and by the platform's modelType/baseModel. */
import type { Recipe, WeightFile } from './contract';
import { fluxRecipe } from './recipes/flux';
import { sdxlRecipe } from './recipes/sdxl';
import { smokeRecipe } from './recipes/smoke';
import { wanRecipe } from './recipes/wan';

/** Every recipe, in display order. Internal (product: false) recipes last. */
const ALL: ReadonlyArray<Recipe> = [sdxlRecipe, fluxRecipe, wanRecipe, smokeRecipe] as unknown as ReadonlyArray<Recipe>;

export interface ListRecipesOptions {
  /** Add the internal recipes (product: false), such as the CPU smoke recipe. @default false */
  includeInternal?: boolean;
}

/** Recipes offered to users, in display order. */
export function listRecipes(options: ListRecipesOptions = {}): Recipe[] {
  return ALL.filter((r) => r.product || options.includeInternal === true);
}

export function getRecipe(id: string): Recipe {
  const recipe = ALL.find((r) => r.id === id);
  if (!recipe) {
    throw new Error(`unknown recipe id ${JSON.stringify(id)}; valid ids: ${ALL.map((r) => r.id).join(', ')}`);
  }
  return recipe;
}

const BY_MODEL_TYPE: Record<string, string> = {
  SDXL: 'sdxl-lora',
  FLUX: 'flux-lora',
  WAN: 'wan-lora',
  SMOKE: 'smoke-cpu',
};

/** Platform model types that exist in trainingJobs but have no recipe here, with the reason. */
const UNSUPPORTED: Record<string, string> = {
  KONTEXT:
    'FLUX.1 Kontext training is not supported by this training system yet: it needs paired control images and a Kontext engine (musubi-tuner flux_kontext_train_network.py or ai-toolkit); no recipe exists',
};

/**
 * Map the platform's `trainingJobs.modelType` / `baseModel` ('SDXL' | 'FLUX' |
 * 'WAN' | 'SMOKE', any case) to its recipe. Throws for unsupported or unknown
 * types with the list of supported ones.
 */
export function recipeForModelType(modelType: string): Recipe {
  const key = String(modelType ?? '').trim().toUpperCase();
  const id = BY_MODEL_TYPE[key];
  if (id) return getRecipe(id);
  const supported = Object.keys(BY_MODEL_TYPE).join(', ');
  if (UNSUPPORTED[key]) throw new Error(`${UNSUPPORTED[key]}. Supported model types: ${supported}`);
  throw new Error(`unknown model type ${JSON.stringify(modelType)}; supported model types: ${supported}`);
}

/** The weight files a job with these parameters needs (all of recipe.weights unless the recipe narrows them). */
export function requiredWeights<P>(recipe: Recipe<P>, parameters: P): WeightFile[] {
  return recipe.weightsFor ? recipe.weightsFor(parameters) : recipe.weights;
}
