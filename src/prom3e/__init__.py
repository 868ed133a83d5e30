"""prom3e: probabilistic multimodal embeddings with missing modalities."""

from prom3e.errors import Prom3eError

__version__ = "0.1.0"
__all__ = ["Fuser", "Prom3eError", "__version__"]


def __getattr__(name: str):
    # Lazy: `import prom3e` stays cheap; torch loads only when the API is used.
    if name == "Fuser":
        from prom3e.api import Fuser

        return Fuser
    raise AttributeError(name)
