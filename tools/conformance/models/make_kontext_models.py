#!/usr/bin/env python3
"""Random-weight base models for the Kontext recipe (musubi-tuner, FLUX.1 Kontext [dev]).

Writes into <out> the four files the kontext-lora recipe names, in the
containers and key layouts of the real downloads, with key names, shapes and
dtypes taken from musubi's own classes and loaders built on the meta device:

  flux1-kontext-dev.safetensors  DiT in BFL's single-file layout, as
        black-forest-labs/FLUX.1-Kontext-dev ships it (bare keys: double_blocks.N.*,
        single_blocks.N.*, guidance_in.*, ...), bf16. DEPTH double + DEPTH_SINGLE
        single blocks, not 19 + 38: flux_utils.load_flow_model builds the model
        from flux_models.configs_flux_dev_context.params and loads strict=True,
        and the full 12 B model (24 GB in bf16) does not fit a 24 GiB CPU host.
        The conformance run sets that config's depth to the same numbers before
        the model is built (tools/conformance/shim, cases.ts KONTEXT_SHIM); the
        key names, shapes and dtypes of every block present are the real ones.
  ae.safetensors                 FLUX AutoEncoder (flux_models.AutoEncoder), bf16, full size
  clip_l.safetensors             HF CLIPTextModel keys (flux_utils.load_clip_l's config), fp16, full size
  t5xxl_fp16.safetensors         HF T5EncoderModel keys (flux_utils.load_t5xxl's config), fp16, full size

The last three are the very files the flux-lora recipe reads (comfyanonymous/
flux_text_encoders and BFL's ae): when make_sd_scripts_models.py has already
made them, their spec sidecar matches (same keys, shapes and dtypes from
musubi's classes) and nothing is written; --verify proves musubi's loaders
read them strictly.

Each file gets a `<file>.spec.sha256` sidecar (hash of its key/shape/dtype
list); a rerun skips a file whose sidecar matches. Values come from
random_weights.random_tensor, seeded per key, so rebuilds are byte-identical.

Usage: make_kontext_models.py <out-dir> [--verify]
  --verify  load every file with the calls the three flux_kontext_* scripts
            make on CPU (DiT at the shim's depth), check keys and meta tensors,
            and encode one image and one caption. Needs the CLIP-L and T5
            tokenizers in the HF cache (the image bakes them).

Runs inside the musubi-tuner image (no host Python packages).
"""
import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from random_weights import rss_gb, specs_nbytes, write_model_file, write_safetensors  # noqa: E402

DIT = "flux1-kontext-dev.safetensors"
AE = "ae.safetensors"
CLIP_L = "clip_l.safetensors"
T5 = "t5xxl_fp16.safetensors"
# Must equal the depth the conformance shim sets (tools/conformance/cases.ts KONTEXT_SHIM).
DEPTH = 1
DEPTH_SINGLE = 1


# --------------------------------------------------------------------------
# Key/shape/dtype lists, from musubi's classes on the meta device
# --------------------------------------------------------------------------


def specs_of(module, dtype):
    return [(k, tuple(v.shape), dtype if v.is_floating_point() else v.dtype) for k, v in sorted(module.state_dict().items())]


class _Built(Exception):
    """Carries the model a loader built, before it reads any file."""


def built_by(loader, class_name):
    """The (meta) model `flux_utils.<loader>` builds: its own config, its own class.

    load_clip_l / load_t5xxl keep their config dicts local; this swaps the HF
    class name flux_utils uses for one whose _from_config builds the real model
    and stops the loader right there, before it opens a file or a tokenizer.
    """
    from accelerate import init_empty_weights

    from musubi_tuner.flux import flux_utils

    real = getattr(flux_utils, class_name)

    class Capture:
        @staticmethod
        def _from_config(config):
            with init_empty_weights():
                raise _Built(real._from_config(config))

    setattr(flux_utils, class_name, Capture)
    try:
        loader(None, torch.float16, "cpu")
    except _Built as built:
        return built.args[0]
    finally:
        setattr(flux_utils, class_name, real)
    raise SystemExit(f"flux_utils.{loader.__name__} did not build a {class_name}: the engine changed")


def kontext_params():
    from musubi_tuner.flux import flux_models

    return replace(flux_models.configs_flux_dev_context.params, depth=DEPTH, depth_single_blocks=DEPTH_SINGLE)


def file_specs():
    from musubi_tuner.flux import flux_models, flux_utils

    with torch.device("meta"):
        dit = flux_models.Flux(kontext_params())
        ae = flux_models.AutoEncoder(flux_models.configs_flux_dev_context.ae_params)
    return {
        DIT: specs_of(dit, torch.bfloat16),
        AE: specs_of(ae, torch.bfloat16),
        CLIP_L: specs_of(built_by(flux_utils.load_clip_l, "CLIPTextModel"), torch.float16),
        T5: specs_of(built_by(flux_utils.load_t5xxl, "T5EncoderModel"), torch.float16),
    }


