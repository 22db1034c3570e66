#!/usr/bin/env python3
"""StationThis CPU smoke trainer: a real LoRA training of a tiny diffusion model.

Why this exists: the worker, the recipe builder and the README demo need a
training run that behaves like the real engines (tqdm progress on stderr,
epoch/checkpoint lines on stdout, a kohya-style LoRA .safetensors with
metadata, sample images) but finishes in well under a minute on two CPU
cores with nothing but Debian's python3-torch, python3-numpy, python3-tqdm
and python3-pil installed.

What it does:
  1. reads the job config (TOML or JSON) rendered by @stationthis/recipes;
  2. loads the dataset images (jpg/png) and centre-crops them to a square;
  3. builds a tiny UNet-like noise predictor, initialised deterministically
     from a seed: this is the frozen "base model";
  4. wraps its conv/linear layers with LoRA adapters (rank r, alpha a) and
     trains ONLY the adapters with the DDPM noise-prediction loss;
  5. writes <output_name>.safetensors by hand (8-byte little-endian header
     length + JSON header + raw little-endian tensors) with kohya key names
     (lora_unet_<module>.lora_down.weight / .lora_up.weight / .alpha);
  6. writes sample PNGs into <output_dir>/samples/.

It writes only below the output directory and never to the dataset, so it
runs as a non-root user on a read-only root filesystem.

Exit codes: 0 success, 2 bad input (config or dataset), 3 NaN loss,
1 anything else (with a traceback).
"""
import argparse
import hashlib
import json
import math
import os
import struct
import sys
import time

EXIT_BAD_INPUT = 2
EXIT_NAN = 3


class BadInput(Exception):
    """A problem with the config or the dataset that the user can fix."""


