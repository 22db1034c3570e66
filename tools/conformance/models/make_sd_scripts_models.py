#!/usr/bin/env python3
"""Random-weight base models for the sd-scripts recipes (SDXL and FLUX.1 dev).

The files are exactly what the recipes mount and the loaders read, single-file
safetensors as the platform stores them:

  sd_xl_base_1.0.safetensors  SGM layout: model.diffusion_model.* (U-Net),
                              conditioner.embedders.0.transformer.* (CLIP-L, HF),
                              conditioner.embedders.1.model.* (OpenCLIP bigG),
                              first_stage_model.* (LDM VAE); fp16. Full size:
                              sdxl_model_util hard-codes all three architectures.
  flux1-dev.safetensors       BFL layout, 1 double + 1 single block (flux_utils
                              counts the blocks from the keys), guidance_in kept
                              (dev, not schnell); bf16.
  clip_l.safetensors          HF CLIPTextModel keys, full size (config hard-coded); fp16.
  t5xxl_fp16.safetensors      HF T5EncoderModel keys, full T5-XXL (config hard-coded); fp16.
  ae.safetensors              FLUX AutoEncoder keys, full size; bf16.

Key names and shapes come from the engine's own classes built on the meta
device and its own SGM conversion functions (library/sdxl_model_util.py
save_stable_diffusion_checkpoint), so a key the loader expects cannot be
missed; no model is ever materialised.

Runs inside the sd-scripts image (cwd /opt/sd-scripts):
  make_sd_scripts_models.py <out> [sdxl] [flux] [--verify]
"""
import hashlib
import json
import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.getcwd())

import torch  # noqa: E402

from random_weights import write_safetensors  # noqa: E402


def _meta_sd(module):
    return {k: v for k, v in module.state_dict().items()}


def sdxl_specs():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from library import model_util, sdxl_model_util, sdxl_original_unet

    with init_empty_weights():
        unet = sdxl_original_unet.SdxlUNet2DConditionModel()
        # The same configs load_models_from_sdxl_checkpoint builds.
        te1 = CLIPTextModel._from_config(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280))
        vae = AutoencoderKL(**model_util.create_vae_diffusers_config())
    sd = {}
    sd.update({"model.diffusion_model." + k: v for k, v in _meta_sd(unet).items()})
    sd.update({"conditioner.embedders.0.transformer." + k: v for k, v in _meta_sd(te1).items() if not k.endswith("position_ids")})
    te2_sgm = sdxl_model_util.convert_text_encoder_2_state_dict_to_sdxl(_meta_sd(te2), torch.empty((), device="meta"))
    sd.update({"conditioner.embedders.1.model." + k: v for k, v in te2_sgm.items()})
    sd.update({"first_stage_model." + k: v for k, v in model_util.convert_vae_state_dict(_meta_sd(vae)).items()})
    return [(k, tuple(v.shape), torch.float16) for k, v in sorted(sd.items())]


def flux_specs():
    from library import flux_models, flux_utils

    with torch.device("meta"):
        params = replace(flux_models.configs[flux_utils.MODEL_NAME_DEV].params, depth=1, depth_single_blocks=1)
        dit = flux_models.Flux(params)
        ae = flux_models.AutoEncoder(flux_models.configs[flux_utils.MODEL_NAME_DEV].ae_params)
    # The engine's own loaders with an empty state dict return the models they
    # build, still on meta: exactly the architectures they hard-code.
    clip = flux_utils.load_clip_l(None, torch.float16, "cpu", state_dict={})
    t5 = flux_utils.load_t5xxl(None, torch.float16, "cpu", state_dict={})
    files = {
        "flux1-dev.safetensors": [(k, tuple(v.shape), torch.bfloat16) for k, v in sorted(_meta_sd(dit).items())],
        "ae.safetensors": [(k, tuple(v.shape), torch.bfloat16) for k, v in sorted(_meta_sd(ae).items())],
        "clip_l.safetensors": [(k, tuple(v.shape), torch.float16) for k, v in sorted(_meta_sd(clip).items()) if not k.endswith("position_ids")],
        "t5xxl_fp16.safetensors": [(k, tuple(v.shape), torch.float16) for k, v in sorted(_meta_sd(t5).items())],
    }
    return files


def spec_hash(specs):
    return hashlib.sha256(json.dumps([[n, list(s), str(d)] for n, s, d in specs]).encode()).hexdigest()


def write(out, name, specs):
    path = os.path.join(out, name)
    sidecar = path + ".spec.sha256"
    want = spec_hash(specs)
    if os.path.exists(path) and os.path.exists(sidecar) and open(sidecar).read().strip() == want:
        print(f"{name}: up to date ({os.path.getsize(path) / 1e9:.2f} GB)")
        return
    t0 = time.time()
    write_safetensors(path, specs, metadata={"format": "pt", "stationthis": "random-weight conformance model"})
    with open(sidecar, "w") as f:
        f.write(want + "\n")
    print(f"{name}: {len(specs)} tensors, {os.path.getsize(path) / 1e9:.2f} GB in {time.time() - t0:.0f} s")


def check_loaded(what, module):
    meta = [n for n, p in list(module.named_parameters()) + list(module.named_buffers()) if p.is_meta]
    if meta:
        raise SystemExit(f"{what}: {len(meta)} tensors left on the meta device (missing from the file), e.g. {meta[:3]}")
    print(f"verify {what}: loads, no tensor left on meta")


def verify_sdxl(out):
    from library import sdxl_model_util

    t0 = time.time()
    te1, te2, vae, unet, logit_scale, _ = sdxl_model_util.load_models_from_sdxl_checkpoint(sdxl_model_util.MODEL_VERSION_SDXL_BASE_V1_0, os.path.join(out, "sd_xl_base_1.0.safetensors"), "cpu")
    for what, m in (("SDXL U-Net", unet), ("SDXL text encoder 1", te1), ("SDXL text encoder 2", te2), ("SDXL VAE", vae)):
        check_loaded(what, m)
    print(f"SDXL loaded in {time.time() - t0:.0f} s")


def verify_flux(out):
    from library import flux_utils

    t0 = time.time()
    is_schnell, dit = flux_utils.load_flow_model(os.path.join(out, "flux1-dev.safetensors"), torch.bfloat16, "cpu")
    if is_schnell:
        raise SystemExit("flux1-dev.safetensors was detected as schnell: guidance_in is missing")
    check_loaded("FLUX DiT", dit)
    check_loaded("FLUX AE", flux_utils.load_ae(os.path.join(out, "ae.safetensors"), torch.bfloat16, "cpu"))
    check_loaded("CLIP-L", flux_utils.load_clip_l(os.path.join(out, "clip_l.safetensors"), torch.float16, "cpu"))
    check_loaded("T5-XXL", flux_utils.load_t5xxl(os.path.join(out, "t5xxl_fp16.safetensors"), torch.float16, "cpu"))
    print(f"FLUX files loaded in {time.time() - t0:.0f} s")


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    if not args:
        raise SystemExit("usage: make_sd_scripts_models.py <out> [sdxl] [flux] [--verify]")
    out, which = args[0], set(args[1:]) or {"sdxl", "flux"}
    os.makedirs(out, exist_ok=True)
    if "sdxl" in which:
        write(out, "sd_xl_base_1.0.safetensors", sdxl_specs())
    if "flux" in which:
        for name, specs in flux_specs().items():
            write(out, name, specs)
    if "--verify" in argv:
        if "sdxl" in which:
            verify_sdxl(out)
        if "flux" in which:
            verify_flux(out)


if __name__ == "__main__":
    main(sys.argv[1:])
