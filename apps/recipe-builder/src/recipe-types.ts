/**
 * The slice of the Recipe contract (@stationthis/recipes) that image building
 * needs. Derived from the contract's own types, so a contract change shows up
 * here as a compile error.
 */
import type { Recipe } from '@stationthis/recipes';

export type { BaseImageRef, BuildStep, EngineRef, FlagCheck, ImageSpec, Recipe } from '@stationthis/recipes';

/** What the Dockerfile renderer reads from a recipe: identity, engine and image spec. */
export type BuildableRecipe = Pick<Recipe, 'id' | 'version' | 'family' | 'displayName' | 'description' | 'product' | 'engine' | 'image'>;
