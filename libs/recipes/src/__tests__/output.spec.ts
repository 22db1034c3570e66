/** parseSafetensorsHeader, checkOutput per family and outputMetadata. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { getRecipe, parseSafetensorsHeader, safetensorsHeaderLength, type SafetensorsHeader } from '../index';

/** Build a safetensors byte buffer (header only plus zero payload) like the engines write. */
function safetensors(tensors: Record<string, { dtype: string; shape: number[] }>, metadata: Record<string, string> = {}): Uint8Array {
  const size = { F16: 2, BF16: 2, F32: 4 } as Record<string, number>;
  let offset = 0;
  const header: Record<string, unknown> = { __metadata__: metadata };
  for (const [name, t] of Object.entries(tensors)) {
    const n = t.shape.reduce((a, b) => a * b, 1) * (size[t.dtype] ?? 4);
    header[name] = { ...t, data_offsets: [offset, offset + n] };
    offset += n;
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const buf = Buffer.alloc(8 + json.length + offset);
  buf.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(buf, 8);
  return new Uint8Array(buf);
}

function kohyaModule(name: string, rank: number, inDim: number, outDim: number, dtype = 'F16') {
  return {
    [`${name}.lora_down.weight`]: { dtype, shape: [rank, inDim] },
    [`${name}.lora_up.weight`]: { dtype, shape: [outDim, rank] },
    [`${name}.alpha`]: { dtype, shape: [] },
  };
}

describe('parseSafetensorsHeader', () => {
  it('parses the real smoke LoRA written by the trainer (hand-written safetensors)', () => {
    const buf = new Uint8Array(fs.readFileSync(path.join(__dirname, '..', '__fixtures__', 'smoke-lora.safetensors')));
    const h = parseSafetensorsHeader(buf);
    expect(Object.keys(h.tensors)).toHaveLength(45);
    expect(h.tensors['lora_unet_conv_in.lora_down.weight']).toEqual({ dtype: 'F16', shape: [3, 3, 3, 3] });
    expect(h.tensors['lora_unet_conv_in.alpha']).toEqual({ dtype: 'F16', shape: [] });
    expect(h.metadata).toMatchObject({ ss_output_name: 'my_lora_v1', stationthis_trigger_word: 'sks_dog', ss_network_dim: '4', ss_steps: '100' });
    expect(h.metadata['sshs_model_hash']).toMatch(/^[0-9a-f]{64}$/);
  });
  it('works from just the head of a file and says how many bytes it needs', () => {
    const buf = safetensors(kohyaModule('lora_unet_x', 4, 8, 8));
    const need = safetensorsHeaderLength(buf.subarray(0, 8));
    expect(parseSafetensorsHeader(buf.subarray(0, need)).tensors['lora_unet_x.alpha']).toBeDefined();
    expect(() => parseSafetensorsHeader(buf.subarray(0, need - 1))).toThrow(`header needs ${need} bytes`);
  });
  it('rejects garbage with a clear error', () => {
    expect(() => parseSafetensorsHeader(new Uint8Array(4))).toThrow(/at least 8 bytes/);
    expect(() => parseSafetensorsHeader(new Uint8Array(16))).toThrow(/header length 0/);
    const bad = Buffer.alloc(12);
    bad.writeBigUInt64LE(4n, 0);
    bad.write('{{{{', 8);
    expect(() => parseSafetensorsHeader(new Uint8Array(bad))).toThrow(/not valid JSON/);
    const huge = Buffer.alloc(8);
    huge.writeBigUInt64LE(2n ** 40n, 0);
    expect(() => parseSafetensorsHeader(new Uint8Array(huge))).toThrow(/not a safetensors file/);
  });
});

describe('checkOutput', () => {
  const header = (buf: Uint8Array): SafetensorsHeader => parseSafetensorsHeader(buf);

  it('smoke: accepts the real trainer output', () => {
    const buf = new Uint8Array(fs.readFileSync(path.join(__dirname, '..', '__fixtures__', 'smoke-lora.safetensors')));
    expect(getRecipe('smoke-cpu').checkOutput(parseSafetensorsHeader(buf))).toEqual({ ok: true, problems: [], tensorCount: 45 });
  });
  it('SDXL: accepts kohya LDM U-Net keys, rejects text-encoder and Diffusers-named keys', () => {
    const recipe = getRecipe('sdxl-lora');
    const good = header(safetensors({ ...kohyaModule('lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q', 32, 640, 640), ...kohyaModule('lora_unet_output_blocks_0_1_proj_in', 32, 1280, 1280) }, { ss_network_dim: '32' }));
    expect(recipe.checkOutput(good)).toEqual({ ok: true, problems: [], tensorCount: 6 });
    const bad = header(safetensors({ ...kohyaModule('lora_te1_text_model_encoder_layers_0_mlp_fc1', 32, 768, 3072), ...kohyaModule('lora_unet_down_blocks_1_attentions_0_proj_in', 32, 640, 640) }));
    const r = recipe.checkOutput(bad);
    expect(r.ok).toBe(false);
    expect(r.problems.join('\n')).toMatch(/do not match lora_unet_\{input_blocks/);
    expect(r.problems.join('\n')).toMatch(/text-encoder key/);
  });
  it('FLUX: accepts double/single block keys', () => {
    const h = header(safetensors({ ...kohyaModule('lora_unet_double_blocks_0_img_attn_qkv', 32, 3072, 9216, 'BF16'), ...kohyaModule('lora_unet_single_blocks_37_linear1', 32, 3072, 21504, 'BF16') }));
    expect(getRecipe('flux-lora').checkOutput(h).ok).toBe(true);
    const peft = header(safetensors({ 'transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight': { dtype: 'BF16', shape: [16, 3072] } }));
    expect(getRecipe('flux-lora').checkOutput(peft).ok).toBe(false);
  });
  it('WAN: accepts musubi lora_unet_blocks_N keys', () => {
    const h = header(safetensors({ ...kohyaModule('lora_unet_blocks_9_cross_attn_k', 32, 5120, 5120, 'BF16'), ...kohyaModule('lora_unet_blocks_39_ffn_0', 32, 5120, 13824, 'BF16') }));
    expect(getRecipe('wan-lora').checkOutput(h)).toEqual({ ok: true, problems: [], tensorCount: 6 });
  });
  it('reports empty files, bad dtypes, unpaired modules, rank mismatch and missing alpha', () => {
    const recipe = getRecipe('wan-lora');
    expect(recipe.checkOutput({ tensors: {}, metadata: {} })).toEqual({ ok: false, problems: ['the LoRA has no tensors'], tensorCount: 0 });
    const h = header(
      safetensors(
        {
          'lora_unet_blocks_0_self_attn_q.lora_down.weight': { dtype: 'F8_E4M3', shape: [8, 16] },
          'lora_unet_blocks_1_self_attn_q.lora_down.weight': { dtype: 'BF16', shape: [8, 16] },
          'lora_unet_blocks_1_self_attn_q.lora_up.weight': { dtype: 'BF16', shape: [16, 4] },
          'lora_unet_blocks_1_self_attn_q.alpha': { dtype: 'BF16', shape: [] },
          'lora_unet_blocks_2_self_attn_q.lora_down.weight': { dtype: 'BF16', shape: [8, 16] },
          'lora_unet_blocks_2_self_attn_q.lora_up.weight': { dtype: 'BF16', shape: [16, 8] },
        },
        { ss_network_dim: '8' },
      ),
    );
    const r = recipe.checkOutput(h);
    expect(r.ok).toBe(false);
    expect(r.problems).toEqual([
      'unexpected dtype(s) F8_E4M3 (allowed: F16, BF16, F32)',
      '1 module(s) lack a down/up pair, e.g. lora_unet_blocks_0_self_attn_q',
      '1 module(s) have inconsistent rank, e.g. lora_unet_blocks_1_self_attn_q',
      '1 module(s) lack a scalar .alpha, e.g. lora_unet_blocks_2_self_attn_q',
    ]);
  });
});

describe('outputMetadata', () => {
  it.each([
    ['sdxl-lora', 'sdxl_base_v1-0', 'stable-diffusion-xl-v1-base/lora'],
    ['flux-lora', 'flux1', 'flux-1-dev/lora'],
    ['wan-lora', 'wan', 'wan2.1/lora'],
    ['smoke-cpu', 'stationthis_smoke_unet_v1', 'stationthis-smoke/lora'],
  ])('%s carries the trigger word, base model, job id and the engine keys', (id, version, arch) => {
    const recipe = getRecipe(id);
    const m = recipe.outputMetadata({ triggerWord: 'sks_dog', baseModel: recipe.baseModel, jobId: 'job1', outputName: 'my_lora' });
    expect(m).toMatchObject({
      ss_output_name: 'my_lora',
      ss_base_model_version: version,
      'modelspec.architecture': arch,
      'modelspec.trigger_phrase': 'sks_dog',
      stationthis_trigger_word: 'sks_dog',
      stationthis_base_model: recipe.baseModel,
      stationthis_job_id: 'job1',
      stationthis_recipe_id: id,
      stationthis_recipe_version: recipe.version,
      stationthis_engine: recipe.engine.name,
      stationthis_engine_commit: recipe.engine.commit,
    });
    expect(Object.values(m).every((v) => typeof v === 'string')).toBe(true);
  });
});
