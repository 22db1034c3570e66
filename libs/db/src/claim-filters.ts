import type { ClaimableModelTypes, TrainingEnvironment } from './training-job';

/** Priority first (higher wins), then FIFO; `_id` breaks ties deterministically. Served by the st_claim_sort index. */
export const CLAIM_SORT = { priority: -1, createdAt: 1, _id: 1 } as const;

/**
 * The claim's hardware scope: a worker takes only jobs whose model type it can
 * run, plus jobs of types no recipe knows (any worker fails those at once with
 * the list of supported types). `modelType` is read first, `baseModel` when it
 * is missing, as the worker's request mapper does; each type matches in upper,
 * lower and capitalised case (the platform writes upper case).
 */
export function modelTypeFilter(types: ClaimableModelTypes | undefined): Record<string, unknown> {
  if (!types) return {};
  const forms = (list: string[]) => [...new Set(list.flatMap((t) => [t.toUpperCase(), t.toLowerCase(), t.charAt(0).toUpperCase() + t.slice(1).toLowerCase()]))];
  const runnable = forms(types.runnable);
  const known = forms(types.known);
  const none = [null, ''];
  return {
    $or: [
      { modelType: { $in: runnable } },
      { modelType: { $exists: true, $nin: [...known, ...none] } },
      { modelType: { $in: none }, baseModel: { $in: runnable } },
      { modelType: { $in: none }, baseModel: { $nin: known } },
    ],
  };
}

/** The platform's environment scope (trainingDb.fetchQueued): production also matches missing/null. */
export function environmentFilter(environment: TrainingEnvironment): Record<string, unknown> {
  return environment === 'development'
    ? { environment: 'development' }
    : { environment: { $in: ['production', null] } };
}
