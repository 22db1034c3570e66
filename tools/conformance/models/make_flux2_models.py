#!/usr/bin/env python3
"""Random-weight base models for the FLUX.2 [klein] 4B recipe (musubi-tuner, flux2-klein-lora).

Writes into <out> the three files the recipe names, with key names, shapes and
dtypes taken from musubi's own classes and loaders built on the meta device:

  flux2-klein-base-4b.safetensors  DiT as flux2_utils.load_flow_model reads it
        (flux2_models.Flux2 state-dict keys: double_blocks.N.*, single_blocks.N.*,
        img_in, txt_in, ...), bf16. DEPTH double + DEPTH_SINGLE single blocks, not
        5 + 20: load_flow_model builds the model from
        FLUX2_MODEL_INFO['klein-base-4b'].params and loads strict=True, and the
        full file is 7.75 GB, more than this host's disk budget for the suite.
  flux2-ae.safetensors             FLUX.2 AutoEncoder (flux2_models.AutoEncoder), fp32, full size
  qwen_3_4b.safetensors            Qwen3 4B as zimage_utils.load_qwen3 reads it
        (Qwen3ForCausalLM keys without lm_head.weight, which the loader ties to
        model.embed_tokens.weight), bf16, QWEN3_LAYERS decoder layers, not 36:
        the full file is 8 GB. Every other tensor (embeddings 151936 x 2560,
        final norm) is at full size.

The conformance run sets the same numbers before the engine builds anything
(tools/conformance/shim, cases.ts FLUX2_KLEIN_SHIM): the DiT depth, the
Qwen3Config num_hidden_layers load_qwen3 passes, and flux2_utils.OUTPUT_LAYERS_QWEN3
(the hidden states the embedder stacks; [9, 18, 27] of 36 layers, here
QWEN3_OUTPUT_LAYERS, so the context stays 3 x 2560 = 7680 wide as the DiT's txt_in expects).

Each file gets a `<file>.spec.sha256` sidecar (hash of its key/shape/dtype
list); a rerun skips a file whose sidecar matches. Values come from
random_weights.random_tensor, seeded per key, so rebuilds are byte-identical.

Usage: make_flux2_models.py <out-dir> [--verify]
  --verify  load every file with the calls the three flux_2_* scripts make on
            CPU (at the shim's sizes), check keys and meta tensors, encode one
            image and one caption (needs the Qwen/Qwen3-4B tokenizer in the HF
            cache: the image bakes it).

Runs inside the musubi-tuner image (no host Python packages).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from random_weights import rss_gb, specs_nbytes, write_model_file, write_safetensors  # noqa: E402

MODEL_VERSION = "klein-base-4b"
DIT = "flux2-klein-base-4b.safetensors"
AE = "flux2-ae.safetensors"
QWEN3 = "qwen_3_4b.safetensors"
# Must equal the conformance shim's overrides (tools/conformance/cases.ts FLUX2_KLEIN_SHIM).
DEPTH = 1
DEPTH_SINGLE = 1
QWEN3_LAYERS = 4
QWEN3_OUTPUT_LAYERS = [1, 2, 3]


def specs_of(module, dtype, drop=()):
    return [(k, tuple(v.shape), dtype if v.is_floating_point() else v.dtype) for k, v in sorted(module.state_dict().items()) if k not in drop]


class _Built(Exception):
    """Carries the model a loader built, before it reads any file."""


def shrink_qwen3(zimage_utils):
    """What the shim does: load_qwen3's Qwen3Config(**config) gets num_hidden_layers=QWEN3_LAYERS."""
    real = zimage_utils.Qwen3Config

    def config(**kwargs):
        assert "num_hidden_layers" in kwargs, "load_qwen3 no longer passes num_hidden_layers: the engine changed"
        return real(**{**kwargs, "num_hidden_layers": QWEN3_LAYERS})

    zimage_utils.Qwen3Config = config
    return real


def qwen3_built():
    """The (meta) Qwen3ForCausalLM load_qwen3 builds from its own config string, at QWEN3_LAYERS."""
    from accelerate import init_empty_weights

    from musubi_tuner.zimage import zimage_utils

    real_model = zimage_utils.Qwen3ForCausalLM

    class Capture:
        @staticmethod
        def _from_config(config):
            with init_empty_weights():
                raise _Built(real_model._from_config(config))

    real_config = shrink_qwen3(zimage_utils)
    zimage_utils.Qwen3ForCausalLM = Capture
    try:
        zimage_utils.load_qwen3(None, torch.bfloat16, "cpu")
    except _Built as built:
        return built.args[0]
    finally:
        zimage_utils.Qwen3ForCausalLM = real_model
        zimage_utils.Qwen3Config = real_config
    raise SystemExit("zimage_utils.load_qwen3 did not build a Qwen3ForCausalLM: the engine changed")


def klein_params():
    from dataclasses import replace

    from musubi_tuner.flux_2 import flux2_utils

    return replace(flux2_utils.FLUX2_MODEL_INFO[MODEL_VERSION].params, depth=DEPTH, depth_single_blocks=DEPTH_SINGLE)


