/**
 * The conformance cases: one per production recipe, with the parameters a
 * platform user could send (no hidden switches), the dataset the platform
 * would send, and the CPU substitutions the engines need on a host without a
 * GPU. Everything else about the run is the recipe's rendered argv, unchanged.
 */
import type { ComfyModelFamily } from '@stationthis/recipes';

/** One argv change a CPU host needs, with the reason it is needed (printed in the report). */
export interface ArgvSubstitution {
  flag: string;
  /** replace: set the flag's value; drop: remove the flag (and its value if it takes one). */
  action: 'replace' | 'drop';
  value?: string;
  /** Number of values the flag takes (drop removes them too). @default 0 for drop, 1 for replace */
  arity?: number;
  reason: string;
}

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
  substitutions: ArgvSubstitution[];
  /** Base-model files a CPU run needs in another dtype than production (same keys), with the reason. */
  modelOverrides?: { role: string; fileName: string; reason: string }[];
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

/** Two optimizer steps, whatever the schema's production minimum: the run proves the path, not the quality. */
const TWO_STEPS: ArgvSubstitution = { flag: '--max_train_steps', action: 'replace', value: '2', reason: 'two optimizer steps (the schema minimum is 100 for production jobs)' };

export const CASES: ConformanceCase[] = [
  {
    recipeId: 'sdxl-lora',
    family: 'SDXL',
    parameters: { resolution: 512, samplePreview: false, saveEveryNSteps: 0, loraRank: 8, loraAlpha: 8 },
    dataset: IMAGE_ITEMS,
    baseRole: 'checkpoint',
    substitutions: [TWO_STEPS],
  },
  {
    recipeId: 'flux-lora',
    family: 'FLUX',
    parameters: { resolution: 512, multiResolution: false, samplePreview: false, saveEveryNSteps: 0, loraRank: 8, loraAlpha: 8 },
    dataset: IMAGE_ITEMS,
    baseRole: 'dit',
    substitutions: [TWO_STEPS],
  },
  {
    recipeId: 'wan-lora',
    family: 'WAN',
    parameters: { task: 't2v-1.3B', resolution: 256, videoResolution: 256, frameCount: 5, clipsPerVideo: 2, saveEveryNSteps: 0, loraRank: 8, loraAlpha: 8 },
    dataset: [...IMAGE_ITEMS, ...VIDEO_ITEMS],
    baseRole: 'dit_t2v_1_3b',
    substitutions: [
      TWO_STEPS,
      {
        flag: '--fp8_base',
        action: 'drop',
        reason:
          "CPU only: musubi computes WAN's time embedding under autocast(float32), which CUDA honours and CPU autocast does not support (torch: 'In CPU autocast, but the target dtype is not supported'), so F.linear meets Float and Float8_e4m3fn",
      },
    ],
    modelOverrides: [
      {
        role: 'dit_t2v_1_3b',
        fileName: 'wan2.1_t2v_1.3B_fp32.safetensors',
        reason: 'CPU only: the same DiT keys in fp32, for the same autocast(float32) reason (bf16 weights meet Float activations); musubi trains in the file\'s dtype',
      },
    ],
  },
];

/** Apply the substitutions to one step's argv; flags a step does not have are left alone. */
export function substitute(argv: string[], subs: ArgvSubstitution[]): { argv: string[]; applied: string[] } {
  let out = [...argv];
  const applied: string[] = [];
  for (const s of subs) {
    const i = out.indexOf(s.flag);
    if (i < 0) continue;
    if (s.action === 'replace') {
      const arity = s.arity ?? 1;
      out = [...out.slice(0, i + 1), s.value ?? '', ...out.slice(i + 1 + arity)];
      applied.push(`${s.flag} ${argv[argv.indexOf(s.flag) + 1]} -> ${s.value} (${s.reason})`);
    } else {
      const arity = s.arity ?? 0;
      out = [...out.slice(0, i), ...out.slice(i + 1 + arity)];
      applied.push(`dropped ${s.flag} (${s.reason})`);
    }
  }
  return { argv: out, applied };
}
