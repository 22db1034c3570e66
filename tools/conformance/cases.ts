/**
 * The conformance cases: one per production recipe, with the parameters a
 * platform user could send (no hidden switches), the dataset the platform
 * would send. The CPU changes come from the recipe's own `testRun` profile
 * (libs/recipes), the same one the worker applies to CPU test runs; everything
 * else about the run is the recipe's rendered argv, unchanged.
 */
import type { ComfyModelFamily } from '@stationthis/recipes';

export interface DatasetItem {
  file: string;
  /** The platform's caption ('' = uncaptioned). */
  caption: string;
}

export interface ConformanceCase {
  recipeId: string;
  family: ComfyModelFamily;
  /** Job parameters, as the platform would send them (validated by the recipe). */
  parameters: Record<string, unknown>;
  dataset: DatasetItem[];
  /** Weight role whose file's keys the LoRA must resolve against under ComfyUI's rules. */
  baseRole: string;
}

export const TRIGGER = 'sks_conform';

/**
 * Three captioned images that name the trigger word, one that does not, and
 * one with no caption at all: the shapes a platform dataset arrives in.
 */
export const IMAGE_ITEMS: DatasetItem[] = [
  { file: 'img_1.png', caption: `a photo of ${TRIGGER}, a yellow disc on blue` },
  { file: 'img_2.png', caption: `${TRIGGER} standing on a dark bar` },
  { file: 'img_3.png', caption: `close-up of ${TRIGGER}` },
  { file: 'img_4.png', caption: 'a yellow disc, no trigger word here' },
  { file: 'img_5.png', caption: '' },
];

/** Two 3-second clips at 30 fps: one captioned, one not. */
export const VIDEO_ITEMS: DatasetItem[] = [
  { file: 'clip_1.mp4', caption: `${TRIGGER} sliding to the right` },
  { file: 'clip_2.mp4', caption: '' },
];

export const CASES: ConformanceCase[] = [
  {
    recipeId: 'sdxl-lora',
    family: 'SDXL',
    parameters: { resolution: 512, samplePreview: false, saveEveryNSteps: 0, loraRank: 8, loraAlpha: 8 },
    dataset: IMAGE_ITEMS,
    baseRole: 'checkpoint',
  },
  {
    recipeId: 'flux-lora',
    family: 'FLUX',
    parameters: { resolution: 512, multiResolution: false, samplePreview: false, saveEveryNSteps: 0, loraRank: 8, loraAlpha: 8 },
    dataset: IMAGE_ITEMS,
    baseRole: 'dit',
  },
  {
    recipeId: 'wan-lora',
    family: 'WAN',
    parameters: { task: 't2v-1.3B', resolution: 256, videoResolution: 256, frameCount: 5, clipsPerVideo: 2, saveEveryNSteps: 0, loraRank: 8, loraAlpha: 8 },
    dataset: [...IMAGE_ITEMS, ...VIDEO_ITEMS],
    baseRole: 'dit_t2v_1_3b',
  },
];

/**
 * Resume cases: the plain case's run with a save (checkpoint, engine state) at
 * step 1 of the test run's 2, then a second run, as a re-claimed attempt does
 * it: a fresh output folder holding only the step-1 state, the job rendered
 * with `resume`, every step run again. Selected by `<recipe-id>:resume`.
 */
export const RESUME_SUFFIX = ':resume';

export const RESUME_CASES: ConformanceCase[] = CASES.filter((c) => c.recipeId === 'sdxl-lora' || c.recipeId === 'wan-lora').map((c) => ({
  ...c,
  parameters: { ...c.parameters, saveEveryNSteps: 1 },
}));
