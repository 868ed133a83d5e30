"""Run folders: ``config.json`` + ``model.safetensors`` + ``schema.json`` (+ ``last/``).

Nothing is pickled. Every file is written to a temp file and renamed, so a killed run
never leaves a half-written checkpoint. Loading checks the format version and schema
and turns any damage into one clear :class:`Prom3eError`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from prom3e import __version__
from prom3e.errors import Prom3eError
from prom3e.io import atomic_write

FORMAT_VERSION = 1


def write_json(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n"

    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    atomic_write(path, write)


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, tuple | set):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise Prom3eError(f"{path}: missing (is this a prom3e run folder?)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Prom3eError(f"{path}: corrupt JSON ({e})") from None


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (meta or {}).items()}
    atomic_write(path, lambda tmp: save_file(data, tmp, metadata=meta))


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise Prom3eError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise Prom3eError(f"{path}: corrupt or truncated checkpoint ({str(e).splitlines()[0]})") from None


def schema_dict(modalities: list[str], dims: list[int]) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "prom3e_version": __version__,
        "modalities": [{"name": n, "dim": d} for n, d in zip(modalities, dims, strict=True)],
    }


def read_schema(run: str | os.PathLike) -> tuple[list[str], list[int]]:
    s = read_json(Path(run) / "schema.json")
    version = s.get("format_version")
    if version != FORMAT_VERSION:
        raise Prom3eError(
            f"{run}: checkpoint format {version} is not supported by prom3e {__version__} "
            f"(expects format {FORMAT_VERSION})"
        )
    try:
        return [m["name"] for m in s["modalities"]], [int(m["dim"]) for m in s["modalities"]]
    except (KeyError, TypeError) as e:
        raise Prom3eError(f"{run}/schema.json: malformed ({e})") from None


def load_state_into(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a safetensors state dict, refusing missing, extra or mis-shaped tensors."""
    state = load_tensors(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise Prom3eError(f"{path}: does not match the model (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise Prom3eError(f"{path}: tensor '{k}' has shape {tuple(v.shape)}, model wants {tuple(own[k].shape)}")
        if not torch.isfinite(v).all():
            raise Prom3eError(f"{path}: tensor '{k}' contains NaN or inf")
    model.load_state_dict(state)


# --- optimiser state as flat tensors + JSON (no pickle) --------------------------------

def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            tensors[f"{idx}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
    return tensors, {"param_groups": sd["param_groups"]}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, val in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = val
    groups = meta["param_groups"]
    opt.load_state_dict({"state": state, "param_groups": groups})
