"""TaxaBind's encoders (Sastry et al., WACV 2025), the paper's stage-1 recipe.

Model references (resolved by :mod:`prom3e.hub`): ``hf-hub:NAME[@REVISION]`` (or a bare hub
name) downloads from the Hugging Face hub; ``local-dir:PATH`` loads a folder you downloaded
before. Defaults:

- image, text: open_clip ``hf-hub:MVRL/taxabind-vit-b-16`` (BioCLIP fine-tuned), 512-d
- satellite: ``MVRL/ecosat`` (transformers ``CLIPVisionModelWithProjection``), 512-d
- location: ``MVRL/ecogeo`` (GeoCLIP-style; loaded into our module), 512-d
- environment: ``MVRL/ecoclim`` (SINR residual MLP; loaded into our module), 512-d
- audio: ``MVRL/ecosound`` (transformers ``ClapAudioModelWithProjection``, 48 kHz, 10 s,
  repeat-pad, fusion), 512-d

All outputs are L2-normalised (TaxaBind's space is cosine). Needs ``pip install
'prom3e[taxabind]'`` (open_clip, torchvision) for image/text, ``transformers`` for sat and
audio, and the hub or a local copy of the weights. The test suite checks the wiring with
tiny stand-in backbones; the real weights were not run in this project's CI.
"""

from __future__ import annotations

import wave
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from prom3e.encoders.base import Encoder, l2_normalize, require
from prom3e.encoders.environment import parse_vectors, residual_mlp
from prom3e.encoders.image import load_images, open_image
from prom3e.encoders.location import LocationNet, _encode_latlon
from prom3e.errors import Prom3eError
from prom3e.hub import hub_file, load_error, parse_ref

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
OPEN_CLIP_NAME = "hf-hub:MVRL/taxabind-vit-b-16"


def _file(ref: str, filename: str) -> str:
    """A file of a hub repo or local folder."""
    return hub_file(ref, filename)


def _state_dict(ref: str) -> dict:
    from safetensors.torch import load_file

    return load_file(_file(ref, "model.safetensors"))


def _from_pretrained(cls: Any, ref: str):
    r = parse_ref(ref)
    try:
        if r.kind == "local":
            return cls.from_pretrained(r.where, local_files_only=True)
        return cls.from_pretrained(r.where, revision=r.revision)
    except Exception as e:
        raise load_error(r, e) from None


