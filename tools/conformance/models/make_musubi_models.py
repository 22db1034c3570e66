#!/usr/bin/env python3
"""Random-weight base models for the WAN recipe (musubi-tuner), WAN 2.1 T2V 1.3B.

Writes into <out> the three files the recipe names, in the containers and key
layouts of the real downloads, with key names and shapes taken from musubi's
own model classes built on the meta device:

  wan2.1_t2v_1.3B_bf16.safetensors  DiT, as Comfy-Org/Wan_2.1_ComfyUI_repackaged
        ships the 1.3B file: keys under `model.diffusion_model.` (load_wan_model
        strips that prefix; musubi's detect_wan_sd_dtype looks for it first and
        notes "1.3B model has this prefix"). All bf16: wan_train_network reads
        the dtype from blocks.0.cross_attn.k.weight and then requires
        --mixed_precision bf16 (or no). Full depth: load_wan_model builds the
        model from WAN_CONFIGS[task] (30 blocks, dim 1536) and loads strict=True.
  wan2.1_t2v_1.3B_fp32.safetensors  the same DiT keys in fp32, for CPU test runs (the wan-lora
        testRun profile: CPU autocast has no float32)
  wan_2.1_vae.safetensors           WAN 2.1 VAE (WanVAE_ keys, no prefix), bf16
        like the Comfy-Org file. Loaded with strict=False, so a missing key would
        silently stay on meta: --verify checks the key sets itself.
  models_t5_umt5-xxl-enc-bf16.pth   umT5-XXL encoder as Wan-AI ships it: a
        torch.save zip archive of a flat dict of bf16 tensors, bare keys.
        umt5_xxl() hard-codes the full size (24 layers, dim 4096, vocab 256384)
        and T5EncoderModel loads strict=True, so this is ~11.4 GB.

WAN 2.2 (t2v-A14B) is not made: load_wan_model takes the depth and width from
WAN_CONFIGS (40 blocks, dim 5120), never from the checkpoint, and loads
strict=True, so one expert can't be shrunk; at full size it is 28.6 GB of bf16,
more than this 24 GiB host holds.

Each file gets a `<file>.spec.sha256` sidecar (hash of its key/shape/dtype
list); a rerun skips a file whose sidecar matches. Values come from
random_weights.random_tensor, seeded per key, so rebuilds are byte-identical.

Usage: make_musubi_models.py <out-dir> [--verify]
  --verify  load every file with the calls the three musubi scripts make
            (wan_cache_latents --vae_cache_cpu, wan_cache_text_encoder_outputs,
            wan_train_network --task t2v-1.3B) on CPU, check keys and meta
            tensors, and time one VAE encode and one umT5 prompt encode.

Needs musubi_tuner importable and, for --verify of the umT5 file, its
tokenizer in the HF cache (the image bakes both; on a host use
PYTHONPATH=<sitecustomize dir>:<musubi>/src HF_HOME=<tokenizers> HF_HUB_OFFLINE=1).
wan/modules/t5.py calls torch.cuda.current_device() at import time; the
image's sitecustomize import hook makes that import work on a CPU-only machine.
"""
import collections
import io
import os
import pickle
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from random_weights import random_tensor, rss_gb, write_model_file, write_safetensors  # noqa: E402

TASK = "t2v-1.3B"
DIT = "wan2.1_t2v_1.3B_bf16.safetensors"
# The same DiT keys in fp32: the wan-lora testRun profile (libs/recipes) trains on it on CPU,
# where autocast(float32) is unsupported and bf16 weights would meet float32 activations.
DIT_FP32 = "wan2.1_t2v_1.3B_fp32.safetensors"
VAE = "wan_2.1_vae.safetensors"
T5 = "models_t5_umt5-xxl-enc-bf16.pth"
DIT_PREFIX = "model.diffusion_model."
DTYPE = torch.bfloat16

