#!/usr/bin/env python3
"""Random-weight base models for the WAN recipe (musubi-tuner), WAN 2.1 T2V 1.3B.

  wan2.1_t2v_1.3B_bf16.safetensors     DiT, bare keys (blocks.N.*) as ComfyUI's
                                       repackaged file; bf16 (wan_train_network
                                       trains bf16 weights with bf16 mixed
                                       precision). Full size: load_wan_model
                                       builds the depth from WAN_CONFIGS and
                                       loads with strict=True.
  wan_2.1_vae.safetensors              WAN VAE (WanVAE_ keys); bf16.
  models_t5_umt5-xxl-enc-bf16.pth      umT5-XXL encoder as Wan-AI ships it
                                       (torch.save of a state dict); full size:
                                       umt5_xxl() is fixed and loads strict=True.

Shapes and keys come from musubi's own classes on the meta device. WAN 2.2
A14B is not made: its experts are the same 14B architecture at a fixed depth
of 40 blocks (28 GB each), which a 24 GiB host cannot train even at two steps.

Runs inside the musubi-tuner image (its import hook keeps wan/modules/t5.py
importable without a GPU):
  make_musubi_models.py <out> [--verify]
"""
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from random_weights import random_tensor, write_safetensors  # noqa: E402

DIT = "wan2.1_t2v_1.3B_bf16.safetensors"
VAE = "wan_2.1_vae.safetensors"
T5 = "models_t5_umt5-xxl-enc-bf16.pth"
TASK = "t2v-1.3B"


def specs_of(module, dtype):
    return [(k, tuple(v.shape), dtype if v.is_floating_point() else v.dtype) for k, v in sorted(module.state_dict().items())]


def dit_specs():
    from accelerate import init_empty_weights

    from musubi_tuner.wan.configs import WAN_CONFIGS
    from musubi_tuner.wan.modules.model import WanModel

    c = WAN_CONFIGS[TASK]
    with init_empty_weights():
        # The arguments load_wan_model passes for a 2.1 T2V model.
        model = WanModel(model_type="t2v", model_version="2.1", dim=c.dim, eps=c.eps, ffn_dim=c.ffn_dim, freq_dim=c.freq_dim, in_dim=c.in_dim, num_heads=c.num_heads, num_layers=c.num_layers, out_dim=c.out_dim, text_len=c.text_len, attn_mode="torch", split_attn=False)
    return specs_of(model, torch.bfloat16)


def vae_specs():
    from musubi_tuner.wan.modules.vae import WanVAE_

    # The config _video_vae builds (z_dim 16 as WanVAE passes it).
    with torch.device("meta"):
        model = WanVAE_(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
    return specs_of(model, torch.bfloat16)


def t5_specs():
    from accelerate import init_empty_weights

    from musubi_tuner.wan.modules.t5 import umt5_xxl

    with init_empty_weights():
        model = umt5_xxl(encoder_only=True, return_tokenizer=False)
    return specs_of(model, torch.bfloat16)


def spec_hash(specs):
    return hashlib.sha256(json.dumps([[n, list(s), str(d)] for n, s, d in specs]).encode()).hexdigest()


def up_to_date(path, want):
    sidecar = path + ".spec.sha256"
    return os.path.exists(path) and os.path.exists(sidecar) and open(sidecar).read().strip() == want


def write(out, name, specs):
    path = os.path.join(out, name)
    want = spec_hash(specs)
    if up_to_date(path, want):
        print(f"{name}: up to date ({os.path.getsize(path) / 1e9:.2f} GB)")
        return
    t0 = time.time()
    if name.endswith(".pth"):
        # torch.save needs the whole dict: ~11 GB of bf16 for umT5-XXL, one tensor generated at a time.
        sd = {n: random_tensor(n, s, d) for n, s, d in specs}
        torch.save(sd, path + ".tmp")
        del sd
        os.replace(path + ".tmp", path)
    else:
        write_safetensors(path, specs, metadata={"format": "pt", "stationthis": "random-weight conformance model"})
    with open(path + ".spec.sha256", "w") as f:
        f.write(want + "\n")
    print(f"{name}: {len(specs)} tensors, {os.path.getsize(path) / 1e9:.2f} GB in {time.time() - t0:.0f} s")


def verify(out):
    """Load each file with the calls the three musubi scripts make."""
    from musubi_tuner.wan.configs import WAN_CONFIGS
    from musubi_tuner.wan.modules.model import load_wan_model
    from musubi_tuner.wan.modules.t5 import T5EncoderModel
    from musubi_tuner.wan.modules.vae import WanVAE

    c = WAN_CONFIGS[TASK]
    t0 = time.time()
    vae = WanVAE(vae_path=os.path.join(out, VAE), device="cpu", dtype=torch.bfloat16)
    assert not any(p.is_meta for p in vae.model.parameters()), "VAE: tensors left on meta"
    print(f"verify {VAE}: loads ({time.time() - t0:.0f} s)")
    t0 = time.time()
    dit = load_wan_model(c, "cpu", os.path.join(out, DIT), "torch", False, "cpu", torch.bfloat16)
    assert not any(p.is_meta for p in dit.parameters()), "DiT: tensors left on meta"
    print(f"verify {DIT}: loads strict ({time.time() - t0:.0f} s)")
    del dit
    t0 = time.time()
    t5 = T5EncoderModel(text_len=c.text_len, dtype=c.t5_dtype, device="cpu", weight_path=os.path.join(out, T5))
    assert not any(p.is_meta for p in t5.model.parameters()), "T5: tensors left on meta"
    print(f"verify {T5}: loads strict ({time.time() - t0:.0f} s)")


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    if len(args) != 1:
        raise SystemExit("usage: make_musubi_models.py <out> [--verify]")
    out = args[0]
    os.makedirs(out, exist_ok=True)
    write(out, DIT, dit_specs())
    write(out, VAE, vae_specs())
    write(out, T5, t5_specs())
    if "--verify" in argv:
        verify(out)


if __name__ == "__main__":
    main(sys.argv[1:])
