"""A sentence-transformers text encoder for inference through ONNX Runtime: exported once from
the model folder, fp32 or int8, kept beside it.

Runtimes (``model.runtime`` of the config):

- ``"torch"``: the SentenceTransformer itself (training always uses it).
- ``"onnx"``: its transformer and pooling exported with ``torch.onnx.export`` (batch and
  sequence axes dynamic, attention in its plain form so that onnxruntime's transformer
  optimiser fuses it), then optimised (attention, GELU, layer-norm fusions) where onnxruntime
  knows the architecture; fp32.
- ``"onnx-int8"``: that graph with its matrix products dynamically quantised (int8 weights per
  output channel, activations quantised per batch at run time; ``onnxruntime.quantization``).

Texts are tokenised by the model's own tokenizer, truncated at its ``max_seq_length`` and
encoded longest first in batches, as sentence-transformers does; the vectors come out
L2-normalised. Supported: a Transformer module, then mean or CLS pooling, then optionally
Normalize (what this project trains and saves); another layout is a ValueError that names it.

An export is one file, ``encoder.<runtime>.<fingerprint[:16]>.onnx`` (the fingerprint: the
sha256 of the transformer's weights, :func:`tripletkit._onnx.weights_fingerprint`), in the
model folder, or in ``$TRIPLETKIT_CACHE/onnx`` for the default encoder (inside an installed
package) and for a folder that cannot be written. It is built, checked and rebuilt as
:mod:`tripletkit._onnx` says (its probe: :data:`PROBE_TEXTS`).
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import _onnx
from .._onnx import check_runtime

EXPORT_FORMAT = "1"  # bump when the export, the optimisation or the quantisation changes
EXPORT_PREFIX = "encoder."
PROBE_TEXTS = ("a fixed probe sentence for the export check", "semantic search")
PROBE_TOLERANCE = 1e-3
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export_name(runtime: str, fingerprint: str) -> str:
    """The file name of an export."""
    return _onnx.export_name(EXPORT_PREFIX, runtime, fingerprint)


class OnnxTextEncoder:
    """A SentenceTransformer's encoding through an ONNX Runtime session.

    Attributes:
        model: the SentenceTransformer it was exported from (its tokenizer and settings).
        runtime: "onnx" or "onnx-int8".
        path: the ``.onnx`` file.
        session: the onnxruntime session.
    """

    def __init__(self, model: Any, runtime: str, path: Path, session: Any) -> None:
        self.model, self.runtime, self.path, self.session = model, runtime, path, session
        self.inputs = [i.name for i in session.get_inputs()]

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    def get_embedding_dimension(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None)
        return int((get or self.model.get_sentence_embedding_dimension)())

    def run(self, texts: list[str]) -> np.ndarray:
        """One batch: (len(texts), d) float32 unit vectors."""
        tokens = self.model.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_seq_length,
            return_tensors="np",
        )
        feed = {name: np.asarray(tokens[name], dtype=np.int64) for name in self.inputs}
        vectors = np.asarray(self.session.run(None, feed)[0], dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def encode(
        self, texts: list[str], batch_size: int = 64, show_progress_bar: bool = False, **_: Any
    ) -> np.ndarray:
        """(N, d) float32 unit vectors, longest texts first in batches of ``batch_size``
        (sentence-transformers' order, so padding is small); other keywords of
        ``SentenceTransformer.encode`` are accepted and ignored (the vectors are normalised
        numpy arrays either way)."""
        out = np.zeros((len(texts), self.get_embedding_dimension()), np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="encode", unit="batch", disable=not show_progress_bar):
            rows = order[start : start + batch_size]
            out[rows] = self.run([texts[i] for i in rows])
        return out


def load_onnx(model: Any, runtime: str, folder: str | Path | None) -> OnnxTextEncoder:
    """``model`` (a SentenceTransformer loaded from ``folder``; None: the default encoder)
    through ONNX Runtime, exported on first use and read from its file afterwards.

    Raises:
        ValueError: a runtime that is not an ONNX one; a module layout this export does not
            handle (naming it, with runtime 'torch' as the way out); onnxruntime or onnx
            missing (with the pip command); an export that fails its own checks, naming it.
    """
    if check_runtime(runtime, "runtime") == "torch":
        raise ValueError("runtime 'torch' runs the SentenceTransformer itself, not an export")
    pooling = pooling_of(model, folder)
    transformer = model[0].auto_model
    fingerprint = _onnx.weights_fingerprint(transformer)
    fallback = _cache_dir() / "onnx"
    where = _onnx.writable(Path(folder), fallback) if folder is not None else fallback
    fallback.mkdir(parents=True, exist_ok=True)
    path = where / export_name(runtime, fingerprint)
    expected = {
        _onnx.META_FORMAT: EXPORT_FORMAT,
        _onnx.META_RUNTIME: runtime,
        _onnx.META_WEIGHTS: fingerprint,
        "tripletkit.pooling": pooling,
    }

    def probe(session: Any) -> np.ndarray:
        return OnnxTextEncoder(model, runtime, path, session).run(list(PROBE_TEXTS))

    session = _onnx.open_export(
        path, expected, probe, lambda: build_export(model, pooling, runtime), PROBE_TOLERANCE
    )
    return OnnxTextEncoder(model, runtime, path, session)


def _cache_dir() -> Path:
    """``$TRIPLETKIT_CACHE`` or ``~/.cache/tripletkit``."""
    return Path(os.environ.get("TRIPLETKIT_CACHE") or Path.home() / ".cache" / "tripletkit")


def pooling_of(model: Any, folder: str | Path | None) -> str:
    """ "mean" or "cls": the pooling of a Transformer -> Pooling [-> Normalize] model.

    Raises:
        ValueError: another layout or pooling, naming the folder and what it holds.
    """
    kinds = [type(module).__name__ for module in model]
    where = folder if folder is not None else "the default encoder"
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        raise ValueError(
            f"{where}: the ONNX runtimes export Transformer, Pooling[, Normalize]; this model "
            f"is {', '.join(kinds)}: use model.runtime=torch"
        )
    mode = model[1].get_config_dict().get("pooling_mode")
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if mode not in ("mean", "cls"):
        raise ValueError(
            f"{where}: the ONNX runtimes export mean or CLS pooling, not {mode!r}: use "
            "model.runtime=torch"
        )
    return str(mode)


class _Pooled(torch.nn.Module):
    """The transformer and its pooling as one module of the token tensors."""

    def __init__(self, transformer: torch.nn.Module, pooling: str, names: list[str]) -> None:
        super().__init__()
        self.transformer, self.pooling, self.names = transformer, pooling, names

    def forward(self, *tokens: torch.Tensor) -> torch.Tensor:
        feed = dict(zip(self.names, tokens, strict=True))
        hidden = self.transformer(**feed).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = feed["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def build_export(model: Any, pooling: str, runtime: str) -> Any:
    """The ONNX ``ModelProto`` of ``model``'s transformer and pooling for ``runtime`` (see the
    module docstring); ``model`` itself is not changed (a copy is exported)."""
    onnx = _onnx.onnx()
    transformer = copy.deepcopy(model[0].auto_model).cpu().eval()
    if hasattr(transformer, "set_attn_implementation"):
        transformer.set_attn_implementation("eager")  # the form onnxruntime's fusions know
    example = model.tokenizer(list(PROBE_TEXTS), padding=True, return_tensors="pt")
    names = [name for name in INPUTS if name in example]
    module = _Pooled(transformer, pooling, names).eval()
    with tempfile.TemporaryDirectory(prefix="tripletkit-onnx-") as tmp, _onnx.quiet_exporter():
        plain = Path(tmp) / "plain.onnx"
        torch.onnx.export(
            module,
            tuple(example[name] for name in names),
            str(plain),
            dynamo=False,
            input_names=names,
            output_names=["pooled"],
            dynamic_axes={name: {0: "batch", 1: "tokens"} for name in names},
            opset_version=17,
        )
        graph = _optimised(plain, Path(tmp) / "optimised.onnx", transformer.config)
        if runtime == "onnx-int8":
            quantised = Path(tmp) / "int8.onnx"
            q = _onnx.quantization()
            q.quantize_dynamic(
                str(graph),
                str(quantised),
                weight_type=q.QuantType.QInt8,
                per_channel=True,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
            graph = quantised
        return onnx.load_model(str(graph))


def _optimised(plain: Path, out: Path, config: Any) -> Path:
    """onnxruntime's transformer optimiser on ``plain`` into ``out`` where it knows the
    architecture (BERT and its kin); ``plain`` itself otherwise."""
    from onnxruntime.transformers import optimizer

    kind = {"bert": "bert", "mpnet": "bert", "roberta": "bert", "xlm-roberta": "bert"}.get(
        getattr(config, "model_type", ""), ""
    )
    heads, hidden = getattr(config, "num_attention_heads", 0), getattr(config, "hidden_size", 0)
    if not kind or not heads or not hidden:
        return plain
    optimizer.optimize_model(
        str(plain), model_type=kind, num_heads=heads, hidden_size=hidden
    ).save_model_to_file(str(out))
    return out
