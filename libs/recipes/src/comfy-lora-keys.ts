/**
 * Which tensors of a LoRA file ComfyUI would load onto a base model, following
 * ComfyUI's own rules (comfyanonymous/ComfyUI, comfy/lora.py):
 *
 * 1. The model's state-dict keys: the checkpoint's U-Net/DiT keys under
 *    `diffusion_model.` (a single-file SDXL checkpoint stores them under
 *    `model.diffusion_model.`; FLUX and WAN diffusion-model files store them
 *    bare, and ComfyUI detects the prefix: `unet_prefix_from_state_dict`).
 * 2. `model_lora_keys_unet`: for every `diffusion_model.<path>.weight` the
 *    kohya name `lora_unet_<path with . replaced by _>` and the generic name
 *    `diffusion_model.<path>` map to that weight. `model_lora_keys_clip`: for
 *    SDXL, `lora_te1_<path>` (CLIP-L) and `lora_te2_<path>` (CLIP-G, in its
 *    Hugging Face layout) map to the text-encoder weights.
 * 3. `load_lora`: per mapped name it consumes `<name>.alpha` and, for a plain
 *    LoRA, `<name>.lora_up.weight`, `<name>.lora_down.weight` and
 *    `<name>.lora_mid.weight` (also `dora_scale`). Everything else stays
 *    unconsumed, and ComfyUI only logs "lora key not loaded": the LoRA then
 *    silently does less than it should. That is why the conformance suite
 *    requires zero unmatched keys.
 *
 * Covered: the kohya-style key names our engines write (sd-scripts
 * networks/lora.py and lora_flux.py, musubi networks/lora_wan.py). Not
 * covered: ComfyUI's diffusers/PEFT/LyCORIS aliases (lora_A/lora_B,
 * `transformer.*`, LoKr/LoHa tensors), which none of our engines emits.
 * Pure: the caller passes the key lists (e.g. from safetensors headers).
 */

/**
 * KONTEXT: FLUX.1 Kontext [dev]'s DiT has FLUX.1's keys (double_blocks,
 * single_blocks...) in a bare diffusion-model file, and ComfyUI detects it as
 * a FLUX model: the FLUX rules apply unchanged. FLUX2: FLUX.2's bare DiT file,
 * the same generic rules (lora_unet_<path>, diffusion_model.<path>).
 */
export type ComfyModelFamily = 'SDXL' | 'FLUX' | 'KONTEXT' | 'FLUX2' | 'WAN';

export interface LoraKeyResolution {
  /** LoRA tensor key -> the base-model weight (ComfyUI state-dict key) it modifies. */
  matched: { loraKey: string; modelKey: string }[];
  unmatched: { loraKey: string; reason: string }[];
}

/** The tensor suffixes load_lora consumes for a mapped name (plain LoRA, with optional alpha/mid/DoRA). */
const LORA_SUFFIXES = ['.lora_up.weight', '.lora_down.weight', '.lora_mid.weight', '.alpha', '.dora_scale'] as const;

/**
 * The state-dict keys ComfyUI's model has for a base-model file: the
 * diffusion model under `diffusion_model.`, and for an SDXL checkpoint the
 * text encoders under `clip_l.transformer.` / `clip_g.transformer.` (CLIP-G
 * converted from OpenCLIP to the Hugging Face layout, as ComfyUI's SDXL
 * clip state-dict conversion does).
 */
export function comfyModelKeys(family: ComfyModelFamily, checkpointKeys: string[]): string[] {
  const out: string[] = [];
  const unetPrefix = detectUnetPrefix(checkpointKeys);
  for (const k of checkpointKeys) {
    if (unetPrefix !== null && k.startsWith(unetPrefix) && isDiffusionModelKey(family, k.slice(unetPrefix.length))) {
      out.push(`diffusion_model.${k.slice(unetPrefix.length)}`);
    }
  }
  if (family === 'SDXL') {
    for (const k of checkpointKeys) {
      const te1 = 'conditioner.embedders.0.transformer.';
      if (k.startsWith(te1)) out.push(`clip_l.transformer.${k.slice(te1.length)}`);
      const te2 = 'conditioner.embedders.1.model.';
      if (k.startsWith(te2)) out.push(...openClipToHf(k.slice(te2.length)).map((x) => `clip_g.transformer.${x}`));
    }
  }
  return out;
}

/** model_lora_keys_unet + model_lora_keys_clip: LoRA name -> model weight key. */
export function comfyLoraKeyMap(family: ComfyModelFamily, checkpointKeys: string[]): Map<string, string> {
  const map = new Map<string, string>();
  for (const k of comfyModelKeys(family, checkpointKeys)) {
    if (k.startsWith('diffusion_model.')) {
      if (!k.endsWith('.weight')) continue;
      const path = k.slice('diffusion_model.'.length, -'.weight'.length);
      map.set(`lora_unet_${path.replace(/\./g, '_')}`, k);
      map.set(`diffusion_model.${path}`, k);
    } else if (k.startsWith('clip_l.transformer.text_model.encoder.layers.') && k.endsWith('.weight')) {
      // model_lora_keys_clip: "lora_te1_text_model_encoder_layers_{b}_{c}" for the attention and MLP projections.
      const path = k.slice('clip_l.transformer.'.length, -'.weight'.length);
      map.set(`lora_te1_${path.replace(/\./g, '_')}`, k);
    } else if (k.startsWith('clip_g.transformer.text_model.encoder.layers.') && k.endsWith('.weight')) {
      const path = k.slice('clip_g.transformer.'.length, -'.weight'.length);
      map.set(`lora_te2_${path.replace(/\./g, '_')}`, k);
    }
  }
  return map;
}