# --------------------------------------------------------------------------
# Writer (the sidecar scheme of make_sd_scripts_models.py / make_musubi_models.py)
# --------------------------------------------------------------------------








# --------------------------------------------------------------------------
# Verification with musubi's own loaders
# --------------------------------------------------------------------------




def write(out, name, specs):
    write_model_file(out, name, specs, lambda path, sp: write_safetensors(path, sp, metadata={"format": "pt", "stationthis": "random-weight conformance model"}))


def check_loaded(label, module, specs, dtype):
    model_keys = set(module.state_dict().keys())
    file_keys = {n for n, _, _ in specs}
    missing, unexpected = sorted(model_keys - file_keys), sorted(file_keys - model_keys)
    assert not missing and not unexpected, f"{label}: missing {missing[:5]}, unexpected {unexpected[:5]}"
    on_meta = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    assert not on_meta, f"{label}: left on meta: {on_meta[:5]}"
    wrong = [n for n, t in module.state_dict().items() if t.is_floating_point() and t.dtype != dtype]
    assert not wrong, f"{label}: not {dtype} after load: {wrong[:5]}"


def verify(out, specs):
    from musubi_tuner.flux import flux_models, flux_utils

    cpu = torch.device("cpu")
    # What the conformance shim does before flux_kontext_train_network builds the DiT.
    params = flux_models.configs_flux_dev_context.params
    params.depth, params.depth_single_blocks = DEPTH, DEPTH_SINGLE

    # flux_kontext_cache_latents.py (and the trainer): load_ae(args.vae, dtype=float32, device, disable_mmap=True).
    t0 = time.time()
    ae = flux_utils.load_ae(os.path.join(out, AE), dtype=torch.float32, device=cpu, disable_mmap=True)
    check_loaded(AE, ae, specs[AE], torch.float32)
    with torch.no_grad():
        latent = ae.encode(torch.zeros(1, 3, 64, 64))
    assert latent.shape == (1, 16, 8, 8) and torch.isfinite(latent.float()).all(), f"{AE}: bad latent {tuple(latent.shape)}"
    print(f"verify {AE}: loads strict, encodes 64x64 -> {tuple(latent.shape)} ({time.time() - t0:.1f} s); peak RSS {rss_gb():.1f} GiB", flush=True)
    del ae

    # flux_kontext_train_network.py load_transformer: load_flow_model(dit, dtype=None (the file's), device, disable_mmap=True, ...).
    t0 = time.time()
    dit = flux_utils.load_flow_model(os.path.join(out, DIT), None, cpu, disable_mmap=True, attn_mode="torch", loading_device=cpu)
    check_loaded(DIT, dit, specs[DIT], torch.bfloat16)
    print(f"verify {DIT}: loads strict at depth {DEPTH}+{DEPTH_SINGLE}, {sum(p.numel() for p in dit.parameters()) / 1e9:.2f} B params ({time.time() - t0:.1f} s); peak RSS {rss_gb():.1f} GiB", flush=True)
    del dit

    # flux_kontext_cache_text_encoder_outputs.py: load_t5xxl(t5, dtype=bf16 unless --fp8_t5), load_clip_l(clip, dtype=bf16).
    t0 = time.time()
    tok2, clip = flux_utils.load_clip_l(os.path.join(out, CLIP_L), dtype=torch.bfloat16, device=cpu, disable_mmap=True)
    check_loaded(CLIP_L, clip, specs[CLIP_L], torch.bfloat16)
    print(f"verify {CLIP_L}: loads strict ({time.time() - t0:.1f} s); peak RSS {rss_gb():.1f} GiB", flush=True)
    t0 = time.time()
    tok1, t5 = flux_utils.load_t5xxl(os.path.join(out, T5), dtype=torch.bfloat16, device=cpu, disable_mmap=True)
    check_loaded(T5, t5, specs[T5], torch.bfloat16)
    with torch.no_grad():
        ids = tok1(["sks_conform a yellow disc"], max_length=flux_models.T5XXL_MAX_LENGTH, padding="max_length", truncation=True, return_tensors="pt").input_ids
        ctx = t5(ids)[0]
    assert ctx.shape == (1, flux_models.T5XXL_MAX_LENGTH, 4096) and torch.isfinite(ctx.float()).all(), f"{T5}: bad context {tuple(ctx.shape)}"
    print(f"verify {T5}: loads strict, encodes one caption -> {tuple(ctx.shape)} ({time.time() - t0:.1f} s); peak RSS {rss_gb():.1f} GiB", flush=True)


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    flags = [a for a in argv if a.startswith("--")]
    if len(args) != 1 or set(flags) - {"--verify"}:
        raise SystemExit("usage: make_kontext_models.py <out-dir> [--verify]")
    out = args[0]
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    specs = file_specs()
    for name, file_specs_ in specs.items():
        write(out, name, file_specs_)
    print(f"generate: {time.time() - t0:.0f} s", flush=True)
    if "--verify" in flags:
        t0 = time.time()
        verify(out, specs)
        print(f"verify: {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
