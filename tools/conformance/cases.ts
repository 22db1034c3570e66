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
  /** Edit models' concept mode: this image's control image, which the platform pairs with it by `sourceFilename`. */
  control?: string;
}

/**
 * One field override the conformance shim (tools/conformance/shim) makes in an
 * engine module right after it is imported, before any model is built.
 */
export type ShimOverride =
  | {
      module: string;
      /** Dotted path from the module to the object, `name[key]` for a dict entry; '' is the module itself. */
      object: string;
      /** Fields set on the object right after the module is imported. */
      set: Record<string, number | number[]>;
    }
  | {
      module: string;
      /** A callable the module calls by this name (e.g. a config class it imported). */
      object: string;
      /** Keyword arguments replaced in every call; a call without one of them stops the process. */
      call: Record<string, number>;
    };

/** The `<module>.<object>.<field>: <value>` lines the shim prints for an override, as the report records them. */
export function shimOverrideLines(o: ShimOverride): string[] {
  const where = o.object ? `${o.module}.${o.object}` : o.module;
  const changes: Record<string, number | number[]> = 'set' in o ? o.set : o.call;
  return Object.entries(changes).map(([field, value]) => `${where}.${field}: ${JSON.stringify(value)}`);
}

/**
 * A conformance-only change to what the engine builds, for a model too big
 * for the CPU host at full size: the shim folder is mounted read-only, put
 * first on PYTHONPATH and given these overrides; the base-model files hold
 * exactly the real keys, shapes and dtypes of the model so built. Recorded in
 * the report; never part of an image or of a production run.
 */
export interface EngineShim {
  overrides: ShimOverride[];
  /** What the full size would need, and what the shrunk model still proves. */
  why: string;
}

export interface ConformanceCase {
  recipeId: string;
  family: ComfyModelFamily;
  /** Job parameters, as the platform would send them (validated by the recipe). */
  parameters: Record<string, unknown>;
  dataset: DatasetItem[];
  /** Weight role whose file's keys the LoRA must resolve against under ComfyUI's rules. */
  baseRole: string;
  /**
   * A second case of the same recipe (another training mode): the case id is
   * `<recipeId>:<variant>`. Selecting the recipe id runs all its cases.
   */
  variant?: string;
  engineShim?: EngineShim;
}

/** The id a case is selected and reported by. */
export function caseId(c: Pick<ConformanceCase, 'recipeId' | 'variant'>): string {
  return c.variant ? `${c.recipeId}:${c.variant}` : c.recipeId;
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

/**
 * The same images, each with its control image (the scene before the edit:
 * a grey disc where the target's is yellow), as a Kontext concept dataset.
 */
export const PAIRED_IMAGE_ITEMS: DatasetItem[] = IMAGE_ITEMS.map((item, i) => ({ ...item, control: `ctl_${i + 1}.png` }));

/**
 * FLUX.1 Kontext [dev] at 1 double + 1 single block instead of 19 + 38: musubi
 * builds the DiT from flux_models.configs_flux_dev_context.params and loads it
 * strict=True, and the full 12 B model is 24 GB in bf16, more than the 24 GiB
 * host holds next to the run. Must match make_kontext_models.py DEPTH/DEPTH_SINGLE.
 */
export const KONTEXT_SHIM: EngineShim = {
  overrides: [{ module: 'musubi_tuner.flux.flux_models', object: 'configs_flux_dev_context.params', set: { depth: 1, depth_single_blocks: 1 } }],
  why: 'FLUX.1 Kontext DiT built with 1 double + 1 single block (of 19 + 38): the full model is 24 GB in bf16; every block present has the real keys, shapes and dtypes, loaded strictly',
};

/**
 * FLUX.2 [klein] base 4B at 1 double + 1 single block (of 5 + 20) and Qwen3 4B
 * at 4 decoder layers (of 36): musubi builds the DiT from
 * FLUX2_MODEL_INFO['klein-base-4b'].params and Qwen3 from a config string inside
 * zimage_utils.load_qwen3, both loaded strict=True, and the full files (7.75 GB
 * + 8 GB) exceed the suite's disk budget on this host. The Qwen3 embedder stacks
 * hidden states [9, 18, 27] of 36; at 4 layers [1, 2, 3], so the context stays
 * 3 x 2560 = 7680 wide, as the DiT's txt_in reads it. Must match
 * make_flux2_models.py DEPTH/DEPTH_SINGLE/QWEN3_LAYERS/QWEN3_OUTPUT_LAYERS.
 */
export const FLUX2_KLEIN_SHIM: EngineShim = {
  overrides: [
    { module: 'musubi_tuner.flux_2.flux2_utils', object: "FLUX2_MODEL_INFO['klein-base-4b'].params", set: { depth: 1, depth_single_blocks: 1 } },
    { module: 'musubi_tuner.flux_2.flux2_utils', object: '', set: { OUTPUT_LAYERS_QWEN3: [1, 2, 3] } },
    { module: 'musubi_tuner.zimage.zimage_utils', object: 'Qwen3Config', call: { num_hidden_layers: 4 } },
  ],
  why: 'FLUX.2 [klein] base 4B DiT built with 1 double + 1 single block (of 5 + 20), Qwen3 4B with 4 decoder layers (of 36) whose hidden states 1, 2, 3 stand for 9, 18, 27: the full files are 7.75 GB + 8 GB; every block and layer present, the embeddings and the AE have the real keys, shapes and dtypes, loaded strictly',
};

const KONTEXT_PARAMETERS = { resolution: 256, samplePreview: false, saveEveryNSteps: 0, loraRank: 8, loraAlpha: 8 };

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
  {
    // Concept: each image with its control image, paired by the platform's legacy `controlImages[].sourceFilename`.
    recipeId: 'kontext-lora',
    family: 'KONTEXT',
    parameters: { ...KONTEXT_PARAMETERS, trainingMode: 'concept' },
    dataset: PAIRED_IMAGE_ITEMS,
    baseRole: 'dit',
    engineShim: KONTEXT_SHIM,
  },
  {
    // Style/subject: images and captions; the worker gives every image the blank control musubi's Kontext trainer needs.
    recipeId: 'kontext-lora',
    variant: 'style_subject',
    family: 'KONTEXT',
    parameters: { ...KONTEXT_PARAMETERS, trainingMode: 'style_subject' },
    dataset: IMAGE_ITEMS,
    baseRole: 'dit',
    engineShim: KONTEXT_SHIM,
  },
  {
    // Operator-only (ADR 0009): one family = this recipe file plus this entry.
    recipeId: 'flux2-klein-lora',
    family: 'FLUX2',
    parameters: { resolution: 256, samplePreview: false, saveEveryNSteps: 0, loraRank: 8, loraAlpha: 8 },
    dataset: IMAGE_ITEMS,
    baseRole: 'dit',
    engineShim: FLUX2_KLEIN_SHIM,
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
