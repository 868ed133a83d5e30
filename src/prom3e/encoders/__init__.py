"""Stage-1 encoders: raw observations → feature vectors (see :mod:`prom3e.encoders.base`).

``get_encoder(name, **options)`` builds one; ``list_encoders()`` lists them. Backends
(sentence-transformers, EfficientNet, open_clip, …) are imported only when used.
"""

from prom3e.encoders.base import Encoder
from prom3e.encoders.registry import get_encoder, list_encoders, register

__all__ = ["Encoder", "get_encoder", "list_encoders", "register"]
