/**
 * Rendering shared by the two kohya sd-scripts recipes (SDXL and FLUX.1):
 * the dataset TOML, the sample-prompt file, the common training flags and the
 * output checks.
 */
import type { ExpectedOutputs, OutputCheckResult, RenderInput, RenderedFile, SafetensorsHeader, SavePlan } from '../contract';
import { CONTAINER_PATHS } from '../contract';
import { checkLoraHeader } from '../safetensors';
import { samplePromptsFor } from '../saves';
import { accelerateSavePlan, cosineResumeFlags, resumeFlags, saveStateFlags, stepsToTrain } from './engine-saves';
import { toToml, type TomlTable } from '../util/toml';
import { jobPath, num } from './common';

/** Parameters both kohya recipes share (the platform's trainingJobs fields plus ours). */
export interface KohyaCommonParams {
  steps: number;
  learningRate: number;
  batchSize: number;
  resolution: number;
  loraRank: number;
  loraAlpha: number;
  loraDropout: number;
  optimizer: 'AdamW8bit' | 'AdamW' | 'Adafactor';
  lrScheduler: 'constant' | 'constant_with_warmup' | 'cosine';
  lrWarmupSteps: number;
  numRepeats: number;
  seed: number;
  saveEveryNSteps: number;
  samplePreview: boolean;
  savePrecision: 'fp16' | 'bf16' | 'float';
}

export const DATASET_TOML = 'dataset.toml';
export const SAMPLE_PROMPTS = 'sample_prompts.txt';

/**
 * Dataset config (docs/config_README-en.md): one DreamBooth-style subset per
 * resolution over the read-only dataset mount. Captions are `<stem>.txt`;
 * `class_tokens` is the caption for images that have none. Latents and
 * text-encoder outputs are cached in memory (not `_to_disk`), because the disk
 * cache is written next to the images and the dataset mount is read-only.
 */
export function kohyaDatasetToml(p: KohyaCommonParams, triggerWord: string, resolutions: number[], bucketStep: number): string {
  const maxReso = Math.max(...resolutions);
  const table: TomlTable = {
    general: {
      caption_extension: '.txt',
      shuffle_caption: false,
      keep_tokens: 0,
      enable_bucket: true,
      bucket_no_upscale: true,
      bucket_reso_steps: bucketStep,
      min_bucket_reso: Math.min(256, Math.min(...resolutions)),
      max_bucket_reso: maxReso,
    },
    datasets: resolutions.map((r) => ({
      resolution: r,
      batch_size: p.batchSize,
      subsets: [
        {
          image_dir: CONTAINER_PATHS.dataset,
          class_tokens: triggerWord,
          num_repeats: p.numRepeats,
        },
      ],
    })),
  };
  return toToml(table);
}

/**
 * kohya sample-prompt file (train_util.line_to_prompt_dict): one prompt per
 * line, options after ` --`: `--w/--h` size, `--d` seed (fixed, so every save
 * samples the same noise), `--s` denoising steps. The prompts are the job's
 * (RenderInput.samplePrompts, sanitised: no ` --` of their own) or the defaults.
 */
export function kohyaSamplePrompts(input: { samplePrompts?: string[]; triggerWord: string }, resolution: number, seed: number, extra: string[] = []): string {
  return samplePromptsFor(input).map((prompt) => [prompt, '--w', String(resolution), '--h', String(resolution), '--d', String(seed), '--s', '20', ...extra].join(' ')).join('\n') + '\n';
}

/** The saves of a kohya job (engine-saves.ts): checkpoint, state and, with samplePreview, PNG samples at each save. */
export function kohyaSavePlan(input: RenderInput<KohyaCommonParams>): SavePlan | undefined {
  const p = input.parameters;
  return accelerateSavePlan(input.outputName, p.steps, p.saveEveryNSteps, p.samplePreview ? 'kohya-png' : undefined);
}