def file_specs():
    from musubi_tuner.flux_2 import flux2_models

    # Outside the meta device: importing flux2_utils initialises torch._dynamo, which calls .item().
    params = klein_params()
    with torch.device("meta"):
        dit = flux2_models.Flux2(params, "torch", False)
        ae = flux2_models.AutoEncoder(flux2_models.AutoEncoderParams())
    return {
        DIT: specs_of(dit, torch.bfloat16),
        AE: specs_of(ae, torch.float32),
        QWEN3: specs_of(qwen3_built(), torch.bfloat16, drop=("lm_head.weight",)),
    }










def write(out, name, specs):
    write_model_file(out, name, specs, lambda path, sp: write_safetensors(path, sp, metadata={"format": "pt", "stationthis": "random-weight conformance model"}))


def check_loaded(label, module, specs, dtype, extra=()):
    model_keys = set(module.state_dict().keys()) - set(extra)
    file_keys = {n for n, _, _ in specs}
    missing, unexpected = sorted(model_keys - file_keys), sorted(file_keys - model_keys)
    assert not missing and not unexpected, f"{label}: missing {missing[:5]}, unexpected {unexpected[:5]}"
    on_meta = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    assert not on_meta, f"{label}: left on meta: {on_meta[:5]}"
    wrong = [n for n, t in module.state_dict().items() if t.is_floating_point() and t.dtype != dtype]
    assert not wrong, f"{label}: not {dtype} after load: {wrong[:5]}"


def verify(out, specs):
    from musubi_tuner.flux_2 import flux2_utils
    from musubi_tuner.zimage import zimage_utils

    cpu = torch.device("cpu")
    info = flux2_utils.FLUX2_MODEL_INFO[MODEL_VERSION]
    # What the conformance shim does before the flux_2_* scripts build anything.
    info.params.depth, info.params.depth_single_blocks = DEPTH, DEPTH_SINGLE
    flux2_utils.OUTPUT_LAYERS_QWEN3 = QWEN3_OUTPUT_LAYERS
    shrink_qwen3(zimage_utils)

    # flux_2_cache_latents.py: load_ae(args.vae, dtype=float32 by default, device, disable_mmap=True).
    t0 = time.time()
    ae = flux2_utils.load_ae(os.path.join(out, AE), dtype=torch.float32, device=cpu, disable_mmap=True)
    check_loaded(AE, ae, specs[AE], torch.float32)
    with torch.no_grad():
        latent = ae.encode(torch.zeros(1, 3, 64, 64))
    assert torch.isfinite(latent.float()).all(), f"{AE}: non-finite latent"
    print(f"verify {AE}: loads strict, encodes 64x64 -> {tuple(latent.shape)} ({time.time() - t0:.1f} s); peak RSS {rss_gb():.1f} GiB", flush=True)
    del ae

    # flux_2_train_network.py load_transformer: load_flow_model(..., dit_weight_dtype=bf16) on CPU.
    t0 = time.time()
    dit = flux2_utils.load_flow_model(cpu, info, os.path.join(out, DIT), "torch", False, cpu, dit_weight_dtype=torch.bfloat16)
    check_loaded(DIT, dit, specs[DIT], torch.bfloat16)
    print(f"verify {DIT}: loads strict at depth {DEPTH}+{DEPTH_SINGLE}, {sum(p.numel() for p in dit.parameters()) / 1e9:.2f} B params ({time.time() - t0:.1f} s); peak RSS {rss_gb():.1f} GiB", flush=True)
    del dit

    # flux_2_cache_text_encoder_outputs.py: load_text_embedder(info, path, dtype=bf16, device, disable_mmap=True).
    t0 = time.time()
    embedder = flux2_utils.load_text_embedder(info, os.path.join(out, QWEN3), dtype=torch.bfloat16, device=cpu, disable_mmap=True)
    check_loaded(QWEN3, embedder.model, specs[QWEN3], torch.bfloat16, extra=("lm_head.weight",))
    with torch.no_grad():
        ctx = embedder(["sks_conform a yellow disc"])
    assert ctx.shape == (1, flux2_utils.MAX_LENGTH, 3 * 2560) and torch.isfinite(ctx.float()).all(), f"{QWEN3}: bad context {tuple(ctx.shape)}"
    print(f"verify {QWEN3}: loads strict at {QWEN3_LAYERS} layers, encodes one caption -> {tuple(ctx.shape)} ({time.time() - t0:.1f} s); peak RSS {rss_gb():.1f} GiB", flush=True)


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    flags = [a for a in argv if a.startswith("--")]
    if len(args) != 1 or set(flags) - {"--verify"}:
        raise SystemExit("usage: make_flux2_models.py <out-dir> [--verify]")
    out = args[0]
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    specs = file_specs()
    for name, specs_ in specs.items():
        print(f"{name}: {len(specs_)} tensors, {specs_nbytes(specs_) / 1e9:.2f} GB", flush=True)
    for name, specs_ in specs.items():
        write(out, name, specs_)
    print(f"generate: {time.time() - t0:.0f} s", flush=True)
    if "--verify" in flags:
        t0 = time.time()
        verify(out, specs)
        print(f"verify: {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