def fail(message, code=EXIT_BAD_INPUT):
    print(f"ERROR: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


# ----------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------

DEFAULTS = {
    "steps": 100,
    "learning_rate": 1e-3,
    "batch_size": 4,
    "resolution": 32,
    "network_dim": 4,
    "network_alpha": 4.0,
    "network_dropout": 0.0,
    "seed": 42,
    "sample_count": 1,
    "save_every_n_steps": 0,
    "save_precision": "fp16",
    "simulate_failure": "none",
    "threads": 1,
}


def load_config(path):
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise BadInput(f"cannot read config {path}: {exc.strerror}")
    try:
        if path.endswith(".json"):
            cfg = json.loads(raw.decode("utf-8"))
        else:
            import tomllib

            cfg = tomllib.loads(raw.decode("utf-8"))
    except Exception as exc:  # noqa: BLE001 - any parse error is bad input
        raise BadInput(f"config {path} is not valid {'JSON' if path.endswith('.json') else 'TOML'}: {exc}")
    if not isinstance(cfg, dict):
        raise BadInput("config must be a table/object")
    train = dict(DEFAULTS)
    train.update(cfg.get("train", {}))
    for key in ("dataset_dir", "output_dir", "output_name"):
        if not isinstance(cfg.get(key), str) or not cfg[key]:
            raise BadInput(f"config key '{key}' is required (string)")
    checks = [
        ("steps", int, 1, 100000),
        ("batch_size", int, 1, 64),
        ("resolution", int, 16, 128),
        ("network_dim", int, 1, 64),
        ("seed", int, 0, 2**31 - 1),
        ("sample_count", int, 0, 8),
        ("save_every_n_steps", int, 0, 100000),
        ("threads", int, 1, 64),
    ]
    for key, typ, lo, hi in checks:
        val = train.get(key)
        if not isinstance(val, typ) or isinstance(val, bool) or not (lo <= val <= hi):
            raise BadInput(f"train.{key} must be an integer in {lo}..{hi}, got {val!r}")
    if train["resolution"] % 8 != 0:
        raise BadInput(f"train.resolution must be a multiple of 8, got {train['resolution']}")
    for key, lo, hi in (("learning_rate", 1e-7, 1.0), ("network_alpha", 1e-3, 1024.0), ("network_dropout", 0.0, 0.9)):
        val = train.get(key)
        if not isinstance(val, (int, float)) or isinstance(val, bool) or not (lo <= float(val) <= hi):
            raise BadInput(f"train.{key} must be a number in {lo}..{hi}, got {val!r}")
        train[key] = float(val)
    if train["save_precision"] not in ("fp16", "fp32"):
        raise BadInput("train.save_precision must be 'fp16' or 'fp32'")
    if train["simulate_failure"] not in ("none", "nan-loss", "crash"):
        raise BadInput("train.simulate_failure must be 'none', 'nan-loss' or 'crash'")
    metadata = cfg.get("metadata", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BadInput("config table 'metadata' must map keys to strings")
    cfg["train"] = train
    cfg["metadata"] = metadata
    return cfg


# ----------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def load_dataset(dataset_dir, resolution):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if not os.path.isdir(dataset_dir):
        raise BadInput(f"dataset directory {dataset_dir} does not exist")
    names = sorted(n for n in os.listdir(dataset_dir) if n.lower().endswith(IMAGE_EXTS))
    if not names:
        raise BadInput(f"dataset directory {dataset_dir} has no .png/.jpg/.jpeg images")
    arrays = []
    for name in names:
        path = os.path.join(dataset_dir, name)
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                w, h = img.size
                side = min(w, h)
                left, top = (w - side) // 2, (h - side) // 2
                img = img.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BICUBIC)
                arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
        except (UnidentifiedImageError, OSError) as exc:
            raise BadInput(f"image {name} cannot be decoded: {exc}")
        arrays.append(arr.transpose(2, 0, 1))
    return names, np.stack(arrays)


# ----------------------------------------------------------------------------
# Model: a tiny UNet-like noise predictor plus LoRA adapters
# ----------------------------------------------------------------------------


def build_model(torch, seed):
    nn = torch.nn

    def timestep_embedding(t, dim):
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    class ResBlock(nn.Module):
        def __init__(self, ch_in, ch_out, t_dim):
            super().__init__()
            self.norm1 = nn.GroupNorm(8, ch_in)
            self.conv1 = nn.Conv2d(ch_in, ch_out, 3, padding=1)
            self.emb = nn.Linear(t_dim, ch_out)
            self.norm2 = nn.GroupNorm(8, ch_out)
            self.conv2 = nn.Conv2d(ch_out, ch_out, 3, padding=1)
            self.skip = nn.Conv2d(ch_in, ch_out, 1) if ch_in != ch_out else nn.Identity()

        def forward(self, x, emb):
            h = self.conv1(torch.nn.functional.silu(self.norm1(x)))
            h = h + self.emb(emb)[:, :, None, None]
            h = self.conv2(torch.nn.functional.silu(self.norm2(h)))
            return h + self.skip(x)

    class TinyUNet(nn.Module):
        def __init__(self, ch=32, t_dim=64):
            super().__init__()
            self.t_dim = t_dim
            self.time_embed = nn.Sequential(nn.Linear(t_dim, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
            self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
            self.down_0 = ResBlock(ch, ch, t_dim)
            self.downsample = nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1)
            self.mid = ResBlock(ch * 2, ch * 2, t_dim)
            self.upsample = nn.ConvTranspose2d(ch * 2, ch, 4, stride=2, padding=1)
            self.up_0 = ResBlock(ch * 2, ch, t_dim)
            self.norm_out = nn.GroupNorm(8, ch)
            self.conv_out = nn.Conv2d(ch, 3, 3, padding=1)

        def forward(self, x, t):
            emb = self.time_embed(timestep_embedding(t, self.t_dim))
            h0 = self.down_0(self.conv_in(x), emb)
            h = self.mid(self.downsample(h0), emb)
            h = self.up_0(torch.cat([self.upsample(h), h0], dim=1), emb)
            return self.conv_out(torch.nn.functional.silu(self.norm_out(h)))

    torch.manual_seed(seed)
    model = TinyUNet()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def add_lora(torch, model, rank, alpha, dropout):
    """Wrap every Conv2d/Linear with a kohya-style LoRA: up(down(x)) * alpha/rank.

    lora_down keeps the wrapped layer's kernel/stride/padding (as kohya does for
    3x3 convs); lora_up is a 1x1 conv or a linear, initialised to zero so the
    adapted model starts identical to the base model.
    """
    nn = torch.nn

    class LoRAModule(nn.Module):
        def __init__(self, name, org):
            super().__init__()
            self.lora_name = "lora_unet_" + name.replace(".", "_")
            self.org_forward = org.forward
            r = min(rank, org.in_channels if isinstance(org, nn.Conv2d) else org.in_features)
            if isinstance(org, nn.Conv2d):
                self.lora_down = nn.Conv2d(org.in_channels, r, org.kernel_size, org.stride, org.padding, bias=False)
                self.lora_up = nn.Conv2d(r, org.out_channels, 1, bias=False)
            else:
                self.lora_down = nn.Linear(org.in_features, r, bias=False)
                self.lora_up = nn.Linear(r, org.out_features, bias=False)
            nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_up.weight)
            self.register_buffer("alpha", torch.tensor(float(alpha)))
            self.scale = float(alpha) / r
            self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
            org.forward = self.forward

        def forward(self, x):
            return self.org_forward(x) + self.lora_up(self.dropout(self.lora_down(x))) * self.scale

    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    modules = nn.ModuleList(LoRAModule(n, m) for n, m in targets)
    return modules


# ----------------------------------------------------------------------------
# Safetensors, written by hand
# ----------------------------------------------------------------------------


def save_safetensors(path, tensors, metadata, fp16):
    """tensors: list of (name, torch tensor). Header keys sorted like safetensors does."""
    import numpy as np

    dtype_name, np_dtype = ("F16", "<f2") if fp16 else ("F32", "<f4")
    header = {}
    blobs = []
    offset = 0
    for name, tensor in sorted(tensors, key=lambda kv: kv[0]):
        data = np.ascontiguousarray(tensor.detach().cpu().float().numpy().astype(np_dtype)).tobytes()
        header[name] = {"dtype": dtype_name, "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    payload = b"".join(blobs)
    meta = dict(metadata)
    meta["sshs_model_hash"] = hashlib.sha256(payload).hexdigest()
    header["__metadata__"] = meta
    header_bytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    header_bytes += b" " * ((8 - len(header_bytes) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(header_bytes)))
        fh.write(header_bytes)
        fh.write(payload)
    os.replace(tmp, path)


def write_png(torch, path, img):
    import numpy as np
    from PIL import Image

    arr = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(np.ascontiguousarray(arr), "RGB").save(path)


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description="StationThis CPU smoke LoRA trainer")
    parser.add_argument("--config", required=True, help="path to the job config (.toml or .json)")
    args = parser.parse_args(argv)

    try:
        cfg = load_config(args.config)
    except BadInput as exc:
        fail(str(exc))
    tc = cfg["train"]
    out_dir = cfg["output_dir"]
    name = cfg["output_name"]
    if "/" in name or name.startswith("."):
        fail(f"output_name {name!r} must be a plain file name")

    import torch
    from tqdm import tqdm

    torch.set_num_threads(tc["threads"])
    try:
        image_names, images = load_dataset(cfg["dataset_dir"], tc["resolution"])
    except BadInput as exc:
        fail(str(exc))
    try:
        os.makedirs(os.path.join(out_dir, "samples"), exist_ok=True)
    except OSError as exc:
        fail(f"cannot create output directory {out_dir}: {exc.strerror}")

    data = torch.from_numpy(images)
    n_images = data.shape[0]
    batch = tc["batch_size"]
    steps = tc["steps"]
    batches_per_epoch = max(1, math.ceil(n_images / batch))
    epochs = math.ceil(steps / batches_per_epoch)

    model = build_model(torch, tc["seed"])
    lora = add_lora(torch, model, tc["network_dim"], tc["network_alpha"], tc["network_dropout"])
    params = [p for p in lora.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc["learning_rate"], weight_decay=0.0)

    T = 100
    betas = torch.linspace(1e-4, 0.05, T)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    gen = torch.Generator().manual_seed(tc["seed"])

    started = time.time()
    print("running training / 学習開始", flush=True)
    print(f"  num train images * repeats / 学習画像の数×繰り返し回数: {n_images}", flush=True)
    print(f"  num batches per epoch / 1epochのバッチ数: {batches_per_epoch}", flush=True)
    print(f"  num epochs / epoch数: {epochs}", flush=True)
    print(f"  batch size per device / バッチサイズ: {batch}", flush=True)
    print(f"  total optimization steps / 学習ステップ数: {steps}", flush=True)

    def lora_state():
        tensors = []
        for m in lora:
            tensors.append((m.lora_name + ".lora_down.weight", m.lora_down.weight))
            tensors.append((m.lora_name + ".lora_up.weight", m.lora_up.weight))
            tensors.append((m.lora_name + ".alpha", m.alpha))
        return tensors

    def metadata(step, epoch):
        meta = {
            "ss_output_name": name,
            "ss_network_module": "stationthis.smoke_lora",
            "ss_network_dim": str(tc["network_dim"]),
            "ss_network_alpha": str(tc["network_alpha"]),
            "ss_network_dropout": str(tc["network_dropout"]),
            "ss_learning_rate": str(tc["learning_rate"]),
            "ss_max_train_steps": str(steps),
            "ss_steps": str(step),
            "ss_epoch": str(epoch),
            "ss_num_train_images": str(n_images),
            "ss_seed": str(tc["seed"]),
            "ss_resolution": f"({tc['resolution']}, {tc['resolution']})",
            "ss_base_model_version": "stationthis_smoke_unet_v1",
            "ss_training_started_at": str(started),
            "ss_training_finished_at": str(time.time()),
            "modelspec.architecture": "stationthis-smoke/lora",
        }
        meta.update(cfg["metadata"])
        return meta

    fp16 = tc["save_precision"] == "fp16"
    bar = tqdm(total=steps, desc="steps", smoothing=0, file=sys.stderr, dynamic_ncols=False, ncols=None)
    loss_window = []
    step = 0
    epoch = 0
    while step < steps:
        epoch += 1
        print(f"\nepoch {epoch}/{epochs}", flush=True)
        perm = torch.randperm(n_images, generator=gen)
        for b in range(batches_per_epoch):
            if step >= steps:
                break
            idx = perm[b * batch : (b + 1) * batch]
            if idx.numel() < batch:  # top up short batches so every step sees `batch` images
                idx = torch.cat([idx, torch.randint(0, n_images, (batch - idx.numel(),), generator=gen)])
            x0 = data[idx]
            flip = torch.rand(x0.shape[0], generator=gen) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
            t = torch.randint(0, T, (x0.shape[0],), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            a = alphas_cumprod[t].sqrt()[:, None, None, None]
            s = (1 - alphas_cumprod[t]).sqrt()[:, None, None, None]
            pred = model(a * x0 + s * noise, t)
            loss = torch.nn.functional.mse_loss(pred, noise)
            if tc["simulate_failure"] == "nan-loss" and step >= steps // 2:
                loss = loss * float("nan")
            if tc["simulate_failure"] == "crash" and step >= steps // 2:
                raise RuntimeError("simulated engine crash (train.simulate_failure = 'crash')")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_value = float(loss.item())
            loss_window.append(loss_value)
            if len(loss_window) > batches_per_epoch:
                loss_window.pop(0)
            avr_loss = sum(loss_window) / len(loss_window)
            bar.set_postfix(avr_loss=avr_loss, refresh=False)
            bar.update(1)
            if math.isnan(loss_value):
                bar.close()
                print("ERROR: loss is NaN; stopping (no LoRA written)", file=sys.stderr, flush=True)
                sys.exit(EXIT_NAN)
            every = tc["save_every_n_steps"]
            if every and step % every == 0 and step < steps:
                ckpt = os.path.join(out_dir, f"{name}-step{step:08d}.safetensors")
                print(f"\nsaving checkpoint: {ckpt}", flush=True)
                save_safetensors(ckpt, lora_state(), metadata(step, epoch), fp16)
    bar.close()

    final = os.path.join(out_dir, f"{name}.safetensors")
    print(f"\nsaving checkpoint: {final}", flush=True)
    save_safetensors(final, lora_state(), metadata(step, epoch), fp16)

    if tc["sample_count"] > 0:
        print(f"generating sample images at step / サンプル画像生成 ステップ: {step}", flush=True)
        with torch.no_grad():
            sgen = torch.Generator().manual_seed(tc["seed"])
            x = torch.randn((tc["sample_count"], 3, tc["resolution"], tc["resolution"]), generator=sgen)
            for i in reversed(range(T)):
                tt = torch.full((x.shape[0],), i, dtype=torch.long)
                eps = model(x, tt)
                alpha_t = 1 - betas[i]
                x = (x - betas[i] / (1 - alphas_cumprod[i]).sqrt() * eps) / alpha_t.sqrt()
                if i > 0:
                    x = x + betas[i].sqrt() * torch.randn(x.shape, generator=sgen)
            for k in range(x.shape[0]):
                path = os.path.join(out_dir, "samples", f"{name}_{step:06d}_{k:02d}.png")
                write_png(torch, path, x[k])
                print(f"sample saved: {path}", flush=True)

    print("model saved.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
