import { comfyModelKeys, resolveComfyLoraKeys } from '../comfy-lora-keys';

const lora = (m: string) => [`${m}.lora_down.weight`, `${m}.lora_up.weight`, `${m}.alpha`];

describe('ComfyUI LoRA key resolution', () => {
  const sdxl = [
    'model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight',
    'model.diffusion_model.input_blocks.4.1.proj_in.weight',
    'model.diffusion_model.input_blocks.4.1.proj_in.bias',
    'model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.weight',
    'conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight',
    'conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight',
    'conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight',
    'first_stage_model.encoder.conv_in.weight',
  ];

  it('maps an SDXL checkpoint to ComfyUI model keys (diffusion model and both text encoders)', () => {
    const keys = comfyModelKeys('SDXL', sdxl);
    expect(keys).toContain('diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight');
    expect(keys).toContain('clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight');
    expect(keys).toContain('clip_g.transformer.text_model.encoder.layers.0.self_attn.v_proj.weight');
    expect(keys).toContain('clip_g.transformer.text_model.encoder.layers.0.mlp.fc1.weight');
    expect(keys.some((k) => k.includes('first_stage_model'))).toBe(false);
  });

  it('resolves kohya SDXL U-Net and text-encoder keys', () => {
    const keys = [
      ...lora('lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q'),
      ...lora('lora_unet_input_blocks_4_1_proj_in'),
      ...lora('lora_unet_middle_block_1_transformer_blocks_0_ff_net_0_proj'),
      ...lora('lora_te1_text_model_encoder_layers_0_self_attn_q_proj'),
      ...lora('lora_te2_text_model_encoder_layers_0_mlp_fc1'),
    ];
    const r = resolveComfyLoraKeys('SDXL', sdxl, keys);
    expect(r.unmatched).toEqual([]);
    expect(r.matched).toHaveLength(keys.length);
    expect(r.matched.find((m) => m.loraKey.startsWith('lora_unet_input_blocks_4_1_proj_in.'))?.modelKey).toBe('diffusion_model.input_blocks.4.1.proj_in.weight');
  });

  const flux = ['double_blocks.0.img_attn.qkv.weight', 'double_blocks.0.img_attn.qkv.bias', 'single_blocks.0.linear1.weight', 'guidance_in.in_layer.weight'];

  it('resolves kohya FLUX keys against a bare BFL file and names what cannot load', () => {
    const good = [...lora('lora_unet_double_blocks_0_img_attn_qkv'), ...lora('lora_unet_single_blocks_0_linear1')];
    const misspelt = 'lora_unet_double_blocks_0_img_atn_qkv.lora_up.weight';
    const beyond = 'lora_unet_double_blocks_7_img_attn_qkv.lora_up.weight';
    const stray = 'lora_unet_single_blocks_0_linear1.lora_up.bias';
    const te = 'lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight';
    const r = resolveComfyLoraKeys('FLUX', flux, [...good, misspelt, beyond, stray, te]);
    expect(r.matched.map((m) => m.loraKey).sort()).toEqual([...good].sort());
    const reason = (k: string) => r.unmatched.find((u) => u.loraKey === k)?.reason ?? '';
    expect(reason(misspelt)).toContain('matches no weight');
    expect(reason(beyond)).toContain('no block double_blocks_7');
    expect(reason(stray)).toContain('not a tensor');
    expect(reason(te)).toContain('holds no text encoder');
  });

  it('strips the model.diffusion_model. prefix of a FLUX file saved with it', () => {
    const r = resolveComfyLoraKeys('FLUX', flux.map((k) => `model.diffusion_model.${k}`), lora('lora_unet_double_blocks_0_img_attn_qkv'));
    expect(r.unmatched).toEqual([]);
  });

  it('resolves musubi Kontext keys under the FLUX rules (Kontext DiT keys are FLUX.1 keys)', () => {
    // flux1-kontext-dev.safetensors: BFL names, no prefix; the LoRA: musubi networks.lora_flux.
    const kontext = [...flux, 'single_blocks.37.linear2.weight'];
    const keys = [...lora('lora_unet_double_blocks_0_img_attn_qkv'), ...lora('lora_unet_single_blocks_37_linear2')];
    const r = resolveComfyLoraKeys('KONTEXT', kontext, keys);
    expect(r.unmatched).toEqual([]);
    expect(r.matched).toEqual(resolveComfyLoraKeys('FLUX', kontext, keys).matched);
    expect(resolveComfyLoraKeys('KONTEXT', kontext, lora('lora_unet_blocks_0_self_attn_q')).unmatched).toHaveLength(3);
  });

  it('resolves musubi WAN keys, and refuses a module whose up weight is missing', () => {
    const wan = ['blocks.0.self_attn.q.weight', 'blocks.0.ffn.0.weight', 'blocks.0.cross_attn.k.weight', 'head.head.weight'];
    const ok = [...lora('lora_unet_blocks_0_self_attn_q'), ...lora('lora_unet_blocks_0_ffn_0')];
    const half = ['lora_unet_blocks_0_cross_attn_k.lora_down.weight'];
    const r = resolveComfyLoraKeys('WAN', wan, [...ok, ...half]);
    expect(r.matched).toHaveLength(ok.length);
    expect(r.unmatched.map((u) => u.loraKey)).toEqual(half);
    expect(r.unmatched[0].reason).toContain('lacks its lora_up');
  });
});
