"""Model references, written as open_clip and timm write them, resolved in one place.

- ``local-dir:PATH`` — a folder on this machine;
- ``hf-hub:ORG/NAME`` or ``hf-hub:ORG/NAME@REVISION`` (a branch, tag or commit) — a
  Hugging Face Hub repository, downloaded once by ``huggingface_hub`` into its cache
  (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``). With ``HF_HUB_OFFLINE=1`` only
  the cache is read; without a network the cache is used too, after a failed check;
- anything else: a plain path (trained models: ``Fuser.load``) or a hub name (encoders).

Used by ``Fuser.load`` (and so by every ``--model`` option), aligner folders and the
TaxaBind encoders. Needs ``huggingface_hub`` for hub references (``pip install
'prom3e[hub]'``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from prom3e.errors import Prom3eError

LOCAL, HUB = "local-dir:", "hf-hub:"


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: ``kind`` is ``"local"`` (``where`` a folder) or ``"hub"``
    (``where`` a repo id, ``revision`` its branch/tag/commit or ``None`` for the default)."""

    text: str
    kind: str
    where: str
    revision: str | None = None


def parse_ref(ref: str | os.PathLike, bare: str = "hub", what: str = "model folder") -> ModelRef:
    """Parse a reference; ``bare`` says what an unprefixed one is (``"hub"`` or ``"path"``).

    A local folder must exist (the error names it as ``what``)."""
    text = os.fspath(ref)
    if text.startswith(LOCAL) or (bare == "path" and not text.startswith(HUB)):
        path = Path(text.removeprefix(LOCAL)).expanduser()
        if not path.is_dir():
            raise Prom3eError(f"{path}: no such {what}" + (f" (from '{text}')" if text.startswith(LOCAL) else ""))
        return ModelRef(text, "local", str(path))
    name = text.removeprefix(HUB)
    name, _, revision = name.partition("@")
    if name.count("/") > 1 or not name.strip("/") or (_ and not revision):
        raise Prom3eError(f"'{text}': not a hub reference (want hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION)")
    return ModelRef(text, "hub", name, revision or None)


def load_error(ref: str | ModelRef, e: Exception) -> Prom3eError:
    """A hub/transformers failure (network, auth, missing file) → one line with the way out."""
    text = ref.text if isinstance(ref, ModelRef) else ref
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return Prom3eError(f"cannot load '{text}' ({first}); offline? download it and pass 'local-dir:PATH'")


def _hub():
    try:
        import huggingface_hub
    except ImportError as e:
        raise Prom3eError(f"hub references need the package 'huggingface_hub' "
                          f"(pip install 'prom3e[hub]'): {e}") from None
    return huggingface_hub


def hub_file(ref: str | ModelRef, filename: str) -> str:
    """One file of a reference (a hub repo or a local folder) as a local path."""
    ref = ref if isinstance(ref, ModelRef) else parse_ref(ref)
    if ref.kind == "local":
        p = Path(ref.where) / filename
        if not p.exists():
            raise Prom3eError(f"{p}: missing (a '{ref.text}' model folder needs {filename})")
        return str(p)
    hub = _hub()
    try:
        return hub.hf_hub_download(ref.where, filename, revision=ref.revision)
    except Exception as e:  # network, auth, missing file: all one message
        raise load_error(ref, e) from None


def resolve_folder(ref: str | os.PathLike, bare: str = "path", what: str = "model folder") -> Path:
    """A reference → a local folder holding the whole model (a hub repo: its cached snapshot)."""
    ref = parse_ref(ref, bare, what)
    if ref.kind == "local":
        return Path(ref.where)
    hub = _hub()
    try:
        return Path(hub.snapshot_download(ref.where, revision=ref.revision))
    except Exception as e:
        raise load_error(ref, e) from None