/** Flags both kohya training scripts take, in a stable order (golden files depend on it). */
export function kohyaCommonFlags(input: RenderInput<KohyaCommonParams>, networkModule: string): string[] {
  const p = input.parameters;
  const argv: string[] = [
    '--dataset_config',
    jobPath(DATASET_TOML),
    '--output_dir',
    CONTAINER_PATHS.output,
    '--output_name',
    input.outputName,
    '--save_model_as',
    'safetensors',
    '--network_module',
    networkModule,
    '--network_dim',
    String(p.loraRank),
    '--network_alpha',
    num(p.loraAlpha),
  ];
  if (p.loraDropout > 0) argv.push('--network_dropout', num(p.loraDropout));
  argv.push('--learning_rate', num(p.learningRate), '--unet_lr', num(p.learningRate), '--optimizer_type', p.optimizer);
  if (p.optimizer === 'Adafactor') {
    // Fixed LR Adafactor, as in the sd-scripts low-VRAM examples.
    argv.push('--optimizer_args', 'relative_step=False', 'scale_parameter=False', 'warmup_init=False');
  }
  const saves = kohyaSavePlan(input);
  const trainSteps = stepsToTrain(p.steps, input.resume);
  argv.push('--lr_scheduler', p.lrScheduler);
  if (p.lrWarmupSteps > 0) argv.push('--lr_warmup_steps', String(p.lrWarmupSteps));
  // Resumed: the schedule was built for the remaining steps; bend the cosine back onto the job's (engine-saves.ts).
  if (input.resume && p.lrScheduler === 'cosine') argv.push(...cosineResumeFlags(p.steps, trainSteps, p.lrWarmupSteps));
  argv.push('--max_train_steps', String(trainSteps));
  if (saves) argv.push('--save_every_n_steps', String(saves.everySteps), ...saveStateFlags(saves.everySteps));
  // The count restarts at 0 on resume: --initial_step 0 overrides the state's train_state.json step (engine-saves.ts).
  if (input.resume) argv.push(...resumeFlags(input.resume), '--initial_step', '0');
  argv.push(
    '--mixed_precision',
    'bf16',
    '--save_precision',
    p.savePrecision,
    '--gradient_checkpointing',
    '--cache_latents',
    '--cache_text_encoder_outputs',
    '--network_train_unet_only',
    '--sdpa',
    '--max_data_loader_n_workers',
    '2',
    '--persistent_data_loader_workers',
    '--seed',
    String(p.seed),
    '--console_log_simple',
    '--metadata_title',
    input.outputName,
  );
  if (p.samplePreview) {
    // With saves: a sample set at each save (sampled just before it) and at the end when steps is a multiple; else at the end only.
    argv.push('--sample_prompts', jobPath(SAMPLE_PROMPTS), '--sample_every_n_steps', String(saves ? saves.everySteps : trainSteps));
  }
  return argv;
}

export function kohyaFiles(datasetToml: string, samplePrompts: string | undefined): RenderedFile[] {
  const files: RenderedFile[] = [{ path: DATASET_TOML, content: datasetToml }];
  if (samplePrompts !== undefined) files.push({ path: SAMPLE_PROMPTS, content: samplePrompts });
  return files;
}

export function kohyaOutputs(outputName: string, samples: boolean, saves: SavePlan | undefined): ExpectedOutputs {
  return { lora: `${outputName}.safetensors`, ...(samples ? { samplesDir: 'sample' } : {}), ...(saves ? { saves } : {}) };
}

const KOHYA_DTYPES = ['F16', 'BF16', 'F32'];

/** Checks for a kohya LoRA whose U-Net/DiT keys must match `modulePattern` (text encoders not trained). */
export function checkKohyaLora(header: SafetensorsHeader, modulePattern: RegExp, description: string): OutputCheckResult {
  const dim = Number(header.metadata['ss_network_dim']);
  const result = checkLoraHeader(header, {
    keyPattern: modulePattern,
    keyDescription: description,
    dtypes: KOHYA_DTYPES,
    style: 'kohya',
    ...(Number.isInteger(dim) && dim > 0 ? { rank: dim } : {}),
  });
  const te = Object.keys(header.tensors).filter((k) => /^lora_te\d?_/.test(k));
  if (te.length > 0) {
    result.problems.push(
      `${te.length} text-encoder key(s) (lora_te*) found although only the U-Net/DiT is trained; LoraLoaderModelOnly would report them as not loaded`,
    );
    result.ok = false;
  }
  return result;
}
