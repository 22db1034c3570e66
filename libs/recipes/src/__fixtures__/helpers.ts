/** Shared test helpers for libs/recipes. */
import type { Recipe, RenderInput } from '../contract';

export const JOB_ID = '665f1c2ab3d4e5f601234567';

export function renderInput<P>(recipe: Recipe<P>, parameters: P, dataset = { imageCount: 20 } as RenderInput<P>['dataset']): RenderInput<P> {
  return {
    jobId: JOB_ID,
    parameters,
    triggerWord: 'sks_dog',
    outputName: 'my_lora_v1',
    dataset,
    baseModelFiles: Object.fromEntries(recipe.weights.map((w) => [w.role, w.fileName])),
  };
}

/** Valid parameters at each field's minimum or maximum (respecting cross-field rules). */
export function edgeParameters(recipe: Recipe, edge: 'min' | 'max'): Record<string, unknown> {
  const schema = recipe.jsonSchema() as { properties: Record<string, { minimum?: number; maximum?: number; enum?: unknown[]; type?: string; multipleOf?: number }> };
  const out: Record<string, unknown> = {};
  for (const [key, prop] of Object.entries(schema.properties)) {
    if (prop.enum) out[key] = edge === 'min' ? prop.enum[0] : prop.enum[prop.enum.length - 1];
    else if (prop.type === 'boolean') out[key] = edge === 'max';
    else if (prop.minimum !== undefined && prop.maximum !== undefined) {
      let v = edge === 'min' ? prop.minimum : prop.maximum;
      if (prop.multipleOf) v = edge === 'min' ? Math.ceil(v / prop.multipleOf) * prop.multipleOf : Math.floor(v / prop.multipleOf) * prop.multipleOf;
      out[key] = v;
    }
  }
  return out;
}
