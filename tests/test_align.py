"""Stage-1 alignment: the SupCon loss, the trainer, saving/loading heads, ``prom3e align``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prom3e.align.aligner import load_aligner
from prom3e.align.supcon import LOGIT_SCALE_MAX, LogitScale, positives, supcon_loss
from prom3e.align.trainer import AlignConfig, fit_aligner
from prom3e.cli import main
from prom3e.data.labels import encode_labels
from prom3e.data.table import ModalTable, read_table, write_parquet
from prom3e.errors import Prom3eError

FAST = dict(epochs=25, batch_size=64, hidden=64, lr=3e-3, val_frac=0.2, patience=0)


def toy(n: int = 320, k: int = 8, seed: int = 0) -> ModalTable:
    """An anchor with k clusters, a nonlinear view of it ('b'), a weak 3-d class cue ('c')."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centers = rng.normal(size=(k, 32))
    image = centers[y] + 0.3 * rng.normal(size=(n, 32))
    b = np.tanh(image @ rng.normal(size=(32, 24)) / 4) + 0.05 * rng.normal(size=(n, 24))
    c = centers[y][:, :3] + 0.2 * rng.normal(size=(n, 3))
    present = rng.random((n, 3)) > np.array([0.1, 0.2, 0.3])
    present[~present.any(1), 0] = True
    feats = [np.where(present[:, [m]], f, 0).astype(np.float32)
             for m, f in enumerate((image, b, c))]
    split = np.where(np.arange(n) % 4 == 0, "test", "train")
    return ModalTable(["image", "b", "c"], feats, present,
                      {"species": np.array([f"sp{v}" for v in y], dtype=object), "split": split})


