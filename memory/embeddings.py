"""An offline ChromaDB embedding function built on the WordLlama weights that ship inside the wordllama wheel.

ChromaDB's default embedding function downloads an ONNX model on first use, which fails on machines without
internet, so every collection sregraph opens passes this function explicitly.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from tools.base import ToolError

if TYPE_CHECKING:
    from wordllama import WordLlamaInference  # type: ignore[import-untyped]

MODEL_CONFIG = "l2_supercat"
FULL_DIM = 256
"""The only width whose weights the wheel ships; smaller widths are Matryoshka truncations of it."""
DIMS = (64, 128, 256)

_models: dict[int, WordLlamaInference] = {}
_lock = threading.Lock()


def _import_wordllama() -> Any:
    """Import wordllama without letting it reconfigure the process's logging."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import wordllama

    # wordllama runs logging.basicConfig(level=INFO) at import time, which would make every library's INFO
    # records print to stderr in a process that never asked for it.
    root.handlers[:] = handlers
    root.setLevel(level)
    return wordllama


def load_model(dim: int = FULL_DIM) -> WordLlamaInference:
    """The WordLlama model truncated to `dim`, loaded from the installed package once per process."""
    if dim not in DIMS:
        raise ValueError(f"dim must be one of {DIMS}, got {dim}")
    with _lock:
        model = _models.get(dim)
        if model is None:
            wordllama = _import_wordllama()
            package_dir = Path(wordllama.__file__).parent
            try:
                # The wheel ships its tokenizer under `tokenizers/` while the default lookup wants
                # `tokenizer/`: naming the package as the cache dir finds it, and disabling downloads turns
                # a broken install into an error instead of a silent trip to Hugging Face.
                model = wordllama.WordLlama.load(
                    config=MODEL_CONFIG,
                    cache_dir=package_dir,
                    dim=FULL_DIM,
                    trunc_dim=None if dim == FULL_DIM else dim,
                    disable_download=True,
                )
            except FileNotFoundError as exc:
                raise ToolError(f"wordllama model files missing from {package_dir}: {exc}") from exc
            _models[dim] = model
        return model


@register_embedding_function
class WordLlamaEmbeddingFunction(EmbeddingFunction[Documents]):
    """Unit-length WordLlama sentence vectors (mean of static token embeddings), computed offline."""

    def __init__(self, dim: int = FULL_DIM) -> None:
        """Remember the width; the model itself loads on first use."""
        if dim not in DIMS:
            raise ValueError(f"dim must be one of {DIMS}, got {dim}")
        self.dim = dim

    def __call__(self, input: Documents) -> Embeddings:
        """One unit vector per document."""
        vectors = load_model(self.dim).embed(list(input), norm=False)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        # wordllama's own norm=True divides by zero for a text with no tokens; such a text gets a zero
        # vector instead of NaNs.
        vectors = vectors / np.maximum(norms, np.finfo(np.float32).tiny)
        return list(vectors.astype(np.float32))

    @staticmethod
    def name() -> str:
        """Name under which ChromaDB records this function in a collection's configuration."""
        return "sregraph_wordllama"

    def default_space(self) -> Space:
        """Cosine: the vectors are unit length and only their direction carries meaning."""
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        """Spaces in which these vectors make sense."""
        return ["cosine", "ip", "l2"]

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> WordLlamaEmbeddingFunction:
        """Rebuild the function ChromaDB persisted with a collection."""
        WordLlamaEmbeddingFunction.validate_config(config)
        return WordLlamaEmbeddingFunction(dim=int(config.get("dim", FULL_DIM)))

    def get_config(self) -> dict[str, Any]:
        """What ChromaDB persists so a reopened collection embeds queries the same way."""
        return {"model": MODEL_CONFIG, "dim": self.dim}

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        """Reject a persisted config this code cannot reproduce."""
        model = config.get("model", MODEL_CONFIG)
        if model != MODEL_CONFIG:
            raise ValueError(f"unsupported wordllama model {model!r}, expected {MODEL_CONFIG!r}")
        if int(config.get("dim", FULL_DIM)) not in DIMS:
            raise ValueError(f"dim must be one of {DIMS}, got {config.get('dim')}")

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        """Changing the model or width would make stored vectors incomparable with new ones."""
        for key in ("model", "dim"):
            if key in new_config and new_config[key] != old_config.get(key):
                raise ValueError(f"cannot change {key} of an existing collection's embedding function")
