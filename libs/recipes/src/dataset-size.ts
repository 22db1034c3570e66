/**
 * How many items a recipe trains on: refuse only what the engine cannot
 * train on, warn below what works well.
 *
 * The engines' real minimum is one item: sd-scripts stops with "No data
 * found" on an empty dataset group (train_network.py, `len(train_dataset_group)
 * == 0`, at the pinned commit 48d368fa) and musubi-tuner raises "No training
 * items found in the dataset" (training/trainer_base.py, `num_train_items ==
 * 0`, at 30c658c4); neither has a larger minimum or any maximum, and a
 * batch larger than the dataset simply yields smaller batches. The platform
 * checks no count at all (its `trainingOfferings.js` lists 20 images as the
 * minimum for SDXL, FLUX and WAN, but nothing reads it), so 20 is what we
 * recommend, and fewer only warns. The maximum is our download limit, not an
 * engine's.
 */
import type { DatasetRequirements, DatasetSummary } from './contract';

export interface DatasetSizeCheck {
  /** Set when the engine cannot train on this dataset (or we will not download it): refuse before any charge. */
  error?: string;
  /** Lines for the job log: the job runs. */
  warnings: string[];
}

export function datasetSizeCheck(
  recipe: { displayName: string; datasetRequirements: Pick<DatasetRequirements, 'minImages' | 'maxImages' | 'recommendedImages' | 'allowVideo'> },
  dataset: DatasetSummary,
): DatasetSizeCheck {
  const req = recipe.datasetRequirements;
  const videos = req.allowVideo ? Math.max(0, dataset.videoCount ?? 0) : 0;
  const items = Math.max(0, dataset.imageCount) + videos;
  const what = req.allowVideo ? 'images and videos' : 'images';
  if (items < req.minImages) {
    return { error: `The dataset has ${items} ${what}; ${recipe.displayName} needs at least ${req.minImages}. Add ${what} and submit again.`, warnings: [] };
  }
  if (items > req.maxImages) {
    return { error: `The dataset has ${items} ${what}; the worker downloads at most ${req.maxImages}. Split it or remove some and submit again.`, warnings: [] };
  }
  const warnings: string[] = [];
  if (req.recommendedImages !== undefined && items < req.recommendedImages) {
    warnings.push(`The dataset has ${items} ${what}; ${recipe.displayName} usually needs about ${req.recommendedImages} for a LoRA that generalises. Training goes ahead.`);
  }
  return { warnings };
}
