"""Share a trained model: a run → one self-contained folder, as a Hugging Face model repo holds it.

The folder is itself a loadable run (``Fuser.load("local-dir:DIR")`` gives the same outputs
as the run) and ``hf upload ORG/NAME DIR .`` publishes it as is::

    config.json  schema.json  model.safetensors   the model (the run's best or last epoch)
    metrics.json                                   the run's training record
    aligner/config.json  aligner/model.safetensors the stage-1 heads, when given
    evaluation.json                                'prom3e evaluate' metrics, when given
    encoders.json                                  the encoders 'prom3e embed' recorded, when known
    README.md                                      the model card (YAML front matter + text)

The folder is built beside ``out`` and renamed into place: an existing export is replaced
only with ``overwrite`` and never left half-written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prom3e.errors import Prom3eError
from prom3e.hub import resolve_folder

TAGS = ["prom3e", "multimodal", "missing-modalities", "probabilistic-embeddings", "ecology"]


def _json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise Prom3eError(f"{path}: unreadable JSON ({e})") from None


def _check_out(run: Path, out: Path, overwrite: bool) -> None:
    r, o = run.resolve(), out.resolve()
    if o == r or r in o.parents or o in r.parents:
        raise Prom3eError(f"{out}: the export folder must lie outside the run folder {run} (and not hold it)")
    if out.exists() and not overwrite:
        raise Prom3eError(f"{out}: already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise Prom3eError(f"{out}: exists and is not a folder")


def _best_epoch(metrics: dict | None) -> dict | None:
    hist = (metrics or {}).get("history") or []
    scored = [h for h in hist if isinstance(h.get("val_r1_mean"), int | float)]
    return max(scored, key=lambda h: h["val_r1_mean"]) if scored else None  # max keeps the first


def _summaries(evaluation: dict | None) -> dict[str, dict]:
    """Each task's scalar summary of an evaluation's metrics.json."""
    out: dict[str, dict] = {}
    for task, block in (evaluation or {}).items():
        if isinstance(block, dict) and isinstance(block.get("summary"), dict):
            out[task] = {k: v for k, v in block["summary"].items()
                         if isinstance(v, int | float | str | bool) or v is None}
    return out


def model_card(*, name: str, modalities: list[str], dims: list[int], config: dict, metrics: dict | None,
               evaluation: dict | None, encoders: dict, aligner: dict | None, license: str,
               dataset: str | None, features: str | None) -> str:
    """The README.md of an export: YAML front matter (Hub metadata) + a short text."""
    import yaml

    best = _best_epoch(metrics)
    m = metrics or {}
    training = {k: m.get(k) for k in ("epochs", "best_val_r1_mean", "train_rows", "val_rows", "parameters")}
    if best:
        training["best_epoch"] = best.get("epoch")
        training["val_r1"] = best.get("val_r1")
    front: dict[str, Any] = {"license": license, "library_name": "prom3e", "tags": TAGS}
    if dataset:
        front["datasets"] = [dataset]
    front["prom3e"] = {
        "modalities": [{"name": n, "dim": d} for n, d in zip(modalities, dims, strict=True)],
        "architecture": config.get("train", {}).get("model"),
        "model": {k: v for k, v in (config.get("model") or {}).items() if k not in ("modalities", "dims")},
        "aligner": aligner,
        "encoders": encoders or None,
        "data": {"dataset": dataset, "features": features, "train_rows": m.get("train_rows"),
                 "val_rows": m.get("val_rows")},
        "metrics": {"training": training, "evaluation": _summaries(evaluation) or None},
    }
    head = "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n"
    ref = f"hf-hub:{name}" if "/" in name else "local-dir:PATH/TO/THIS/FOLDER"
    lines = [f"# {name}", "",
             "A prom3e fusion model (ProM3E: probabilistic multimodal embeddings "
             "with missing modalities). Given any subset of its modalities it returns a posterior "
             "(μ, σ) in one shared space and reconstructs the missing modalities' embeddings.", "",
             "## Modalities", "", "| modality | dim | encoder |", "| --- | --- | --- |"]
    for n, d in zip(modalities, dims, strict=True):
        enc = (encoders or {}).get(n, {})
        lines.append(f"| {n} | {d} | {enc.get('encoder', 'not recorded')} |")
    lines += ["", "Inputs are " + ("raw encoder features: the bundled stage-1 heads (`aligner/`, anchor "
              f"`{aligner['anchor']}`) map them into the model's space." if aligner else
              "embeddings in the model's aligned space (one column per modality, see the table)."), ""]
    lines += ["## Data", ""]
    lines.append(f"Dataset: {dataset or 'not stated'}. Feature table: {features or 'not recorded'}. "
                 f"Trained on {m.get('train_rows', '?')} rows, validated on {m.get('val_rows', '?')}.")
    lines += ["", "## Metrics", ""]
    if best:
        lines.append(f"Training record: best validation R@1 (mean over modalities) "
                     f"{m.get('best_val_r1_mean', float('nan')):.4f} at epoch {best.get('epoch')} of "
                     f"{m.get('epochs')}: each validation row's masked modality reconstructed from one "
                     f"visible modality and ranked among up to {m.get('val_rows')} validation rows "
                     f"(chance is about 1/{m.get('val_rows')}).")
        lines += ["", "| modality | validation R@1 |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" for k, v in (best.get("val_r1") or {}).items()]
    else:
        lines.append("No training record (metrics.json) was found in the run.")
    summaries = _summaries(evaluation)
    lines.append("")
    if summaries:
        lines.append("Held-out evaluation (`prom3e evaluate`, full numbers in `evaluation.json`):")
        for task, s in summaries.items():
            vals = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items())
            lines.append(f"- {task}: {vals}")
    else:
        lines.append("No held-out evaluation was exported (`prom3e export --eval DIR` adds one).")
    lines += ["", "## Licence", "",
              f"`{license}`" + (" (not stated by the exporter; ask the author before reuse)"
                                if license == "other" else "") + ". The data it was trained on may "
              "carry its own terms (e.g. per-record CC licences in GBIF and iNaturalist exports).", "",
              "## How to load", "", "```python", "from prom3e import Fuser", "",
              f'fuser = Fuser.load("{ref}"' + (', aligner="bundled"' if aligner else "") + ")",
              "post = fuser.encode(batch)              # μ, logσ² for each row's present modalities",
              "recon = fuser.reconstruct(batch)       # every modality, from what is present", "```", "",
              "```bash", f"prom3e evaluate --model {ref} --data test.parquet --out eval/"
              + (" --aligner bundled" if aligner else ""), "```", "",
              f"Offline, `{ref}` reads the Hugging Face cache (`HF_HUB_OFFLINE=1`); a downloaded copy of "
              "this folder loads as `local-dir:PATH`.", ""]
    return head + "\n" + "\n".join(lines)


def export_model(run: str | os.PathLike, out: str | os.PathLike, *, aligner: str | os.PathLike | None = None,
                 features: str | os.PathLike | None = None, evaluation: str | os.PathLike | None = None,
                 license: str = "other", name: str | None = None, dataset: str | None = None,
                 which: str = "best", overwrite: bool = False) -> Path:
    """Write the export folder ``out`` for ``run`` (any reference ``Fuser.load`` takes)."""
    from prom3e.api import Fuser

    if which not in ("best", "last"):
        raise Prom3eError(f"which must be 'best' or 'last', got {which!r}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", license or ""):
        raise Prom3eError(f"--license must be a licence identifier such as apache-2.0 or cc-by-4.0, got {license!r}")
    run_dir = resolve_folder(run, what="run folder")
    out = Path(out)
    _check_out(run_dir, out, overwrite)
    fuser = Fuser.load(run_dir, device="cpu", which=which, precision="fp32", aligner=aligner)  # validates all
    ev = None
    if evaluation is not None:
        ev_path = Path(evaluation)
        ev_path = ev_path / "metrics.json" if ev_path.is_dir() else ev_path
        ev = _json(ev_path)
        if ev is None:
            raise Prom3eError(f"{ev_path}: missing (give the folder 'prom3e evaluate --out' wrote)")
    encoders: dict = {}
    if features is not None:
        from prom3e.encoders.embed import encoder_configs

        if not Path(features).exists():
            raise Prom3eError(f"{features}: no such feature table")
        encoders = encoder_configs(features)
    config = _json(run_dir / "config.json") or {}
    metrics = _json(run_dir / "metrics.json")
    heads = fuser.aligner
    aligner_info = None if heads is None else {
        "anchor": heads.anchor, "dim": heads.dim,
        "modalities": [{"name": n, "in_dim": d} for n, d in heads.in_dims.items()]}
    card = model_card(name=name or out.resolve().name, modalities=fuser.modalities, dims=fuser.dims,
                      config=config, metrics=metrics, evaluation=ev, encoders=encoders,
                      aligner=aligner_info, license=license, dataset=dataset,
                      features=None if features is None else Path(features).name)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for f in ("config.json", "schema.json", "metrics.json"):
            if (run_dir / f).exists():
                shutil.copyfile(run_dir / f, tmp / f)
        weights = run_dir / ("model.safetensors" if which == "best" else "last/model.safetensors")
        shutil.copyfile(weights, tmp / "model.safetensors")
        if aligner is not None:
            src = run_dir / "aligner" if aligner == "bundled" else resolve_folder(aligner, what="aligner folder")
            (tmp / "aligner").mkdir()
            for f in ("config.json", "model.safetensors"):
                shutil.copyfile(src / f, tmp / "aligner" / f)
        if ev is not None:
            (tmp / "evaluation.json").write_text(json.dumps(ev, indent=1) + "\n")
        if encoders:
            (tmp / "encoders.json").write_text(json.dumps(encoders, indent=1) + "\n")
        (tmp / "README.md").write_text(card)
        tmp.chmod(0o777 & ~_umask())
        old = None
        if out.exists():  # --overwrite: swap in, then remove the old folder
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        try:
            tmp.rename(out)
        except OSError:
            if old is not None:
                old.rename(out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
