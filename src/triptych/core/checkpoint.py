"""Checkpoints as safetensors weights plus JSON metadata; nothing is ever unpickled.

A checkpoint is one ``.safetensors`` file. Its tensors are the leaves of an arbitrary
nested state (a model's ``state_dict``, or a whole Lightning checkpoint with optimiser
and loop state); everything that is not a tensor is kept as JSON in the file's header,
beside the package version, the model config and the training state. Loading reads
that header and the raw tensor bytes, so a hostile file cannot run code.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError

from triptych.core.errors import TriptychError
from triptych.core.io import atomic_write

if TYPE_CHECKING:  # torch is imported where tensors are made: a numpy reader starts without it
    import torch

FORMAT = "triptych-checkpoint/1"
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # raw pickle protocol 2+, or torch.save's zip


class CheckpointError(TriptychError):
    """A checkpoint that cannot be used: corrupt, pickled, or for another model."""


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """Replace tensors by references; make every other value JSON-safe and reversible."""
    import torch

    if isinstance(obj, torch.Tensor):
        key = path or "tensor"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return _encode(torch.from_numpy(np.ascontiguousarray(obj)), tensors, path)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Enum):
        return _encode(obj.value, tensors, path)
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, Mapping):
        # JSON keys are strings; keep int keys (optimiser state) by storing pairs.
        items = [[k, _encode(v, tensors, f"{path}.{k}" if path else str(k))] for k, v in obj.items()]
        if not all(isinstance(k, str | int) for k, _ in items):
            raise CheckpointError(f"cannot store a mapping with keys of type {type(items[0][0]).__name__}")
        return {"__dict__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if hasattr(obj, "__dict__") and type(obj).__module__.startswith("argparse"):
        return _encode(vars(obj), tensors, path)
    raise CheckpointError(f"cannot store a {type(obj).__name__} at {path!r} in a checkpoint")


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__dict__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


def _version() -> str:
    from triptych import __version__

    return __version__


def save_checkpoint(
    path: str | os.PathLike,
    state: Mapping[str, Any],
    *,
    kind: str,
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``state`` (any nested dict of tensors and plain values) atomically.

    ``kind`` names what the checkpoint is for (``"pdcr.segmentation"``, ...), and
    ``config`` is what is needed to rebuild the model; both are checked on load.
    """
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(dict(state), tensors, "")
    # safetensors refuses tensors that share memory; copies are cheap at our sizes.
    tensors = {k: v.clone() for k, v in tensors.items()}
    header = {
        "format": FORMAT,
        "kind": kind,
        "triptych_version": _version(),
        "config": json.dumps(_encode(dict(config or {}), {}, "config")),
        "extra": json.dumps(_encode(dict(extra or {}), {}, "extra")),
        "tree": json.dumps(tree),
    }
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        handle.write(save(tensors, metadata=header))
    return path


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint's metadata without loading its tensors."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file; give the .safetensors file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as handle:
        head = handle.read(8)
        # A safetensors header (JSON) starts with "{" right after its 8-byte length, whose
        # first byte may legitimately be 0x80; only call it a pickle when that "{" is absent.
        is_safetensors = handle.read(1) == b"{"
        handle.seek(8)
        if not is_safetensors and (head[:1] == _PICKLE_MAGIC[0] or head[:4] == _PICKLE_MAGIC[1]):
            raise CheckpointError(
                f"checkpoint {path} is a pickle (torch.save) file; triptych refuses to unpickle "
                "checkpoints. Re-save the weights with safetensors"
            )
        if len(head) < 8:
            raise CheckpointError(f"checkpoint {path} is truncated or not a safetensors file")
        size = int.from_bytes(head, "little")
        if size <= 0 or size > 100_000_000 or size + 8 > path.stat().st_size:
            raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file")
        try:
            raw = json.loads(handle.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise CheckpointError(
                f"checkpoint {path} has a corrupt header ({exc.__class__.__name__})"
            ) from None
    meta = raw.get("__metadata__") if isinstance(raw, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is a safetensors file but not a triptych checkpoint")
    fields = {}
    for key in ("kind", "config", "extra", "tree"):
        if not isinstance(meta.get(key), str):
            raise CheckpointError(
                f"checkpoint {path} is corrupt: its header has no {key!r} string; re-save or re-train it"
            )
    for key in ("config", "extra", "tree"):
        try:
            value = json.loads(meta[key])
            fields[key] = (
                value if key == "tree" else _decode(value, {})
            )  # the tree is decoded with its tensors
        except (json.JSONDecodeError, RecursionError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: its header field {key!r} is not valid "
                f"({type(exc).__name__}); re-save or re-train it"
            ) from None
    config, extra = fields["config"], fields["extra"]
    for key, value in (("config", config), ("extra", extra)):
        if not isinstance(value, dict):
            raise CheckpointError(
                f"checkpoint {path} is corrupt: its {key} is a {type(value).__name__}, "
                "not a mapping; re-save or re-train it"
            )
    return {
        "kind": meta["kind"],
        "triptych_version": meta.get("triptych_version"),
        "config": config,
        "extra": extra,
        "tree": fields["tree"],
    }


def load_checkpoint(
    path: str | os.PathLike,
    *,
    kind: str | None = None,
    config: Mapping[str, Any] | None = None,
    numpy: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load ``(state, meta)``; raise :class:`CheckpointError` with one clear line if unusable.

    ``kind`` and ``config`` (a subset of keys that must match) guard against loading a
    checkpoint into the wrong model. ``numpy=True`` gives the tensors as numpy arrays
    without importing torch (for readers that must start fast).
    """
    meta = read_header(path)
    if kind is not None and meta["kind"] != kind:
        raise CheckpointError(f"checkpoint {path} is a {meta['kind']!r} checkpoint, not {kind!r}")
    for key, want in (config or {}).items():
        have = meta["config"].get(key)
        if have != want:
            raise CheckpointError(
                f"checkpoint {path} was made with {key}={have!r}, incompatible with {key}={want!r}"
            )
    if numpy:
        from safetensors.numpy import load_file
    else:
        from safetensors.torch import load_file
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt: {str(exc).splitlines()[0]}") from None
    try:
        state = _decode(meta.pop("tree"), tensors)
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt: tensor {exc} is missing") from None
    except (TypeError, ValueError, RecursionError) as exc:  # a crafted tree: wrong shapes of __dict__ etc.
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its state tree is malformed "
            f"({type(exc).__name__}); re-save or re-train it"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its state is a {type(state).__name__}, not a mapping"
        )
    return state, meta


@contextlib.contextmanager
def rebuilding(path: Any) -> Iterator[None]:
    """Around building a model from a checkpoint's config: a config this code cannot use is one line.

    A crafted, corrupt or stale checkpoint can pass every format check and still hold a
    config with unknown keys or wrong types; the model constructor then raises a bare
    ``TypeError``/``KeyError``. Errors that are already clear (:class:`TriptychError`) pass through.
    """
    try:
        yield
    except TriptychError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise CheckpointError(
            f"checkpoint {path} holds a config this version cannot build a model from "
            f"({type(exc).__name__}: {str(exc)[:120]}); re-train or re-export it"
        ) from None


def load_state_dict_into(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], path: Any) -> None:
    """``module.load_state_dict`` that reports a mismatch as one clear line."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
        raise CheckpointError(f"checkpoint {path} does not fit this model: {first}") from None