/** What ComfyUI's load_lora would consume from `loraKeys`, and what it would skip. */
export function resolveComfyLoraKeys(family: ComfyModelFamily, checkpointKeys: string[], loraKeys: string[]): LoraKeyResolution {
  const map = comfyLoraKeyMap(family, checkpointKeys);
  const present = new Set(loraKeys);
  const matched: LoraKeyResolution['matched'] = [];
  const unmatched: LoraKeyResolution['unmatched'] = [];
  for (const key of loraKeys) {
    const suffix = LORA_SUFFIXES.find((s) => key.endsWith(s));
    if (!suffix) {
      unmatched.push({ loraKey: key, reason: `not a tensor ComfyUI's LoRA loader reads (expected <module>${LORA_SUFFIXES.join(' | ')})` });
      continue;
    }
    const name = key.slice(0, -suffix.length);
    const modelKey = map.get(name);
    if (!modelKey) {
      unmatched.push({ loraKey: key, reason: whyUnmapped(family, name, map) });
      continue;
    }
    // load_lora consumes a module's tensors only when its up (and down) weights are present.
    if (suffix !== '.alpha' && (!present.has(`${name}.lora_up.weight`) || !present.has(`${name}.lora_down.weight`))) {
      unmatched.push({ loraKey: key, reason: `module ${name} lacks its ${present.has(`${name}.lora_up.weight`) ? 'lora_down' : 'lora_up'} weight, so ComfyUI loads none of its tensors` });
      continue;
    }
    matched.push({ loraKey: key, modelKey });
  }
  return { matched, unmatched };
}

function detectUnetPrefix(keys: string[]): string | null {
  // ComfyUI's unet_prefix_from_state_dict: a full checkpoint keeps the diffusion model under
  // model.diffusion_model.; a diffusion-model file (FLUX, WAN) has it at the top level.
  if (keys.some((k) => k.startsWith('model.diffusion_model.'))) return 'model.diffusion_model.';
  if (keys.some((k) => k.startsWith('diffusion_model.'))) return 'diffusion_model.';
  return '';
}

/** In a bare diffusion-model file every key is the model's; a full checkpoint also holds VAE and text encoders. */
function isDiffusionModelKey(family: ComfyModelFamily, key: string): boolean {
  if (family === 'SDXL') return true;
  return !key.startsWith('first_stage_model.') && !key.startsWith('conditioner.') && !key.startsWith('text_encoders.');
}

/** OpenCLIP (SGM checkpoint) names of CLIP-G -> Hugging Face names, as ComfyUI converts them on load. */
function openClipToHf(k: string): string[] {
  let m = /^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$/.exec(k);
  if (m) return ['q_proj', 'k_proj', 'v_proj'].map((p) => `text_model.encoder.layers.${m![1]}.self_attn.${p}.${m![2]}`);
  m = /^transformer\.resblocks\.(\d+)\.(.+)$/.exec(k);
  if (m) {
    const rest = m[2].replace(/^attn\.out_proj/, 'self_attn.out_proj').replace(/^ln_1/, 'layer_norm1').replace(/^ln_2/, 'layer_norm2').replace(/^mlp\.c_fc/, 'mlp.fc1').replace(/^mlp\.c_proj/, 'mlp.fc2');
    return [`text_model.encoder.layers.${m[1]}.${rest}`];
  }
  if (k === 'token_embedding.weight') return ['text_model.embeddings.token_embedding.weight'];
  if (k === 'positional_embedding') return ['text_model.embeddings.position_embedding.weight'];
  if (k.startsWith('ln_final.')) return [`text_model.final_layer_norm.${k.slice('ln_final.'.length)}`];
  if (k === 'text_projection') return ['text_projection.weight'];
  return [];
}

function whyUnmapped(family: ComfyModelFamily, name: string, map: Map<string, string>): string {
  if (/^lora_te\d?_/.test(name)) {
    return family === 'SDXL'
      ? `text-encoder module ${name} has no weight in the checkpoint's text encoders`
      : `text-encoder module ${name}: the ${family} base file holds no text encoder, so ComfyUI applies this key to nothing`;
  }
  if (name.startsWith('lora_unet_')) {
    // The nearest mapped module with the same block prefix helps spot a renamed layer or a block beyond the model's depth.
    const block = /^lora_unet_([a-z_]+?_\d+)_/.exec(name)?.[1];
    const sameBlock = block ? [...map.keys()].filter((k) => k.startsWith(`lora_unet_${block}_`)).length : 0;
    return block && sameBlock === 0
      ? `module ${name}: the base model has no block ${block} (a block index beyond its depth, or another architecture)`
      : `module ${name} matches no weight of the base model's diffusion model (ComfyUI would skip it)`;
  }
  return `module ${name} is not a kohya lora_unet_/lora_te*_ name or a diffusion_model.* key`;
}
