/**
 * @stationthis/recipes: pure training recipes (SDXL, FLUX.1, FLUX.1 Kontext,
 * WAN, FLUX.2 [klein] 4B behind an operator flag, CPU smoke).
 * No I/O: other platform apps import this to build forms and quote prices.
 * See README.md for the API and ADR 0003 for the engine choices.
 */
export * from './contract';
export { listRecipes, getRecipe, recipeForModelType, requiredWeights, modelTypesOf } from './registry';
export type { ListRecipesOptions, RegistryOptions } from './registry';
export { OFFERINGS, getOffering, offeringDefault } from './offerings';
export type { Offering, OfferingDefaults, OfferingId } from './offerings';
export {
  resolveControlPairs,
  conceptPromptOutputIds,
  promptOfRequestPayload,
  checkControlSizes,
  platformSourceFilename,
  controlFileNameFor,
  BLANK_CONTROL_PNG_BASE64,
  CONTROL_ASPECT_TOLERANCE,
} from './control-pairs';
export type { ControlPairing, ControlPairOptions, ControlImageSource, ControlPairProblem, ControlPairProblemKind, ControlPairResult, ControlDatasetDoc, ImageSize } from './control-pairs';
export { sanitizeTriggerWord, sanitizeOutputName, TRIGGER_WORD_PATTERN, OUTPUT_NAME_PATTERN, JOB_ID_PATTERN } from './sanitize';
export { parseSafetensorsHeader, safetensorsHeaderLength, MAX_SAFETENSORS_HEADER_BYTES } from './safetensors';
export { comfyModelKeys, comfyLoraKeyMap, resolveComfyLoraKeys } from './comfy-lora-keys';
export type { ComfyModelFamily, LoraKeyResolution } from './comfy-lora-keys';
export { trainingCaption, captionHasTrigger, isVideoItem, summarizeDataset, VIDEO_EXTENSIONS } from './dataset';
export { datasetSizeCheck, type DatasetSizeCheck } from './dataset-size';
export {
  IMAGE_MANIFEST_SCHEMA_VERSION,
  findManifestEntry,
  imageManifestKey,
  parseImageManifest,
  parseImageManifestText,
  serializeImageManifest,
} from './image-manifest';
export type { ImageManifest, ImageManifestEntry } from './image-manifest';
export {
  SAVE_STEP_DIGITS,
  SAMPLE_PROMPT_MAX_LENGTH,
  SAMPLE_PROMPTS_MAX,
  formatSaveStep,
  savePlanSteps,
  checkpointFileAt,
  stateDirAt,
  checkpointStepOf,
  resumeStepOf,
  sampleStepOf,
  jobStepOf,
  defaultSamplePrompts,
  sanitizeSamplePrompt,
  samplePromptsFor,
  assertResumeSafe,
} from './saves';
export { applyArgvSubstitutions, testRunWeights } from './test-run';
export type { TestRunContext } from './test-run';
export { jobParametersFromPlatformDoc, PLATFORM_PARAMETER_FIELDS } from './platform';
export { PROGRESS_PARSER, KohyaProgressParser, classifyErrorLine, ERROR_SIGNATURES } from './progress';
export type { TqdmLine } from './progress';
export { USD_PER_POINT, PLATFORM_FEE, SAFETY_FACTOR, GPU_USD_PER_HOUR, gpuClassFor, usdToPoints, pointsToUsd, usedPoints } from './pricing';
export { sdxlRecipe } from './recipes/sdxl';
export type { SdxlParameters } from './recipes/sdxl';
export { fluxRecipe } from './recipes/flux';
export type { FluxParameters } from './recipes/flux';
export { kontextRecipe, KONTEXT_TRAINING_MODES } from './recipes/kontext';
export type { KontextParameters, KontextTrainingMode } from './recipes/kontext';
export { flux2KleinRecipe } from './recipes/flux2-klein';
export type { Flux2KleinParameters } from './recipes/flux2-klein';
export { wanRecipe } from './recipes/wan';
export type { WanParameters } from './recipes/wan';
export { smokeRecipe } from './recipes/smoke';
export type { SmokeParameters } from './recipes/smoke';
export { SMOKE_TRAINER_PY, SMOKE_TRAINER_SHA256 } from './smoke/smoke-trainer.generated';

/** Package name, kept for the workspace skeleton's smoke test. */
export const LIB_NAME = '@stationthis/recipes';