def test_supcon_loss():
    torch.manual_seed(0)
    a = F.normalize(torch.randn(16, 8), dim=-1)
    assert float(supcon_loss(a, a, torch.tensor(100.0))) < 0.05
    rand = float(supcon_loss(F.normalize(torch.randn(16, 8), dim=-1), a, torch.tensor(1.0)))
    assert rand == pytest.approx(math.log(16), rel=0.1)
    z = F.normalize(torch.randn(16, 8), dim=-1).requires_grad_()
    loss = supcon_loss(z, a, torch.tensor(10.0))
    assert loss.item() == pytest.approx(supcon_loss(a, z, torch.tensor(10.0)).item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_supcon_matches_a_loop_reference():
    """Same-label rows are positives in both directions; each row averages its positives."""
    torch.manual_seed(1)
    z, a = (F.normalize(torch.randn(6, 4), dim=-1) for _ in range(2))
    y = torch.tensor([0, 0, 1, 2, 1, 0])
    s = 7.0
    ref = 0.0
    for u, v in ((z, a), (a, z)):
        logits = s * u @ v.T
        for i in range(6):
            pos = [j for j in range(6) if y[j] == y[i]]
            ref += -sum(torch.log_softmax(logits[i], 0)[j] for j in pos) / len(pos) / 12
    assert supcon_loss(z, a, torch.tensor(s), y).item() == pytest.approx(float(ref), rel=1e-5)
    # without labels only the diagonal is positive: plain symmetric CLIP loss
    clip = 0.5 * (F.cross_entropy(s * z @ a.T, torch.arange(6))
                  + F.cross_entropy(s * a @ z.T, torch.arange(6)))
    assert supcon_loss(z, a, torch.tensor(s)).item() == pytest.approx(clip.item(), rel=1e-5)


def test_logit_scale_init_and_clamp():
    s = LogitScale()
    assert s().item() == pytest.approx(1 / 0.07)
    s.log_scale.data.fill_(10.0)
    assert s().item() == pytest.approx(100.0)
    s.clamp_()
    assert s.log_scale.item() == pytest.approx(LOGIT_SCALE_MAX)


def test_alignment_loss_falls_and_pairs_end_up_closer():
    t = toy()
    al = fit_aligner(t, "image", config=AlignConfig(**FAST), progress=False)
    rec = al.record["modalities"]["b"]
    assert rec["train_loss"][-1] < 0.7 * rec["train_loss"][0]
    both = np.flatnonzero(t.present[:, 0] & t.present[:, 1])
    assert rec["pairs"] == len(both)  # only rows with both the modality and the anchor
    z = al.transform(t)
    assert z.dims == [32, 32, 32]
    zi, zb = z.feature("image")[both], z.feature("b")[both]
    np.testing.assert_allclose(np.linalg.norm(zb, axis=1), 1, atol=1e-5)
    same = (zi * zb).sum(1).mean()
    rand = (zi * zb[np.random.default_rng(1).permutation(len(both))]).sum(1).mean()
    assert same > rand + 0.3
    assert rec["val_top1"] > 0.3  # chance is ~ 1/50
    assert not z.present[~t.present[:, 1], 1].any()  # missing stays missing
    assert (z.feature("b")[~t.present[:, 1]] == 0).all()


def test_labels_are_positives_and_help_the_weak_modality():
    t = toy()
    al = fit_aligner(t, "image", "species", AlignConfig(**FAST), progress=False)
    z = al.transform(t)
    rows = np.flatnonzero(t.present[:, 0] & t.present[:, 2])
    sim = z.feature("c")[rows] @ z.feature("image")[rows].T
    y = encode_labels(t.meta["species"])[0][rows]
    nn_same = (y[sim.argmax(1)] == y).mean()
    assert nn_same > 0.6  # 8 classes: chance 0.125
    codes, _ = encode_labels(np.array(["a", None, "b", "a", float("nan"), ""], dtype=object))
    assert codes[0] == codes[3] and (codes[[1, 4, 5]] == -1).all()  # no label: never a class
    pos = positives(torch.from_numpy(codes), 6, torch.device("cpu"))
    assert pos[0, 3] and not pos[1, 4] and pos[1, 1] and pos.sum() == 8  # unlabelled: own positive only


def test_fit_is_deterministic_and_roundtrips(tmp_path):
    t = toy(n=160)
    cfg = AlignConfig(**{**FAST, "epochs": 5})
    a1 = fit_aligner(t, "image", "species", cfg, progress=False)
    a2 = fit_aligner(t, "image", "species", cfg, progress=False)
    z1 = a1.transform(t)
    for f, g in zip(z1.features, a2.transform(t).features, strict=True):
        np.testing.assert_array_equal(f, g)
    a1.save(tmp_path / "ALIGN")
    cfg_json = json.loads((tmp_path / "ALIGN" / "config.json").read_text())
    assert cfg_json["anchor"] == "image" and cfg_json["dim"] == 32
    loaded = load_aligner(tmp_path / "ALIGN")
    for f, g in zip(z1.features, loaded.transform(t).features, strict=True):
        np.testing.assert_allclose(f, g, atol=1e-6)
    # a table with a subset of the modalities, in another order, works too
    sub = loaded.transform(t.select(["c", "image"]))
    np.testing.assert_allclose(sub.feature("c"), z1.feature("c"), atol=1e-6)


def test_aligner_errors(tmp_path):
    t = toy(n=80)
    al = fit_aligner(t, "image", config=AlignConfig(**{**FAST, "epochs": 1}), progress=False)
    bad = ModalTable(["b"], [np.zeros((3, 5), np.float32)], np.ones((3, 1), bool), source="x")
    with pytest.raises(Prom3eError, match="column 'b' has dim 5, the aligner expects 24"):
        al.transform(bad)
    other = ModalTable(["sound"], [np.zeros((3, 5), np.float32)], np.ones((3, 1), bool))
    with pytest.raises(Prom3eError, match="unknown modality 'sound'"):
        al.transform(other)
    with pytest.raises(Prom3eError, match="missing"):
        load_aligner(tmp_path / "nowhere")
    al.save(tmp_path / "A")
    (tmp_path / "A" / "config.json").write_text('{"format": "other"}')
    with pytest.raises(Prom3eError, match="not an aligner config"):
        load_aligner(tmp_path / "A")
    with pytest.raises(Prom3eError, match="unknown modality 'nope'"):
        fit_aligner(t, "nope", progress=False)
    with pytest.raises(Prom3eError, match="exceeds the anchor's dim"):
        fit_aligner(t, "image", config=AlignConfig(dim=64), progress=False)


def test_trainable_encoder_gets_its_tower(tmp_path):
    from prom3e.encoders import get_encoder

    rng = np.random.default_rng(0)
    enc = get_encoder("rff_location", n_features=8, hidden=32, out_dim=16)
    n = 120
    y = rng.integers(0, 4, n)
    latlon = np.stack([36 + y * 0.5 + rng.normal(0, 0.05, n), -122 + y * 0.5], 1)
    loc = enc.encode([tuple(p) for p in latlon])
    image = np.eye(4, 32)[y] * 3 + rng.normal(0, 0.2, (n, 32))
    t = ModalTable(["image", "loc"], [image.astype(np.float32), loc],
                   np.ones((n, 2), bool), {"species": y})
    al = fit_aligner(t, "image", "species", AlignConfig(**{**FAST, "epochs": 10}),
                     encoders={"loc": enc.config()}, progress=False)
    assert al.record["modalities"]["loc"]["head"] == "tower"
    assert "LocEnc0.0.weight" in "".join(al.heads["loc"].state_dict())
    al.save(tmp_path / "A")
    back = load_aligner(tmp_path / "A")
    np.testing.assert_allclose(back.transform(t).feature("loc"), al.transform(t).feature("loc"),
                               atol=1e-6)


def test_align_cli_end_to_end(tmp_path, capsys):
    t = toy()
    data = tmp_path / "features.parquet"
    write_parquet(t, data)
    out, model = tmp_path / "aligned.parquet", tmp_path / "ALIGN"
    argv = ["align", "--data", str(data), "--out", str(out), "--model-out", str(model),
            "--label", "species", "--fit-where", "split=train", "--epochs", "3",
            "--hidden", "32", "--dim", "16", "--no-progress"]
    assert main([*argv, "--anchor", "image"]) == 0
    printed = capsys.readouterr().out
    assert "aligned 3 modalities to 'image' in 16-d" in printed
    z = read_table(out)
    assert z.modalities == ["image", "b", "c"] and z.dims == [16, 16, 16]
    np.testing.assert_array_equal(z.present, t.present)
    for m in range(3):
        np.testing.assert_allclose(np.linalg.norm(z.features[m][z.present[:, m]], axis=1), 1,
                                   atol=1e-5)
    assert list(z.meta) == ["species", "split"]
    rec = load_aligner(model).record
    assert rec["fit_rows"] == int((t.meta["split"] == "train").sum())
    assert (model / "model.safetensors").exists()
    before = out.read_bytes()
    assert main([*argv, "--anchor", "image"]) == 2  # an existing output is not replaced silently
    assert "already exists; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == before
    assert main([*argv, "--anchor", "nope", "--overwrite"]) == 2
    assert "unknown modality 'nope'" in capsys.readouterr().err
    assert main([*argv, "--anchor", "image", "--fit-where", "split=never", "--overwrite"]) == 2
    assert "no row has split = 'never'" in capsys.readouterr().err
