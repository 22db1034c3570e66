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
  6. writes sample PNGs into <output_dir>/samples/;
  7. every save_every_n_steps: a checkpoint LoRA <name>-step{step:08d}.safetensors,
     one fixed-seed sample PNG per sample prompt, and (save_state) a state
     folder <name>-step{step:08d}-state that `resume` continues from exactly
     (same steps, same final LoRA bytes as an uninterrupted run).

Every file and folder is written under a hidden temporary name and renamed
into place, so a kill at any moment never leaves a partial file under a final
name.

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
    "sample_prompts": [],
    "save_state": False,
    "resume": "",
}

# Format of the state folder (train_state.json "format"); bump on any change.
STATE_FORMAT = 1
STATE_JSON = "train_state.json"
STATE_TENSORS = "state.pt"
# Temporary names start with this, so nothing the worker matches by name is half written.
TMP_PREFIX = ".tmp-"


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
    prompts = train["sample_prompts"]
    if not isinstance(prompts, list) or len(prompts) > 8 or not all(isinstance(x, str) and x.strip() and "\n" not in x for x in prompts):
        raise BadInput("train.sample_prompts must be a list of at most 8 non-empty one-line strings")
    if not isinstance(train["save_state"], bool):
        raise BadInput("train.save_state must be true or false")
    if not isinstance(train["resume"], str):
        raise BadInput("train.resume must be a path to a state folder, or '' to start fresh")
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


def tmp_path_for(path):
    """A hidden temporary name next to `path` (same filesystem, so the rename is atomic)."""
    folder, base = os.path.split(path)
    return os.path.join(folder, f"{TMP_PREFIX}{base}-{os.getpid()}")


def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and Windows) cannot fsync a directory
    finally:
        os.close(fd)


def write_file_atomic(path, write):
    """Call write(fh) on a temporary file, fsync it and rename it to `path`."""
    tmp = tmp_path_for(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(path) or ".")


def remove_stale_temporaries(folders):
    """Remove temporaries a killed earlier run left behind (only names this trainer makes)."""
    import shutil

    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for entry in os.listdir(folder):
            if entry.startswith(TMP_PREFIX):
                path = os.path.join(folder, entry)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)


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

    def write(fh):
        fh.write(struct.pack("<Q", len(header_bytes)))
        fh.write(header_bytes)
        fh.write(payload)

    write_file_atomic(path, write)


def write_png(torch, path, img, prompt=None):
    import numpy as np
    from PIL import Image, PngImagePlugin

    arr = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    info = PngImagePlugin.PngInfo()
    if prompt is not None:
        info.add_text("prompt", prompt)
    write_file_atomic(path, lambda fh: Image.fromarray(np.ascontiguousarray(arr), "RGB").save(fh, format="PNG", pnginfo=info))


