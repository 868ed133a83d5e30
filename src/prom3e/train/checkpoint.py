"""Run folders: ``config.json`` + ``model.safetensors`` + ``schema.json`` (+ ``last/``).

Nothing is pickled. Every file is written to a temp file and renamed; ``last/`` (weights,
optimiser, state) is one directory made complete before an atomic switch
(:func:`prom3e.io.commit_dir`), and its ``state.json`` holds a manifest of the others'
SHA-256, checked on resume. So a killed run never leaves a torn checkpoint, and the
temporaries it leaves are removed by the next run. Loading checks the format version,
schema, tensor names, shapes and dtypes (before anything big is allocated) and turns any
damage into one clear :class:`Prom3eError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from prom3e import __version__, io
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
        raise Prom3eError(f"{Path(run) / 'schema.json'}: malformed ({e})") from None


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def tensor_header(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """Names → (shape, safetensors dtype) from a file's header, without reading the tensors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise Prom3eError(f"{path}: missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype())
                    for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise Prom3eError(f"{path}: corrupt or truncated checkpoint ({str(e).splitlines()[0]})") from None


def check_header(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Refuse a weights file whose tensor names, shapes or dtypes differ from ``model``'s.

    ``model`` may live on the ``meta`` device: the check then costs no memory, so a damaged
    or hostile config (``embed_dim: 100000``) is refused before anything big is allocated.
    """
    header = tensor_header(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(header))
    extra = sorted(set(header) - set(own))
    if missing or extra:
        raise Prom3eError(f"{path}: does not match the model (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, (shape, dtype) in header.items():
        if shape != tuple(own[k].shape):
            raise Prom3eError(f"{path}: tensor '{k}' has shape {shape}, the model (config.json) wants "
                              f"{tuple(own[k].shape)}")
        if _DTYPES.get(dtype) != own[k].dtype:
            raise Prom3eError(f"{path}: tensor '{k}' is {dtype}, the model wants {own[k].dtype} (damaged or "
                              "converted weights)")


def load_state_into(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a safetensors state dict, refusing missing, extra, mis-shaped, mis-typed or
    non-finite tensors."""
    check_header(model, path)
    state = load_tensors(path)
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
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


# --- run folders and the atomic last/ checkpoint -----------------------------------------

# what a run folder holds (globs): refused unless --overwrite, removed by it
RUN_PRODUCTS = ("config.json", "schema.json", "model.safetensors", "metrics.json", "split.json", "log.jsonl",
                "last", ".last-*")


def prepare_run(run: str | os.PathLike, resume: bool, overwrite: bool,
                inputs: Iterable[str | os.PathLike | None] = (), clean: bool = True) -> Path:
    """Check (and with ``clean``, clean) a run folder before training starts.

    A file there, an existing run without ``resume`` or ``overwrite``, ``resume`` without a
    run, or an unwritable place is refused in one line. With ``clean``, stale
    temporaries of a killed run are removed and ``overwrite`` removes the old run's files
    (nothing else in the folder); without it nothing is changed (a check before reading data).
    """
    run = Path(run)
    if resume and overwrite:
        raise Prom3eError("give --resume (continue the run) or --overwrite (replace it), not both")
    if run.exists() and not run.is_dir():
        raise Prom3eError(f"run folder {run} is a file; give a folder")
    if clean:
        io.clean_stale(run, links=("last",))
    if resume:
        if not (run / "config.json").exists():  # (a run killed before its first checkpoint resumes from epoch 0)
            raise Prom3eError(f"{run}: nothing to resume (no prom3e run there); drop --resume to start a new run")
        io.check_output_dir(run, inputs=inputs, overwrite=True, what="run folder")
        return run
    if (run / "config.json").exists() and not overwrite:
        raise Prom3eError(f"{run} holds a prom3e run; pass --resume to continue it or --overwrite to replace it")
    io.check_output_dir(run, products=RUN_PRODUCTS, inputs=inputs, overwrite=overwrite, what="run folder")
    if overwrite and clean:
        io.remove_products(run, RUN_PRODUCTS)
    return run


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def save_checkpoint(run: str | os.PathLike, model_state: dict[str, torch.Tensor], opt: torch.optim.Optimizer,
                    state: dict) -> None:
    """Write ``run/last/`` (weights, optimiser, ``state.json`` with a SHA-256 manifest) as one
    directory, complete before the switch."""
    def write(folder: Path) -> None:
        save_tensors(folder / "model.safetensors", model_state)
        opt_tensors, opt_meta = optimizer_tensors(opt)
        save_tensors(folder / "optimizer.safetensors", opt_tensors)
        manifest = {name: file_sha256(folder / name) for name in ("model.safetensors", "optimizer.safetensors")}
        write_json(folder / "state.json", {**state, "optimizer": opt_meta, "manifest": manifest})

    io.commit_dir(Path(run) / "last", write)


def read_checkpoint_state(run: str | os.PathLike) -> dict:
    """``run/last/state.json``, after checking the files against its manifest."""
    last = Path(run) / "last"
    state = read_json(last / "state.json")
    for name, digest in state.get("manifest", {}).items():
        if not (last / name).exists() or file_sha256(last / name) != digest:
            raise Prom3eError(f"{last / name}: does not match the checkpoint's manifest (damaged checkpoint)")
    return state


def table_fingerprint(table: Any, label_column: str | None = None) -> dict:
    """What identifies a training table cheaply: rows, schema and a hash of the presence mask,
    of up to 1024 evenly spaced rows of every modality and of the label column."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(table.present).tobytes())
    sample = np.unique(np.linspace(0, len(table) - 1, min(len(table), 1024)).astype(np.int64))
    for f in table.features:
        h.update(np.ascontiguousarray(f[sample]).tobytes())
    if label_column is not None:
        h.update("\x1f".join(map(str, np.asarray(table.label(label_column)).tolist())).encode())
    return {"rows": len(table), "modalities": list(table.modalities), "dims": list(table.dims),
            "sha256": h.hexdigest()}
