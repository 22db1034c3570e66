/**
 * prepare: the recipe, validated parameters, sanitized trigger word and
 * output name, the dataset (exists, is the owner's or shared, has the size
 * the recipe accepts) and the quote. Reads only: nothing is charged yet, so
 * every problem found here costs the user nothing.
 */
import { injectable } from 'tsyringe';
import { DatasetRepository } from '@stationthis/db';
import { recipeForModelType, sanitizeOutputName, sanitizeTriggerWord, summarizeDataset, type Recipe } from '@stationthis/recipes';
import { JobFailure } from '../failures';
import type { TrainingRequest } from '../training-request';
import type { Prepared } from './attempt';

@injectable()
export class PrepareStep {
  constructor(private readonly datasets: DatasetRepository) {}

  async run(request: TrainingRequest): Promise<Prepared> {
    let recipe: Recipe;
    try {
      recipe = recipeForModelType(request.modelType);
    } catch (e) {
      throw new JobFailure('user-input', `Unsupported model type "${request.modelType}": ${(e as Error).message}`);
    }
    const validated = recipe.validate(request.rawParameters);
    if (!validated.ok) {
      const issues = validated.issues.map((i) => `${i.path}: ${i.message}${i.allowed ? ` (allowed: ${i.allowed})` : ''}`);
      throw new JobFailure('user-input', `Invalid training parameters: ${issues.join('; ')}. Fix them and submit again.`);
    }
    let triggerWord: string;
    try {
      triggerWord = sanitizeTriggerWord(request.rawTriggerWord);
    } catch (e) {
      throw new JobFailure('user-input', `The trigger word "${request.rawTriggerWord.slice(0, 40)}" cannot be used: ${(e as Error).message}. Use letters, digits, "_" or "-".`);
    }
    let outputName: string;
    try {
      outputName = sanitizeOutputName(request.rawModelName ?? triggerWord);
    } catch {
      outputName = sanitizeOutputName(triggerWord);
    }

    if (!request.datasetId) throw new JobFailure('user-input', 'The job has no dataset. Choose a dataset and submit again.');
    const dataset = await this.datasets.findById(request.datasetId);
    if (!dataset) throw new JobFailure('dataset', `Dataset ${request.datasetId} does not exist (it may have been deleted). Choose another dataset.`);
    const datasetOwner = String(dataset.ownerAccountId ?? '');
    const visibility = String(dataset.visibility ?? 'private');
    const granted = Array.isArray(dataset.accessControl) && dataset.accessControl.some((id: unknown) => String(id) === request.ownerAccountId);
    if (datasetOwner !== request.ownerAccountId && visibility !== 'public' && visibility !== 'unlisted' && !granted) {
      throw new JobFailure('dataset', `Dataset "${dataset.name ?? request.datasetId}" is private to another account. Use your own dataset or ask its owner to share it.`);
    }
    const images: unknown[] = Array.isArray(dataset.images) ? dataset.images : [];
    const req = recipe.datasetRequirements;
    if (images.length < req.minImages || images.length > req.maxImages) {
      throw new JobFailure('dataset', `The dataset has ${images.length} images; ${recipe.displayName} needs ${req.minImages} to ${req.maxImages}. Add or remove images and retry.`);
    }
    const quote = recipe.quote(validated.value as never, summarizeDataset(images.map((url) => ({ url: String(url) }))));
    return { recipe, parameters: validated.value as Record<string, unknown>, triggerWord, outputName, dataset, quote };
  }
}