def prompt_seed(seed, prompt):
    """A fixed seed per (job seed, prompt): the same prompt draws the same noise at every save."""
    digest = hashlib.sha256(f"{seed}\n{prompt}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# ----------------------------------------------------------------------------
# Training state (save_state / resume)
# ----------------------------------------------------------------------------


def state_fingerprint(tc, image_names):
    """What must be equal for a resumed run to continue the same training."""
    keys = ("steps", "learning_rate", "batch_size", "resolution", "network_dim", "network_alpha", "network_dropout", "seed")
    fp = {k: tc[k] for k in keys}
    fp["images"] = hashlib.sha256("\n".join(image_names).encode("utf-8")).hexdigest()
    return fp


def save_state_dir(torch, path, tensors, info):
    """Write the state folder under a temporary name, then rename it into place."""
    import shutil

    tmp = tmp_path_for(path)
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        write_file_atomic(os.path.join(tmp, STATE_TENSORS), lambda fh: torch.save(tensors, fh))
        write_file_atomic(os.path.join(tmp, STATE_JSON), lambda fh: fh.write(json.dumps(info, indent=2, sort_keys=True).encode("utf-8")))
        if os.path.exists(path):
            # Same step saved again (a resumed run that re-reached it): swap, then drop the old one.
            old = tmp_path_for(path) + "-old"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(os.path.dirname(path) or ".")


def load_state_dir(torch, path, fingerprint):
    """Read a state folder written by save_state_dir; BadInput when it is missing, partial or another job's."""
    json_path = os.path.join(path, STATE_JSON)
    tensors_path = os.path.join(path, STATE_TENSORS)
    if not os.path.isdir(path):
        raise BadInput(f"resume state folder {path} does not exist: put the saved state folder back into the output folder, or render without resume")
    try:
        with open(json_path, "rb") as fh:
            info = json.loads(fh.read().decode("utf-8"))
        tensors = torch.load(tensors_path, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any read error means the state is unusable
        raise BadInput(f"resume state folder {path} is incomplete or unreadable ({exc}); resume from an earlier save or start fresh")
    if info.get("format") != STATE_FORMAT:
        raise BadInput(f"resume state {path} has format {info.get('format')!r}; this trainer reads format {STATE_FORMAT}")
    if info.get("fingerprint") != fingerprint:
        raise BadInput(f"resume state {path} was saved by a different training (parameters or dataset differ): {info.get('fingerprint')} != {fingerprint}")
    return info, tensors


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
    samples_dir = os.path.join(out_dir, "samples")
    try:
        os.makedirs(samples_dir, exist_ok=True)
        remove_stale_temporaries([out_dir, samples_dir])
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
    # Data order, flips, timesteps and noise. Dropout draws from torch's global generator.
    gen = torch.Generator().manual_seed(tc["seed"])

    started = time.time()
    fingerprint = state_fingerprint(tc, image_names)
    step = 0
    epoch = 0
    perm = None  # the current epoch's order; None: the next step starts a new epoch
    next_batch = 0  # position in `perm` of the next step's batch
    loss_window = []
    if tc["resume"]:
        try:
            info, saved = load_state_dir(torch, tc["resume"], fingerprint)
        except BadInput as exc:
            fail(str(exc))
        lora.load_state_dict(saved["lora"])
        optimizer.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        perm = saved["perm"]
        step = int(info["step"])
        epoch = int(info["epoch"])
        next_batch = int(info["next_batch"])
        loss_window = [float(x) for x in info["loss_window"]]
        started = float(info["started"])
        print(f"resumed from state {tc['resume']} at step {step}/{steps} (epoch {epoch})", flush=True)

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

    def denoise(noise_gens):
        """DDPM sampling, one image per generator, in eval mode (no dropout, no global RNG draws)."""
        model.eval()
        try:
            with torch.no_grad():
                shape = (3, tc["resolution"], tc["resolution"])
                x = torch.stack([torch.randn(shape, generator=g) for g in noise_gens])
                for i in reversed(range(T)):
                    tt = torch.full((x.shape[0],), i, dtype=torch.long)
                    eps = model(x, tt)
                    alpha_t = 1 - betas[i]
                    x = (x - betas[i] / (1 - alphas_cumprod[i]).sqrt() * eps) / alpha_t.sqrt()
                    if i > 0:
                        x = x + betas[i].sqrt() * torch.stack([torch.randn(shape, generator=g) for g in noise_gens])
        finally:
            model.train()
        return x

    def sample_path(step, k):
        return os.path.join(samples_dir, f"{name}_{step:06d}_{k:02d}.png")

    def save_samples(step):
        """One fixed-seed PNG per sample prompt: the same noise at every save, so saves compare."""
        prompts = tc["sample_prompts"]
        if not prompts:
            return
        print(f"generating sample images at step / サンプル画像生成 ステップ: {step}", flush=True)
        x = denoise([torch.Generator().manual_seed(prompt_seed(tc["seed"], p)) for p in prompts])
        for k, prompt in enumerate(prompts):
            path = sample_path(step, k)
            write_png(torch, path, x[k], prompt)
            print(f"sample saved: {path}", flush=True)

    def save_state(step):
        path = os.path.join(out_dir, f"{name}-step{step:08d}-state")
        print(f"saving state: {path}", flush=True)
        tensors = {
            "lora": lora.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "perm": perm,
        }
        info = {
            "format": STATE_FORMAT,
            "step": step,
            "epoch": epoch,
            "next_batch": next_batch,
            "loss_window": loss_window,
            "started": started,
            "fingerprint": fingerprint,
        }
        save_state_dir(torch, path, tensors, info)

    fp16 = tc["save_precision"] == "fp16"
    # initial=step: after a resume the bar shows the job's step of the job's total.
    bar = tqdm(total=steps, initial=step, desc="steps", smoothing=0, file=sys.stderr, dynamic_ncols=False, ncols=None)
    if perm is not None:
        print(f"\nepoch {epoch}/{epochs}", flush=True)
    while step < steps:
        if perm is None:
            epoch += 1
            print(f"\nepoch {epoch}/{epochs}", flush=True)
            perm = torch.randperm(n_images, generator=gen)
            next_batch = 0
        while next_batch < batches_per_epoch and step < steps:
            b = next_batch
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
            next_batch += 1
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
                if next_batch >= batches_per_epoch:
                    perm = None  # the state resumes at the start of the next epoch
                # Checkpoint, samples, then state: the state is the last thing a save writes.
                ckpt = os.path.join(out_dir, f"{name}-step{step:08d}.safetensors")
                print(f"\nsaving checkpoint: {ckpt}", flush=True)
                save_safetensors(ckpt, lora_state(), metadata(step, epoch), fp16)
                save_samples(step)
                if tc["save_state"]:
                    save_state(step)
        perm = None
    bar.close()

    final = os.path.join(out_dir, f"{name}.safetensors")
    print(f"\nsaving checkpoint: {final}", flush=True)
    save_safetensors(final, lora_state(), metadata(step, epoch), fp16)

    if tc["sample_count"] > 0:
        print(f"generating sample images at step / サンプル画像生成 ステップ: {step}", flush=True)
        # The final samples keep their historical seeds: seed, seed+1, ... one generator each.
        x = denoise([torch.Generator().manual_seed(tc["seed"] + k) for k in range(tc["sample_count"])])
        for k in range(x.shape[0]):
            path = sample_path(step, k)
            write_png(torch, path, x[k])
            print(f"sample saved: {path}", flush=True)

    print("model saved.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
