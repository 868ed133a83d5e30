"""TaxaBind wiring, with tiny stand-in backbones (the real weights need the hub)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import types
import wave

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from prom3e.encoders import get_encoder, taxabind
from prom3e.encoders.location import equal_earth
from prom3e.errors import Prom3eError


@pytest.fixture
def fake_open_clip(monkeypatch):
    """An ``open_clip`` module whose models are tiny; records the names it was asked for."""
    calls: list[str] = []

    class TinyClip(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vis, self.tok = torch.nn.Linear(3, 24), torch.nn.EmbeddingBag(128, 24)

        def encode_image(self, x):
            return self.vis(x.mean((2, 3)))

        def encode_text(self, tokens):
            return self.tok(tokens)

    def create_model_and_transforms(name):
        calls.append(name)
        if "missing" in name:
            raise RuntimeError("404 Client Error: repository not found")
        torch.manual_seed(0)
        pre = lambda im: torch.from_numpy(  # noqa: E731
            np.asarray(im.resize((8, 8)), np.float32).transpose(2, 0, 1) / 255)
        return TinyClip(), pre, pre

    def get_tokenizer(name):
        return lambda texts: torch.tensor([[ord(c) % 128 for c in (t + " " * 12)[:12]]
                                           for t in texts])

    mod = types.ModuleType("open_clip")
    mod.create_model_and_transforms = create_model_and_transforms
    mod.get_tokenizer = get_tokenizer
    monkeypatch.setitem(sys.modules, "open_clip", mod)
    taxabind._open_clip.cache_clear()
    yield calls
    taxabind._open_clip.cache_clear()


def test_image_and_text_through_open_clip(fake_open_clip, tmp_path):
    from skimage import data

    model_dir = tmp_path / "taxabind-vit-b-16"
    model_dir.mkdir()
    ref = f"local-dir:{model_dir}"
    img = get_encoder("taxabind_image", model=ref)
    x = img.encode([data.coffee(), data.chelsea(), str(tmp_path / "none.jpg")])
    assert img.dim == x.shape[1] == 24
    np.testing.assert_allclose(np.linalg.norm(x[:2], axis=1), 1, atol=1e-5)
    assert np.isnan(x[2]).all()
    txt = get_encoder("taxabind_text", model=ref)
    names = ["Plantae Tracheophyta Magnoliopsida Fagales Fagaceae Quercus agrifolia",
             "Animalia Chordata Aves Passeriformes Corvidae Corvus corax", ""]
    y = txt.encode(names)
    assert txt.dim == 24 and np.isnan(y[2]).all()
    np.testing.assert_array_equal(y[:2], txt.encode(names[:2]))
    assert fake_open_clip == [ref]  # image and text share one loaded model
    get_encoder("taxabind_text").encode(["a"])
    assert fake_open_clip[-1] == "hf-hub:MVRL/taxabind-vit-b-16"
    with pytest.raises(Prom3eError, match="no such model folder"):
        get_encoder("taxabind_image", model=f"local-dir:{tmp_path / 'nope'}").prepare()
    with pytest.raises(Prom3eError, match="cannot load 'hf-hub:x/missing'.*local-dir"):
        get_encoder("taxabind_text", model="hf-hub:x/missing").prepare()


def test_open_clip_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    taxabind._open_clip.cache_clear()
    with pytest.raises(Prom3eError, match=r"prom3e\[taxabind\]"):
        get_encoder("taxabind_image").prepare()


def _geo_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s: dict[str, torch.Tensor] = {}
    for i, sigma in enumerate((1.0, 16.0)):
        p = f"location_encoder.LocEnc{i}."  # a wrapped checkpoint: any prefix is accepted
        s[p + "capsule.0.b"] = torch.randn(8, 2, generator=g) * sigma
        for k, (o, n) in {"capsule.1": (16, 16), "capsule.3": (16, 16), "capsule.5": (16, 16),
                          "head.0": (12, 16)}.items():
            s[p + k + ".weight"] = torch.randn(o, n, generator=g) / 4
            s[p + k + ".bias"] = torch.randn(o, generator=g) / 4
    return s


def _geo_reference(state: dict[str, torch.Tensor], latlon: torch.Tensor) -> torch.Tensor:
    v = equal_earth(latlon)
    out = 0
    for i in range(2):
        w = {k.split(f"LocEnc{i}.")[1]: t for k, t in state.items() if f"LocEnc{i}." in k}
        vp = 2 * math.pi * v @ w["capsule.0.b"].T
        h = torch.cat([torch.cos(vp), torch.sin(vp)], 1)
        for k in ("capsule.1", "capsule.3", "capsule.5"):
            h = F.relu(F.linear(h, w[k + ".weight"], w[k + ".bias"]))
        out = out + F.linear(h, w["head.0.weight"], w["head.0.bias"])
    return out


def _save(folder, state, config):
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))


def test_location_from_a_local_ecogeo_folder(tmp_path):
    state = _geo_state()
    _save(tmp_path / "ecogeo", state, {"sigma": [1, 16], "encoded_size": 8, "dim": 12})
    enc = get_encoder("taxabind_loc", model=f"local-dir:{tmp_path / 'ecogeo'}", normalize=False)
    pts = [(36.99, -122.06), (-33.9, 151.2), (95.0, 0.0)]
    x = enc.encode(pts)
    assert enc.dim == 12 and np.isnan(x[2]).all()
    ref = _geo_reference(state, torch.tensor(pts[:2], dtype=torch.float32))
    np.testing.assert_allclose(x[:2], ref.numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(Prom3eError, match="needs model.safetensors"):
        get_encoder("taxabind_loc", model=f"local-dir:{tmp_path}").prepare()


@pytest.mark.skipif(importlib.util.find_spec("geoclip") is None, reason="geoclip not installed")
def test_geoclip_weights_through_the_ecogeo_loader(tmp_path):
    from prom3e.encoders.location import geoclip_weights_path

    state = torch.load(geoclip_weights_path(), map_location="cpu", weights_only=True)
    _save(tmp_path / "geo", {k: v.contiguous() for k, v in state.items()}, {})
    pts = [(36.99, -122.06), (48.85, 2.35)]
    a = get_encoder("taxabind_loc", model=f"local-dir:{tmp_path / 'geo'}").encode(pts)
    b = get_encoder("geoclip").encode(pts)
    np.testing.assert_allclose(a, b / np.linalg.norm(b, axis=1, keepdims=True), atol=1e-5)


def test_environment_from_a_local_ecoclim_folder(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {"feats.0.weight": torch.randn(16, 5, generator=g),
             "feats.0.bias": torch.randn(16, generator=g),
             "class_emb.weight": torch.randn(10, 16, generator=g)}
    for layer in (2, 3):
        for w in ("w1", "w2"):
            state[f"feats.{layer}.{w}.weight"] = torch.randn(16, 16, generator=g) / 4
            state[f"feats.{layer}.{w}.bias"] = torch.randn(16, generator=g) / 4
    _save(tmp_path / "ecoclim", state, {"num_inputs": 5, "num_filts": 16, "depth": 2})
    enc = get_encoder("taxabind_env", model=f"local-dir:{tmp_path / 'ecoclim'}", n_inputs=5)
    cov = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    x = enc.encode([cov[0], cov[1], [1, 2, 3]])
    assert enc.dim == 16 and np.isnan(x[2]).all()
    h = F.relu(F.linear(torch.from_numpy(cov[:2]), state["feats.0.weight"], state["feats.0.bias"]))
    for layer in (2, 3):
        p = f"feats.{layer}."
        y = F.relu(F.linear(h, state[p + "w1.weight"], state[p + "w1.bias"]))
        h = h + F.relu(F.linear(y, state[p + "w2.weight"], state[p + "w2.bias"]))
    np.testing.assert_allclose(x[:2], F.normalize(h, dim=-1).numpy(), atol=1e-5)
    with pytest.raises(Prom3eError, match="takes 5 covariates, the spec gives 20"):
        get_encoder("taxabind_env", model=f"local-dir:{tmp_path / 'ecoclim'}",
                    n_inputs=20).prepare()


def test_hub_failures_become_one_line_errors(monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    taxabind._ecogeo.cache_clear()
    with pytest.raises(Prom3eError, match="cannot load 'hf-hub:MVRL/ecogeo'.*local-dir:PATH"):
        get_encoder("taxabind_loc").prepare()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:At least one mel filter")
def test_sat_and_sound_through_tiny_transformers_models(tmp_path):
    tf = pytest.importorskip("transformers")
    from skimage import data

    vision = tf.CLIPVisionModelWithProjection(tf.CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=16, projection_dim=20))
    vision.save_pretrained(tmp_path / "ecosat")
    sat = get_encoder("taxabind_sat", model=f"local-dir:{tmp_path / 'ecosat'}", resize=32,
                      crop=32)
    x = sat.encode([data.astronaut(), data.coffee(), None])
    assert sat.dim == 20 and np.isnan(x[2]).all()
    np.testing.assert_allclose(np.linalg.norm(x[:2], axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(x[:2], sat.encode([data.astronaut(), data.coffee()]))

    clap = tf.ClapAudioModelWithProjection(tf.ClapAudioConfig(
        spec_size=64, num_mel_bins=16, window_size=4, depths=[1, 1], num_attention_heads=[1, 1],
        patch_embeds_hidden_size=8, hidden_size=16, projection_dim=10,
        projection_hidden_size=16, patch_size=4, patch_stride=(4, 4), enable_fusion=False))
    clap.save_pretrained(tmp_path / "ecosound")
    tf.ClapFeatureExtractor(feature_size=16, sampling_rate=8000, hop_length=160,
                            max_length_s=1, fft_window_size=256, nb_max_frames=64
                            ).save_pretrained(tmp_path / "ecosound")
    wav = tmp_path / "call.wav"
    with wave.open(str(wav), "wb") as w:  # 0.5 s of a 440 Hz tone at 16 kHz, stereo
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        tone = (np.sin(2 * np.pi * 440 * np.arange(8000) / 16000) * 8000).astype("<i2")
        w.writeframes(np.repeat(tone, 2).tobytes())
    (tmp_path / "bad.wav").write_bytes(b"RIFF....")
    snd = get_encoder("taxabind_sound", model=f"local-dir:{tmp_path / 'ecosound'}",
                      sample_rate=8000, max_seconds=1, truncation="rand_trunc")
    y = snd.encode([str(wav), str(tmp_path / "bad.wav"), str(wav)])
    assert snd.dim == 10 and np.isnan(y[1]).all()
    np.testing.assert_allclose(y[0], y[2], atol=1e-6)
    assert taxabind.load_audio(wav, 8000).shape == (4000,)
