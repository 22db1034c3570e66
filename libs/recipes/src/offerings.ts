/**
 * The platform's training offerings (monygroupcorp/noema
 * `src/config/trainingOfferings.js`, commit 5334918f), in one place. They are
 * what the platform's users see: the recipes take their defaults from here
 * (a job's own parameters override them within the recipe's bounds), and the
 * offering's minimum image count is the count the recipe recommends (the
 * engines themselves train on one image: see dataset-size.ts).
 *
 * Only values the platform states are here; a recipe's other defaults are its
 * own. SDXL and FLUX are listed for reference but their recipes keep their
 * tuned defaults: the platform's `hyperParams` for them (epochs 10 / 8, FLUX
 * lr 5e-5) were never read by its live path, which trained with the
 * ai-toolkit template our defaults follow (ADR 0003). Pure data.
 */

/** The offering ids, equal to our recipe ids. */
export type OfferingId = 'sdxl-lora' | 'flux-lora' | 'wan-lora' | 'kontext-lora';

export interface OfferingDefaults {
  steps?: number;
  learningRate?: number;
  loraRank?: number;
  loraAlpha?: number;
}

export interface Offering {
  id: OfferingId;
  /** The platform's `baseModel` / `trainingJobs.modelType`. */
  baseModel: string;
  name: string;
  /** The platform's status: 'active' offerings are on its menu. */
  status: 'active' | 'hidden' | 'coming_soon';
  /** The platform's minimum images; we recommend it (fewer only warns). */
  minImages: number;
  maxImages?: number;
  /** The platform's points price, for reference only (we quote from the recipe's time model). */
  costPoints?: number;
  /** Parameter defaults, under our recipe parameter names. */
  defaults: OfferingDefaults;
  /** The platform's `trainingMode` values, when the offering has modes (first = default). */
  trainingModes?: readonly [string, ...string[]];
  /** Whether our recipe takes its defaults from `defaults` (see the file comment). */
  recipeUsesDefaults: boolean;
}

export const OFFERINGS: Readonly<Record<OfferingId, Offering>> = Object.freeze({
  'sdxl-lora': {
    id: 'sdxl-lora',
    baseModel: 'SDXL',
    name: 'SDXL LoRA',
    status: 'active',
    minImages: 20,
    maxImages: 40,
    costPoints: 86400,
    // hyperParams { epochs: 10, lr: 1e-4 }: epochs have no equivalent in our step-based recipes.
    defaults: { learningRate: 1e-4 },
    recipeUsesDefaults: false,
  },
  'flux-lora': {
    id: 'flux-lora',
    baseModel: 'FLUX',
    name: 'Flux LoRA',
    status: 'active',
    minImages: 20,
    costPoints: 86400,
    // hyperParams { epochs: 8, lr: 5e-5 }.
    defaults: { learningRate: 5e-5 },
    recipeUsesDefaults: false,
  },
  'wan-lora': {
    id: 'wan-lora',
    baseModel: 'WAN',
    name: 'WAN LoRA',
    status: 'hidden',
    minImages: 20,
    defaults: {},
    recipeUsesDefaults: false,
  },
  'kontext-lora': {
    id: 'kontext-lora',
    baseModel: 'KONTEXT',
    name: 'Kontext LoRA',
    status: 'active',
    minImages: 15,
    costPoints: 120000,
    defaults: { steps: 3000, learningRate: 1e-4, loraRank: 16, loraAlpha: 16 },
    trainingModes: ['style_subject', 'concept'],
    recipeUsesDefaults: true,
  },
});

export function getOffering(id: OfferingId): Offering {
  return OFFERINGS[id];
}

/**
 * An offering's default for one parameter, or `fallback` when the offering
 * states none. Throws when the stated default lies outside [min, max]: the
 * recipe's bounds and the platform's default must agree, and a test sees it
 * at import time rather than a user at submit time.
 */
export function offeringDefault(id: OfferingId, field: keyof OfferingDefaults, fallback: number, bounds: { min: number; max: number }): number {
  const v = OFFERINGS[id].defaults[field];
  if (v === undefined) return fallback;
  if (v < bounds.min || v > bounds.max) {
    throw new Error(`offering ${id}: default ${field}=${v} is outside the recipe's bounds ${bounds.min}..${bounds.max}; change one of them`);
  }
  return v;
}