class _TaxaBindBase(Encoder):
    def __init__(self, model: str, device: str, batch_size: int, normalize: bool = True) -> None:
        super().__init__(device, batch_size)
        self.model, self.normalize = model, bool(normalize)
        self.dim = 512

    def options(self) -> dict[str, Any]:
        return {"model": self.model, "normalize": self.normalize}

    def _finish(self, x: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (l2_normalize(x) if self.normalize else x.astype(np.float32)), ok


# --- image and text: open_clip ---------------------------------------------------------

@lru_cache(maxsize=2)
def _open_clip(model: str, device: str):
    oc = require("open_clip", "open_clip_torch", "taxabind")
    if model.startswith("local-dir:"):
        parse_ref(model)  # a clear error for a missing folder
    try:
        net, _, preprocess = oc.create_model_and_transforms(model)
        tokenizer = oc.get_tokenizer(model)
    except Exception as e:
        raise load_error(model, e) from None
    net = net.eval().to(device)
    import torch

    with torch.inference_mode():  # the joint space's width, probed once
        dim = int(net.encode_text(tokenizer(["a"]).to(device)).shape[-1])
    return net, preprocess, tokenizer, dim


class TaxaBindImageEncoder(_TaxaBindBase):
    name = "taxabind_image"
    input_kind = "image"

    def __init__(self, model: str = OPEN_CLIP_NAME, workers: int = 4, device: str = "cpu",
                 batch_size: int = 32, normalize: bool = True) -> None:
        super().__init__(model, device, batch_size, normalize)
        self.workers = int(workers)

    def prepare(self) -> None:
        self.dim = _open_clip(self.model, self.device)[3]

    def _encode(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        net, preprocess, _, _ = _open_clip(self.model, self.device)
        with ThreadPoolExecutor(max(1, min(self.workers, len(inputs)))) as ex:
            imgs = list(ex.map(open_image, inputs))
        ok = np.array([im is not None for im in imgs], bool)
        out = np.zeros((len(inputs), self.dim), np.float32)
        if ok.any():
            pix = torch.stack([preprocess(im) for im in imgs if im is not None]).to(self.device)
            with torch.inference_mode():
                out[ok] = net.encode_image(pix).float().cpu().numpy()
        return self._finish(out, ok)


class TaxaBindTextEncoder(_TaxaBindBase):
    """Taxonomic strings ("Animalia Chordata Aves … Genus species") → 512-d."""

    name = "taxabind_text"
    input_kind = "text"

    def __init__(self, model: str = OPEN_CLIP_NAME, device: str = "cpu",
                 batch_size: int = 256, normalize: bool = True) -> None:
        super().__init__(model, device, batch_size, normalize)

    def prepare(self) -> None:
        self.dim = _open_clip(self.model, self.device)[3]

    def _encode(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        net, _, tokenizer, _ = _open_clip(self.model, self.device)
        texts = [s.strip() if isinstance(s, str) else "" for s in inputs]
        ok = np.array([bool(t) for t in texts], bool)
        out = np.zeros((len(inputs), self.dim), np.float32)
        if ok.any():
            uniq, inv = np.unique(np.array(texts, dtype=object)[ok], return_inverse=True)
            with torch.inference_mode():
                f = net.encode_text(tokenizer(list(uniq)).to(self.device)).float().cpu().numpy()
            out[ok] = f[inv]
        return self._finish(out, ok)


# --- satellite: CLIP vision tower with projection ---------------------------------------

@lru_cache(maxsize=2)
def _clip_vision(model: str, device: str):
    tf = require("transformers", "transformers", "taxabind")
    return _from_pretrained(tf.CLIPVisionModelWithProjection, model).eval().to(device)


class TaxaBindSatEncoder(_TaxaBindBase):
    """Satellite tiles → 512-d (resize to a square, centre crop, CLIP mean/std)."""

    name = "taxabind_sat"
    input_kind = "image"

    def __init__(self, model: str = "hf-hub:MVRL/ecosat", resize: int = 224, crop: int = 224,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 workers: int = 4, device: str = "cpu", batch_size: int = 32,
                 normalize: bool = True) -> None:
        super().__init__(model, device, batch_size, normalize)
        self.resize, self.crop, self.workers = int(resize), int(crop), int(workers)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "resize": self.resize, "crop": self.crop,
                "mean": list(self.mean), "std": list(self.std)}

    def prepare(self) -> None:
        self.dim = int(_clip_vision(self.model, self.device).config.projection_dim)

    def _encode(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        net = _clip_vision(self.model, self.device)
        pix, ok = load_images(inputs, self.workers, resize=self.resize, crop=self.crop,
                              mean=self.mean, std=self.std, square=True, resample="bicubic")
        out = np.zeros((len(inputs), self.dim), np.float32)
        if ok.any():
            with torch.inference_mode():
                f = net(pixel_values=torch.from_numpy(pix[ok]).to(self.device)).image_embeds
            out[ok] = f.float().cpu().numpy()
        return self._finish(out, ok)


# --- location and environment: our modules, TaxaBind's weights --------------------------

@lru_cache(maxsize=2)
def _ecogeo(model: str, device: str):
    net, dim = LocationNet.from_geoclip_state(_state_dict(model))
    return net.to(device), dim


class TaxaBindLocationEncoder(_TaxaBindBase):
    """(lat, lon) degrees → 512-d with ``MVRL/ecogeo``."""

    name = "taxabind_loc"
    input_kind = "latlon"

    def __init__(self, model: str = "hf-hub:MVRL/ecogeo", device: str = "cpu",
                 batch_size: int = 4096, normalize: bool = True) -> None:
        super().__init__(model, device, batch_size, normalize)

    def prepare(self) -> None:
        self.dim = _ecogeo(self.model, self.device)[1]

    def _encode(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        net, dim = _ecogeo(self.model, self.device)
        return self._finish(*_encode_latlon(net, inputs, dim, self.device))


def sinr_from_state(state: dict):
    """A SINR ``ResidualFCNet`` state dict → our residual MLP (class head dropped)."""
    state = {k.split("feats.", 1)[1]: v for k, v in state.items() if "feats." in k}
    if "0.weight" not in state:
        raise Prom3eError("not a SINR state dict (no feats.0.weight)")
    hidden, n_inputs = (int(s) for s in state["0.weight"].shape)
    depth = len({k.split(".")[0] for k in state if ".w1." in k})
    net = residual_mlp(n_inputs, hidden, depth)
    net.feats.load_state_dict(state, strict=True)
    return net.eval(), n_inputs, hidden


@lru_cache(maxsize=2)
def _ecoclim(model: str, device: str):
    net, n_inputs, hidden = sinr_from_state(_state_dict(model))
    return net.to(device), n_inputs, hidden


class TaxaBindEnvEncoder(_TaxaBindBase):
    """Environmental covariates (20 scaled bioclim + elevation) → 512-d with ``MVRL/ecoclim``."""

    name = "taxabind_env"
    input_kind = "vector"

    def __init__(self, model: str = "hf-hub:MVRL/ecoclim", n_inputs: int | None = None,
                 device: str = "cpu", batch_size: int = 4096, normalize: bool = True) -> None:
        super().__init__(model, device, batch_size, normalize)
        self.n_inputs = n_inputs

    def prepare(self) -> None:
        _, n_inputs, self.dim = _ecoclim(self.model, self.device)
        if self.n_inputs is not None and self.n_inputs != n_inputs:
            raise Prom3eError(f"{self.model} takes {n_inputs} covariates, "
                              f"the spec gives {self.n_inputs}")

    def _encode(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        net, n_inputs, hidden = _ecoclim(self.model, self.device)
        x, ok = parse_vectors(inputs, n_inputs)
        out = np.zeros((len(inputs), hidden), np.float32)
        if ok.any():
            with torch.inference_mode():
                out[ok] = net(torch.from_numpy(x[ok]).to(self.device)).float().cpu().numpy()
        return self._finish(out, ok)


# --- audio: CLAP ------------------------------------------------------------------------

def load_audio(path: Any, rate: int) -> np.ndarray | None:
    """A sound file → mono ``float32`` at ``rate`` Hz (WAV via the standard library, other
    formats via ``soundfile`` when installed); ``None`` when unreadable."""
    from scipy.signal import resample_poly  # imported only when audio is read

    if not isinstance(path, str | Path) or not str(path):
        return None
    try:
        try:
            import soundfile

            x, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
        except ImportError:
            with wave.open(str(path), "rb") as w:
                sr, ch, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
                raw = w.readframes(w.getnframes())
            if width not in (2, 4):
                return None
            x = np.frombuffer(raw, "<i2" if width == 2 else "<i4").astype(np.float32)
            x = x.reshape(-1, ch) / float(2 ** (8 * width - 1))
    except (OSError, RuntimeError, EOFError, wave.Error):
        return None
    x = x.mean(1)
    if x.size == 0:
        return None
    if sr != rate:
        g = np.gcd(int(sr), int(rate))
        x = resample_poly(x, rate // g, int(sr) // g).astype(np.float32)
    return x


@lru_cache(maxsize=2)
def _clap(model: str, feature_extractor: str, device: str):
    tf = require("transformers", "transformers", "taxabind")
    net = _from_pretrained(tf.ClapAudioModelWithProjection, model).eval().to(device)
    fe = _from_pretrained(tf.ClapFeatureExtractor, feature_extractor)
    return net, fe


class TaxaBindSoundEncoder(_TaxaBindBase):
    """Sound files → 512-d with ``MVRL/ecosound`` (CLAP HTSAT, 48 kHz, 10 s, repeat-pad)."""

    name = "taxabind_sound"
    input_kind = "audio"

    def __init__(self, model: str = "hf-hub:MVRL/ecosound",
                 feature_extractor: str | None = None, sample_rate: int = 48000,
                 max_seconds: float = 10.0, padding: str = "repeatpad",
                 truncation: str = "fusion", device: str = "cpu", batch_size: int = 16,
                 normalize: bool = True) -> None:
        super().__init__(model, device, batch_size, normalize)
        # the model folder usually holds the feature extractor too; else CLAP's own
        self.feature_extractor = feature_extractor
        self.sample_rate, self.max_seconds = int(sample_rate), float(max_seconds)
        self.padding, self.truncation = padding, truncation

    def options(self) -> dict[str, Any]:
        return {**super().options(), "feature_extractor": self.feature_extractor,
                "sample_rate": self.sample_rate, "max_seconds": self.max_seconds,
                "padding": self.padding, "truncation": self.truncation}

    def _fe_ref(self) -> str:
        if self.feature_extractor:
            return self.feature_extractor
        r = parse_ref(self.model)
        if r.kind == "local" and (Path(r.where) / "preprocessor_config.json").exists():
            return self.model
        return "hf-hub:laion/clap-htsat-unfused"

    def prepare(self) -> None:
        self.dim = int(_clap(self.model, self._fe_ref(), self.device)[0].config.projection_dim)

    def _encode(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        net, fe = _clap(self.model, self._fe_ref(), self.device)
        waves = [load_audio(p, self.sample_rate) for p in inputs]
        ok = np.array([w is not None for w in waves], bool)
        out = np.zeros((len(inputs), self.dim), np.float32)
        if ok.any():
            feats = fe([w for w in waves if w is not None], sampling_rate=self.sample_rate,
                       max_length_s=self.max_seconds, padding=self.padding,
                       truncation=self.truncation, return_tensors="pt")
            feats = {k: v.to(self.device) for k, v in feats.items()}
            with torch.inference_mode():
                out[ok] = net(**feats).audio_embeds.float().cpu().numpy()
        return self._finish(out, ok)
