"""Sharing a model: ``prom3e export`` folders, ``local-dir:`` and ``hf-hub:`` references.

Hub references are tested offline against a Hugging Face cache folder laid out as
``huggingface_hub`` lays it out (blobs, snapshots/<commit>, refs/<branch or tag>), which the
library's own ``scan_cache_dir`` must recognise: no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from prom3e.api import Fuser
from prom3e.cli import main
from prom3e.errors import Prom3eError
from prom3e.export import export_model
from prom3e.hub import parse_ref, resolve_folder

hf = pytest.importorskip("huggingface_hub", reason="hub references need huggingface_hub (prom3e[hub])")
hf_constants = pytest.importorskip("huggingface_hub.constants")

COMMITS = ("a" * 40, "b" * 40)


def _outputs(fuser: Fuser, table) -> list[torch.Tensor]:
    post = fuser.encode(table)
    recon = fuser.reconstruct(table, n_samples=2, seed=3)
    return [post.mu, post.logvar, *recon.values()]


def _same(a: Fuser, b: Fuser, table) -> None:
    for x, y in zip(_outputs(a, table), _outputs(b, table), strict=True):
        assert torch.equal(x, y)


def _card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def fake_hub_cache(cache: Path, repo: str, folder: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """Put ``folder`` into a Hugging Face cache as ``repo`` at ``commit`` (the library's layout:
    content-addressed blobs, a snapshot of relative symlinks, refs naming the commit)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (root / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return root / "snapshots" / commit


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """``HF_HUB_CACHE`` = a tmp folder, ``HF_HUB_OFFLINE=1`` (env for subprocesses, constants here)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "tiny-prom3e"
    export_model(tiny_run, out, name="lab/tiny-prom3e", license="cc-by-4.0", dataset="synthetic")
    return out


def test_export_folder_loads_with_identical_outputs(tiny_run, exported, small_table):
    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md", "config.json", "metrics.json", "model.safetensors", "schema.json"]
    table = small_table.take(np.arange(64))
    run = Fuser.load(tiny_run, device="cpu", precision="fp32")
    _same(run, Fuser.load(f"local-dir:{exported}", device="cpu", precision="fp32"), table)
    _same(run, Fuser.load(exported, device="cpu", precision="fp32"), table)


def test_model_card(tiny_run, exported):
    front, body = _card(exported)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert front["license"] == "cc-by-4.0" and front["library_name"] == "prom3e"
    assert front["datasets"] == ["synthetic"]
    p = front["prom3e"]
    schema = json.loads((tiny_run / "schema.json").read_text())["modalities"]
    assert p["modalities"] == schema
    assert p["metrics"]["training"]["best_val_r1_mean"] == metrics["best_val_r1_mean"]
    assert p["data"]["train_rows"] == metrics["train_rows"]
    assert 'Fuser.load("hf-hub:lab/tiny-prom3e")' in body
    assert "prom3e evaluate --model hf-hub:lab/tiny-prom3e" in body
    assert f"| {schema[0]['name']} | {schema[0]['dim']} |" in body
    card = hf.ModelCard.load(exported / "README.md")  # the Hub's own reader takes it
    assert card.data.license == "cc-by-4.0" and card.data.library_name == "prom3e"


def test_export_with_evaluation_and_encoders(tiny_run, tmp_path, small_parquet):
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "metrics.json").write_text(json.dumps({
        "retrieval": {"summary": {"n_pairs": 6, "r1_inversion_mean": 0.5}, "pairs": []},
        "settings": {"seed": 0}}))
    out = export_model(tiny_run, tmp_path / "x", evaluation=ev, features=small_parquet)
    front, body = _card(out)
    assert front["license"] == "other" and "not stated by the exporter" in body
    assert front["prom3e"]["metrics"]["evaluation"] == {"retrieval": {"n_pairs": 6, "r1_inversion_mean": 0.5}}
    assert "- retrieval: n_pairs 6, r1_inversion_mean 0.5000" in body
    assert json.loads((out / "evaluation.json").read_text())["retrieval"]["summary"]["n_pairs"] == 6
    assert 'Fuser.load("local-dir:' in body  # no --name: the card loads a local copy


def test_export_refuses_to_overwrite_or_nest(tiny_run, tmp_path, capsys):
    out = tmp_path / "exp"
    argv = ["export", "--model", str(tiny_run), "--out", str(out)]
    assert main(argv) == 0
    before = (out / "README.md").read_text()
    assert main([*argv, "--license", "mit"]) == 2
    assert "exp: already exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert (out / "README.md").read_text() == before
    assert main([*argv, "--license", "not a licence", "--overwrite"]) == 2
    assert main([*argv, "--aligner", str(tmp_path / "nope"), "--overwrite"]) == 2  # fails before writing
    assert (out / "README.md").read_text() == before
    assert main([*argv, "--license", "mit", "--overwrite"]) == 0
    assert _card(out)[0]["license"] == "mit"
    assert main(["export", "--model", str(tiny_run), "--out", str(tiny_run / "share")]) == 2
    assert "must lie outside the run folder" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


@pytest.mark.parametrize("ref, match", [
    ("hf-hub:", "not a hub reference"), ("hf-hub:a/b/c", "not a hub reference"),
    ("hf-hub:a/b@", "not a hub reference"), ("local-dir:/no/such/dir", "no such model folder"),
])
def test_bad_references(ref, match):
    with pytest.raises(Prom3eError, match=match):
        parse_ref(ref)


def test_references_parse():
    r = parse_ref("hf-hub:lab/m@v1.0")
    assert (r.kind, r.where, r.revision) == ("hub", "lab/m", "v1.0")
    assert parse_ref("MVRL/ecogeo").where == "MVRL/ecogeo"  # encoders: a bare name is a hub repo


def test_hf_hub_reference_from_the_offline_cache(tiny_run, exported, small_table, offline_cache, capsys):
    snap = fake_hub_cache(offline_cache, "lab/tiny-prom3e", exported, COMMITS[0])
    snap_v1 = fake_hub_cache(offline_cache, "lab/tiny-prom3e", exported, COMMITS[1], refs=("v1",))
    info = hf.scan_cache_dir(offline_cache)  # the library recognises the layout
    (repo,) = info.repos
    assert repo.repo_id == "lab/tiny-prom3e" and {r.commit_hash for r in repo.revisions} == set(COMMITS)
    table = small_table.take(np.arange(64))
    run = Fuser.load(tiny_run, device="cpu", precision="fp32")
    for ref in ("hf-hub:lab/tiny-prom3e", "hf-hub:lab/tiny-prom3e@v1", f"hf-hub:lab/tiny-prom3e@{COMMITS[1]}"):
        _same(run, Fuser.load(ref, device="cpu", precision="fp32"), table)
    assert resolve_folder("hf-hub:lab/tiny-prom3e") == snap
    assert resolve_folder("hf-hub:lab/tiny-prom3e@v1") == snap_v1
    with pytest.raises(Prom3eError, match="cannot load 'hf-hub:lab/tiny-prom3e@v2' .*local-dir:PATH"):
        Fuser.load("hf-hub:lab/tiny-prom3e@v2")
    out = offline_cache.parent / "r.parquet"
    data = offline_cache.parent / "t.parquet"
    from prom3e.data.table import write_parquet

    write_parquet(table, data)
    assert main(["reconstruct", "--model", "hf-hub:lab/tiny-prom3e@v1", "--data", str(data), "--target",
                 "text", "--out", str(out), "--device", "cpu"]) == 0
    assert main(["reconstruct", "--model", "hf-hub:lab/absent", "--data", str(data), "--target", "text",
                 "--out", str(out.with_name("other.parquet"))]) == 2
    assert "cannot load 'hf-hub:lab/absent'" in capsys.readouterr().err


def test_bundled_aligner(tmp_path, small_table):
    from prom3e.align import AlignConfig, fit_aligner
    from prom3e.train.loop import TrainConfig, train

    rng = np.random.default_rng(0)
    raw = small_table.select(["image", "loc", "text"]).take(np.arange(300))
    raw.features = [np.where(raw.present[:, i, None], f @ rng.normal(size=(16, d)).astype(np.float32), 0)
                    for i, (f, d) in enumerate(zip(raw.features, (24, 8, 12), strict=True))]
    aligner = fit_aligner(raw, "image", config=AlignConfig(dim=16, epochs=1, hidden=32), progress=False)
    aligner.save(tmp_path / "align")
    train(aligner.transform(raw), tmp_path / "run", TrainConfig(epochs=1, model="tiny", batch_size=64,
                                                                precision="fp32"), progress=False)
    out = export_model(tmp_path / "run", tmp_path / "exp", aligner=tmp_path / "align")
    assert sorted(p.name for p in (out / "aligner").iterdir()) == ["config.json", "model.safetensors"]
    front, body = _card(out)
    assert front["prom3e"]["aligner"]["anchor"] == "image" and 'aligner="bundled"' in body
    chained = Fuser.load(tmp_path / "run", precision="fp32", aligner=tmp_path / "align")
    _same(chained, Fuser.load(f"local-dir:{out}", precision="fp32", aligner="bundled"), raw)
    with pytest.raises(Prom3eError, match="bundles no aligner"):
        Fuser.load(tmp_path / "run", aligner="bundled")


@pytest.mark.slow
def test_cli_reads_the_cache_named_by_the_environment(exported, small_parquet, offline_cache, tmp_path):
    """A fresh process: HF_HUB_CACHE and HF_HUB_OFFLINE as a user sets them."""
    fake_hub_cache(offline_cache, "lab/tiny-prom3e", exported, COMMITS[0])
    out = tmp_path / "text.parquet"
    r = subprocess.run([sys.executable, "-m", "prom3e.cli", "reconstruct", "--model", "hf-hub:lab/tiny-prom3e",
                        "--data", str(small_parquet), "--target", "text", "--out", str(out), "--device", "cpu"],
                       capture_output=True, text=True, env={**os.environ}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.exists()