# Tensors above this many elements are generated in row blocks straight into
# their bf16 buffer: random_tensor draws float32 first, which for umT5's
# 256384x4096 embedding would be a 4.2 GB temporary next to the 2.1 GB result.
CHUNK_ELEMS = 1 << 26


# --------------------------------------------------------------------------
# Key/shape/dtype lists, from musubi's classes on the meta device
# --------------------------------------------------------------------------


def specs_of(module, prefix=""):
    return [(prefix + k, tuple(v.shape), DTYPE if v.is_floating_point() else v.dtype) for k, v in module.state_dict().items()]


def dit_specs():
    from musubi_tuner.wan.configs import WAN_CONFIGS
    from musubi_tuner.wan.modules.model import WanModel

    c = WAN_CONFIGS[TASK]
    with torch.device("meta"):
        # The constructor call load_wan_model makes (model.py), for this config.
        model = WanModel(
            model_type="i2v" if c.i2v else ("flf2v" if c.flf2v else "t2v"),
            model_version="2.1" if not c.v2_2 else "2.2",
            dim=c.dim,
            eps=c.eps,
            ffn_dim=c.ffn_dim,
            freq_dim=c.freq_dim,
            in_dim=c.in_dim,
            num_heads=c.num_heads,
            num_layers=c.num_layers,
            out_dim=c.out_dim,
            text_len=c.text_len,
            attn_mode="torch",
            split_attn=False,
        )
    return specs_of(model, DIT_PREFIX)


