"""Random-weight model files for the conformance suite, written tensor by tensor.

Full-size encoders (T5-XXL, umT5-XXL, the SDXL U-Net) are 5-11 GB; holding a
whole state dict in memory next to a training run would exhaust a 24 GiB
machine. `write_safetensors` computes the header from shapes and dtypes first,
then generates and writes one tensor at a time, so peak memory is the largest
single tensor.

Values: norm weights 1, biases 0, everything else N(0, std) with a small std,
seeded per tensor name, so a rebuild gives identical bytes and a two-step
training run stays finite.
"""
import hashlib
import json
import os
import shutil
import struct
import time

import torch

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64", torch.float8_e4m3fn: "F8_E4M3"}


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def random_tensor(name: str, shape, dtype=torch.bfloat16, std: float = 0.02) -> torch.Tensor:
    """The value a random-weight checkpoint holds for `name`."""
    lname = name.lower()
    leaf = lname.rsplit(".", 1)[-1]
    is_norm = any(k in lname for k in ("norm", "ln_", "layernorm", "layer_norm", ".ln.", "scale")) and leaf in ("weight", "scale", "gamma")
    if leaf in ("bias", "beta", "running_mean"):
        return torch.zeros(shape, dtype=dtype)
    if leaf == "running_var":  # a BatchNorm's variance (FLUX.2 AE latent statistics): negative values would give NaN
        return torch.ones(shape, dtype=dtype)
    if is_norm:
        return torch.ones(shape, dtype=dtype)
    g = torch.Generator().manual_seed(_seed(name))
    return (torch.randn(shape, generator=g, dtype=torch.float32) * std).to(dtype)


def safetensors_header(specs, metadata=None) -> bytes:
    """The file's first bytes (length prefix + JSON header) for specs: iterable of
    (name, shape, dtype). Tensors are laid out in the order given."""
    header = {}
    offset = 0
    for name, shape, dtype in specs:
        size = nbytes(shape, dtype)
        header[name] = {"dtype": DTYPES[dtype], "shape": [int(d) for d in shape], "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(raw)) + raw


def nbytes(shape, dtype) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n * torch.tensor([], dtype=dtype).element_size()


def safetensors_size(specs, metadata=None) -> int:
    """Size in bytes of the file write_safetensors makes for specs."""
    specs = list(specs)
    return len(safetensors_header(specs, metadata)) + sum(nbytes(s, d) for _, s, d in specs)


def read_safetensors_header(path: str) -> dict:
    """name -> (shape tuple, torch dtype) from a file's header; reads no tensor data."""
    names = {v: k for k, v in DTYPES.items()}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return {k: (tuple(v["shape"]), names[v["dtype"]]) for k, v in header.items()}


def write_safetensors(path: str, specs, metadata=None, value=random_tensor) -> None:
    """specs: iterable of (name, shape, dtype). Writes atomically (path.tmp, rename);
    a failed write (ENOSPC, ^C) removes its multi-GB .tmp instead of leaving it."""
    specs = list(specs)
    tmp = path + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with open(tmp, "wb") as f:
            f.write(safetensors_header(specs, metadata))
            for name, shape, dtype in specs:
                t = value(name, shape, dtype).contiguous()
                f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
                del t
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def state_dict_specs(module: torch.nn.Module, dtype=torch.bfloat16, prefix: str = ""):
    """(name, shape, dtype) for every parameter and persistent buffer of a module
    (build it on the meta device: no memory is used)."""
    out = []
    for name, t in module.state_dict().items():
        out.append((prefix + name, tuple(t.shape), dtype if t.is_floating_point() else t.dtype))
    return out


# --------------------------------------------------------------------------
# Model files with spec sidecars, shared by every make_*_models.py
# --------------------------------------------------------------------------


def spec_hash(specs) -> str:
    """Hash of a file's (name, shape, dtype) list: its `<file>.spec.sha256` sidecar."""
    return hashlib.sha256(json.dumps([[n, list(s), str(d)] for n, s, d in specs]).encode()).hexdigest()


def specs_nbytes(specs) -> int:
    return sum(nbytes(shape, dtype) for _, shape, dtype in specs)


def write_model_file(out: str, name: str, specs, write_file) -> None:
    """Writes `out/name` with `write_file(path, specs)` unless its sidecar already
    vouches for exactly these specs. Fails before writing when the disk cannot
    hold it (rather than with ENOSPC after minutes of work), and removes a stale
    sidecar first, so a half-written file is never vouched for."""
    path = os.path.join(out, name)
    sidecar = path + ".spec.sha256"
    want = spec_hash(specs)
    if os.path.exists(path) and os.path.exists(sidecar) and open(sidecar).read().strip() == want:
        print(f"{name}: up to date ({os.path.getsize(path) / 1e9:.2f} GB)", flush=True)
        return
    need = specs_nbytes(specs) + (64 << 20)
    have = shutil.disk_usage(out).free + (os.path.getsize(path) if os.path.exists(path) else 0)
    if have < need:
        raise SystemExit(f"{name}: needs {need / 1e9:.1f} GB free in {out}, has {have / 1e9:.1f} GB; free disk space and rerun")
    if os.path.exists(sidecar):
        os.remove(sidecar)
    t0 = time.time()
    write_file(path, specs)
    with open(sidecar, "w") as f:
        f.write(want + "\n")
    print(f"{name}: wrote {len(specs)} tensors, {os.path.getsize(path) / 1e9:.2f} GB in {time.time() - t0:.0f} s", flush=True)


def rss_gb() -> float:
    """Peak resident memory of this process, GiB (Linux ru_maxrss is KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
