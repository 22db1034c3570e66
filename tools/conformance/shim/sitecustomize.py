"""Conformance-only depth shim for engines that hard-code a model's size.

Mounted read-only by tools/conformance (never baked into an image) and put
first on PYTHONPATH for the cases that name it (cases.ts `engineShim`). It
does nothing unless STATIONTHIS_CONFORMANCE_OVERRIDES is set; then:

  STATIONTHIS_CONFORMANCE_OVERRIDES='[{"module": "musubi_tuner.flux.flux_models",
      "object": "configs_flux_dev_context.params",
      "set": {"depth": 1, "depth_single_blocks": 1}}]'

right after `module` is imported (import hook), each listed field of `object`
(a dotted path from the module; `name[key]` indexes a dict) is set to the
value given. Why: musubi-tuner builds FLUX.1 Kontext from a config object in
flux_models (19 double + 38 single blocks, ~12 B parameters, 24 GB in bf16)
and loads strict=True, which a 24 GiB CPU host cannot hold. With the depth
set before the model is built, the engine's own loader reads a random-weight
file holding exactly the real key names, shapes and dtypes of the blocks
present, strictly, and every other line of the engine runs unchanged.

Two more forms, for a loader that builds its model from a local config
(musubi's load_qwen3 keeps Qwen3-4B's config as a JSON string inside the
function) or indexes a module-level list:

  {"module": "musubi_tuner.flux_2.flux2_utils", "object": "", "set": {"OUTPUT_LAYERS_QWEN3": [1, 2, 3]}}
      an empty `object` is the module itself; a value may be a list of numbers.
  {"module": "musubi_tuner.zimage.zimage_utils", "object": "Qwen3Config", "call": {"num_hidden_layers": 4}}
      `object` names a callable the module calls (here the config class it
      imported); the module's name is rebound to a wrapper that replaces these
      keyword arguments in every call. A call that does not pass one of them
      stops the process (the loader changed).

Loud by design: an override whose module, object or field does not exist
(an engine bump renamed it) stops the process with an error, so the shim can
never silently do nothing; each applied override is printed once.

The image's own sitecustomize (the CUDA-free import hook, ImageSpec
cudaFreeImports) is found further down PYTHONPATH and run first, so the image
behaves exactly as without this folder.
"""
import importlib.abc
import importlib.util
import json
import os
import re
import sys

ENV = "STATIONTHIS_CONFORMANCE_OVERRIDES"
_HERE = os.path.dirname(os.path.abspath(__file__))


def _run_image_sitecustomize():
    """Python imports only the first sitecustomize on sys.path: run the image's too."""
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == _HERE:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_image_sitecustomize", candidate)
            module = importlib.util.module_from_spec(spec)
            sys.modules["_image_sitecustomize"] = module
            spec.loader.exec_module(module)
            return


def _fmt(value):
    """One token per value (no spaces), so the report line reads `field: before -> after`."""
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, tuple)) else repr(value)


def _resolve(root, path):
    obj = root
    if path == "":
        return obj
    for part in path.split("."):
        m = re.fullmatch(r"(\w+)(?:\[['\"]?([^\]'\"]+)['\"]?\])?", part)
        if not m:
            raise SystemExit(f"{ENV}: cannot parse object path segment {part!r} in {path!r}")
        name, key = m.group(1), m.group(2)
        if not hasattr(obj, name):
            raise SystemExit(f"{ENV}: {type(obj).__name__} has no attribute {name!r} (path {path!r}); the engine changed: update tools/conformance/cases.ts")
        obj = getattr(obj, name)
        if key is not None:
            if key not in obj:
                raise SystemExit(f"{ENV}: {name} has no key {key!r} (path {path!r}); the engine changed: update tools/conformance/cases.ts")
            obj = obj[key]
    return obj


def _wrap_call(module, o):
    """Rebind `module.<object>` to a wrapper that replaces o["call"]'s keyword arguments."""
    if "." in o["object"] or not o["object"]:
        raise SystemExit(f"{ENV}: a call override names a callable at the top of its module, not {o['object']!r}")
    real = _resolve(module, o["object"])
    if not callable(real):
        raise SystemExit(f"{ENV}: {o['module']}.{o['object']} is not callable; the engine changed: update tools/conformance/cases.ts")
    where = f"{o['module']}.{o['object']}"

    def wrapper(*args, **kwargs):
        for field, value in o["call"].items():
            if field not in kwargs:
                raise SystemExit(f"{ENV}: {where} was called without {field!r} (keywords {sorted(kwargs)}); the engine changed: update tools/conformance/cases.ts")
            print(f"[conformance shim] {where}.{field}: {_fmt(kwargs[field])} -> {_fmt(value)}", file=sys.stderr, flush=True)
            kwargs[field] = value
        return real(*args, **kwargs)

    setattr(module, o["object"], wrapper)


def _apply(module, overrides):
    for o in overrides:
        if "call" in o:
            _wrap_call(module, o)
            continue
        target = _resolve(module, o["object"])
        for field, value in o["set"].items():
            if not hasattr(target, field):
                raise SystemExit(f"{ENV}: {o['module']}.{o['object']} has no field {field!r}; the engine changed: update tools/conformance/cases.ts")
            before = getattr(target, field)
            # object.__setattr__ also sets fields of frozen dataclasses.
            object.__setattr__(target, field, value)
            where = f"{o['module']}.{o['object']}" if o["object"] else o["module"]
            print(f"[conformance shim] {where}.{field}: {_fmt(before)} -> {_fmt(value)}", file=sys.stderr, flush=True)


class _OverridingLoader(importlib.abc.Loader):
    def __init__(self, inner, overrides):
        self._inner, self._overrides = inner, overrides

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        _apply(module, self._overrides)


class _OverridingFinder(importlib.abc.MetaPathFinder):
    def __init__(self, by_module):
        self._by_module = by_module

    def find_spec(self, name, path, target=None):
        if name not in self._by_module:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _OverridingLoader(spec.loader, self._by_module[name])
                return spec
        raise SystemExit(f"{ENV}: module {name} not found; the engine changed: update tools/conformance/cases.ts")


def _install(raw):
    try:
        overrides = json.loads(raw)
        by_module = {}
        for o in overrides:
            changes = [k for k in ("set", "call") if k in o]
            if len(changes) != 1 or not isinstance(o[changes[0]], dict) or not o[changes[0]] or not isinstance(o.get("object"), str):
                raise ValueError(f"each override needs module, object and one non-empty set or call: {o!r}")
            by_module.setdefault(o["module"], []).append(o)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SystemExit(f"{ENV} is not a JSON list of {{module, object, set}}: {e}")
    for name in list(by_module):
        if name in sys.modules:  # imported before this hook: apply now
            _apply(sys.modules[name], by_module.pop(name))
    sys.meta_path.insert(0, _OverridingFinder(by_module))


_run_image_sitecustomize()
if os.environ.get(ENV):
    _install(os.environ[ENV])