def vae_specs():
    from musubi_tuner.wan.modules.vae import WanVAE_

    # The cfg vae._video_vae builds, with the z_dim=16 WanVAE passes it.
    with torch.device("meta"):
        model = WanVAE_(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
    return specs_of(model)


def t5_specs():
    from musubi_tuner.wan.modules.t5 import umt5_xxl

    # T5EncoderModel builds exactly this (under init_empty_weights) and strips
    # "encoder." from the file's keys, so bare T5Encoder keys load as they are.
    with torch.device("meta"):
        model = umt5_xxl(encoder_only=True, return_tokenizer=False)
    return specs_of(model)


# --------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------


def value(name, shape, dtype):
    """random_tensor(name, ...), without its float32 temporary for huge tensors."""
    numel = 1
    for d in shape:
        numel *= int(d)
    if numel <= CHUNK_ELEMS or len(shape) < 2:
        return random_tensor(name, shape, dtype)
    # Norm weights (1) and biases (0) are constants random_tensor makes without
    # a float32 draw; a one-element probe tells them apart from random weights.
    if random_tensor(name, (1,), dtype).item() in (0.0, 1.0):
        return random_tensor(name, shape, dtype)
    out = torch.empty(shape, dtype=dtype)
    rows = max(1, CHUNK_ELEMS // (numel // shape[0]))
    for start in range(0, shape[0], rows):
        block = out[start : start + rows]
        # A per-block seed name; the suffix leaf ("rows<N>") keeps it a random weight.
        block.copy_(random_tensor(f"{name}.rows{start}", tuple(block.shape), dtype))
    return out


class _Storage:
    """Stands in for one tensor's storage while data.pkl is pickled."""

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel


class _Tensor:
    """Pickles as torch.save pickles a contiguous CPU tensor (non-v3 dtypes)."""

    def __init__(self, storage, shape):
        self.storage, self.shape = storage, tuple(int(d) for d in shape)

    def __reduce_ex__(self, protocol):
        stride, acc = [], 1
        for d in reversed(self.shape):
            stride.append(acc)
            acc *= d
        args = (self.storage, 0, self.shape, tuple(reversed(stride)), False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


# The legacy storage classes torch.save names in data.pkl, per dtype.
STORAGE_TYPES = {torch.bfloat16: "BFloat16Storage", torch.float16: "HalfStorage", torch.float32: "FloatStorage", torch.int64: "LongStorage"}


class _Pickler(pickle.Pickler):
    # torch.save's persistent id for a TypedStorage: (tag, storage class, key, location, numel).
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", getattr(torch, STORAGE_TYPES[obj.dtype]), obj.key, "cpu", obj.numel)
        return None


def write_pth(path, specs):
    """torch.save(dict) output, one tensor in memory at a time.

    torch.save pickles the whole dict and then copies every storage, so it
    needs all ~11 GB resident. This pickles placeholders that reduce exactly
    as torch.save reduces tensors (data.pkl), then streams each storage into
    the same zip writer torch.save uses (64-byte aligned records, CRC32,
    version and serialization id), generating it just before it is written.
    """
    storages = []
    sd = {}
    for i, (name, shape, dtype) in enumerate(specs):
        numel = 1
        for d in shape:
            numel *= int(d)
        st = _Storage(str(i), dtype, numel)
        storages.append((st, name, shape, dtype))
        sd[name] = _Tensor(st, shape)
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(sd)  # torch.serialization.DEFAULT_PROTOCOL
    pkl = buf.getvalue()

    tmp = path + ".tmp"
    writer = torch._C.PyTorchFileWriter(tmp)
    writer.write_record("data.pkl", pkl, len(pkl))
    writer.write_record("byteorder", sys.byteorder, len(sys.byteorder))
    # torch.save writes storages in sorted(key) order (string sort); so do we.
    for st, name, shape, dtype in sorted(storages, key=lambda s: s[0].key):
        t = value(name, shape, dtype).contiguous()
        writer.write_record(f"data/{st.key}", t.untyped_storage(), t.untyped_storage().nbytes())
        del t
    writer.write_end_of_file()
    del writer
    os.replace(tmp, path)








# --------------------------------------------------------------------------
# Verification with musubi's own loaders
# --------------------------------------------------------------------------


def write(out, name, specs):
    def write_file(path, specs_):
        if name.endswith(".pth"):
            write_pth(path, specs_)
        else:
            # safetensors metadata as ComfyUI's repackaged files carry it.
            write_safetensors(path, specs_, metadata={"format": "pt"}, value=value)

    write_model_file(out, name, specs, write_file)


def check_module(label, module, file_keys, strip=""):
    """No missing or unexpected key, nothing left on meta, everything bf16."""
    file_keys = {k[len(strip) :] if strip and k.startswith(strip) else k for k in file_keys}
    model_keys = set(module.state_dict().keys())
    missing, unexpected = sorted(model_keys - file_keys), sorted(file_keys - model_keys)
    assert not missing and not unexpected, f"{label}: missing {missing[:5]}, unexpected {unexpected[:5]}"
    on_meta = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    assert not on_meta, f"{label}: left on meta: {on_meta[:5]}"
    not_bf16 = [n for n, t in module.state_dict().items() if t.is_floating_point() and t.dtype != DTYPE]
    assert not not_bf16, f"{label}: not bf16 after load: {not_bf16[:5]}"




def verify(out):
    from safetensors import safe_open

    from musubi_tuner.wan.configs import WAN_CONFIGS
    from musubi_tuner.wan.modules.model import detect_wan_sd_dtype, load_wan_model
    from musubi_tuner.wan.modules.t5 import T5EncoderModel
    from musubi_tuner.wan.modules.vae import WanVAE

    config = WAN_CONFIGS[TASK]
    cpu = torch.device("cpu")

    def keys_of(path):
        with safe_open(path, framework="pt") as f:
            return list(f.keys())

    # wan_cache_latents.py: WanVAE(vae_path, device, dtype=bf16 (--vae_dtype
    # default), cache_device=cpu for --vae_cache_cpu).
    path = os.path.join(out, VAE)
    t0 = time.time()
    vae = WanVAE(vae_path=path, device=cpu, dtype=torch.bfloat16, cache_device=cpu)
    check_module(VAE, vae.model, keys_of(path))
    t1 = time.time()
    # One 5-frame 64x64 clip, encoded as encode_and_save_batch does.
    clip = torch.zeros(1, 3, 5, 64, 64).to(cpu, dtype=vae.dtype)
    with torch.amp.autocast(device_type="cpu", dtype=vae.dtype), torch.no_grad():
        latent = vae.encode(clip)[0]
    assert latent.shape == (16, 2, 8, 8) and torch.isfinite(latent).all(), f"{VAE}: bad latent {tuple(latent.shape)}"
    print(f"verify {VAE}: loads ({t1 - t0:.1f} s), encodes 5x64x64 -> {tuple(latent.shape)} ({time.time() - t1:.1f} s); peak RSS {rss_gb():.1f} GiB", flush=True)
    del vae, latent

    # wan_train_network.py: detect_wan_sd_dtype must say bf16 (then
    # --mixed_precision bf16 is required); load_transformer calls
    # load_wan_model(config, accelerator.device, dit, "torch" (--sdpa), split_attn,
    # loading_device, dit_weight_dtype=bf16, fp8_scaled, disable_numpy_memmap).
    path = os.path.join(out, DIT)
    t0 = time.time()
    assert detect_wan_sd_dtype(path) == torch.bfloat16, f"{DIT}: not detected as bf16"
    dit = load_wan_model(config, cpu, path, "torch", False, cpu, torch.bfloat16, False, disable_numpy_memmap=False)
    check_module(DIT, dit, keys_of(path), strip=DIT_PREFIX)
    n = sum(p.numel() for p in dit.parameters())
    print(f"verify {DIT}: loads strict, {n / 1e9:.2f} B params ({time.time() - t0:.1f} s); peak RSS {rss_gb():.1f} GiB", flush=True)
    del dit

    # wan_cache_text_encoder_outputs.py: T5EncoderModel(text_len=config.text_len,
    # dtype=config.t5_dtype, device, weight_path=args.t5, fp8=args.fp8_t5).
    path = os.path.join(out, T5)
    t0 = time.time()
    t5 = T5EncoderModel(text_len=config.text_len, dtype=config.t5_dtype, device=cpu, weight_path=path, fp8=False)
    t1 = time.time()
    # Key list without a second 11 GB read: mmap maps the archive, reads nothing.
    file_keys = [k.replace("encoder.", "") for k in torch.load(path, map_location="cpu", mmap=True, weights_only=True)]
    check_module(T5, t5.model, file_keys)
    print(f"verify {T5}: loads strict ({t1 - t0:.1f} s); peak RSS {rss_gb():.1f} GiB", flush=True)
    # One caption, as encode_and_save_batch encodes it without --fp8_t5: the
    # tokenizer pads to text_len, so the cost is that of 512 tokens.
    t1 = time.time()
    with torch.no_grad():
        ctx = t5(["sks person walking on a beach"], cpu)
    assert ctx[0].shape[-1] == 4096 and torch.isfinite(ctx[0].float()).all(), f"{T5}: bad context"
    print(f"verify {T5}: encodes one caption -> {tuple(ctx[0].shape)} {ctx[0].dtype} ({time.time() - t1:.1f} s); peak RSS {rss_gb():.1f} GiB", flush=True)


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    flags = [a for a in argv if a.startswith("--")]
    if len(args) != 1 or set(flags) - {"--verify"}:
        raise SystemExit("usage: make_musubi_models.py <out-dir> [--verify]")
    out = args[0]
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    write(out, DIT, dit_specs())
    write(out, DIT_FP32, [(n, shape, torch.float32) for n, shape, _ in dit_specs()])
    write(out, VAE, vae_specs())
    write(out, T5, t5_specs())
    print(f"generate: {time.time() - t0:.0f} s", flush=True)
    if "--verify" in flags:
        t0 = time.time()
        verify(out)
        print(f"verify: {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
