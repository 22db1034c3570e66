/**
 * Where the recipes come from: every recipe in @stationthis/recipes,
 * including the internal CPU smoke recipe (it is built and pushed like the rest).
 */
import { listRecipes } from '@stationthis/recipes';
import type { BuildableRecipe } from './recipe-types';

export function loadRecipes(): BuildableRecipe[] {
  return listRecipes({ includeInternal: true });
}
