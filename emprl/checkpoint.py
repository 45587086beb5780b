"""Every atomic write and every resume state of emprl (identifiers, generator, PPO, reports, data).

A file is written to a temporary name beside it (``<name>.tmp-<pid>``), fsynced, then renamed over
the previous one (``os.replace``), so a crash at any moment leaves either the old or the new file;
a folder (a saved model) is built under a temporary name and swapped in. Nothing is pickled:
tensors go to safetensors, everything else to JSON.

Resume protocol, the same for the three trainings: a run has a ``key`` (what must match for a saved
state to be continued: settings, seed, data); its state is saved atomically with that key; on a
restart ``check_key`` compares them: a match resumes, a mismatch is an error naming the file
(generator, PPO) or, for finished identifiers, a reason to retrain. On-disk layouts:

- generator and PPO: one ``train_state.safetensors`` (``save_training_state``): trainable parameters,
  AdamW state, every process's RNG (python, numpy, torch, CUDA), the key and counters in its metadata;
  PPO adds its log table. The generator keeps its best weights beside it (``best.safetensors``).
- identifiers: a finished model folder whose ``config.json`` holds the key (``train_fingerprint``).

Keyed caches (gold levels, evaluations, best-of-n pools): ``save_cached`` stores a result with the key
it was computed for, ``load_cached`` returns it only for that key (a stale or unreadable file is a miss).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

META_KEY = "emprl_state"


def _write_payload(f: BinaryIO, data: bytes) -> None:
    """The raw write (a seam for tests that simulate a crash half-way through)."""
    f.write(data)


def _fsync_dir(folder: Path) -> None:
    try:  # make the rename durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (safetensors, pandas);
    renamed over ``path`` when the block ends without error, deleted otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[BinaryIO]:
    """An open temporary file that replaces ``path`` when the block ends without error (streams, downloads)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers only ever see a complete file."""
    with atomic_file(path) as f:
        _write_payload(f, data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(directory: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """A fresh temporary folder beside ``directory``, swapped in when the block ends without error.

    ``replace=False``: an existing ``directory`` (e.g. written by a concurrent process) is kept and
    the new copy discarded."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if directory.exists() and not replace:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = directory.with_name(f"{directory.name}.old-{os.getpid()}")
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(directory.parent)


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """A safetensors file of ``tensors`` (moved to the CPU), written atomically."""
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(flat))


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors on ``device`` (a state saved on a GPU loads anywhere)."""
    from safetensors.torch import load_file

    return load_file(str(path), device=str(torch.device(device)))


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete ``*.tmp-<pid>`` files left by a killed writer; return what was removed."""
    removed = [p for p in Path(folder).glob("*.tmp-*") if p.is_file()] if Path(folder).is_dir() else []
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def save_state(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Atomically save ``tensors`` (safetensors) with ``meta`` (JSON) as the file's metadata."""
    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    data = st_save(flat, metadata={META_KEY: json.dumps(meta)})
    atomic_write_bytes(path, data)


def load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a file written by ``save_state``; a clear error names the file if it is not one."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = st_load(path.read_bytes())
        meta = json.loads(header[META_KEY])
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path}: not a readable emprl training state ({type(e).__name__}: {e})") from e
    return tensors, meta


def check_key(path: Path, saved_key: Any, key: Any, restart: bool = False) -> bool:
    """The resume rule: True when the state at ``path`` was saved by a run with this ``key``.

    A different key is a ValueError naming the file and both keys, since continuing would mix two
    runs; ``restart=True`` returns False instead (the caller starts over and overwrites the state)."""
    if saved_key == key:
        return True
    if restart:
        return False
    differing = "; ".join(f"{name} (saved {a!r}, now {b!r})" for name, a, b in _differences(saved_key, key))
    raise ValueError(f"{path} was written by a different run configuration (settings, seed or data): "
                     f"{differing or 'the keys differ'}; delete it or pass resume=False."
                     f"\nsaved: {saved_key}\nnow:   {key}")


def _differences(saved: Any, now: Any, name: str = "the key") -> list[tuple[str, Any, Any]]:
    """(dotted name, saved, now) of every leaf where two keys differ: a key is a few dozen settings, and the
    error should say which of them changed rather than leave the reader to compare two long lines."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [d for k in sorted(set(saved) | set(now), key=str)
                for d in _differences(saved.get(k, "(absent)"), now.get(k, "(absent)"),
                                    str(k) if name == "the key" else f"{name}.{k}")]
    return [] if saved == now else [(name, saved, now)]


# --------------------------------------------------------------------------- trainable parameters


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Copy saved tensors into the model's trainable parameters (names must match exactly); the copy
    casts them to each parameter's device and dtype, so a bf16 state saved on a GPU loads on a CPU."""
    params = trainable(model)
    if set(tensors) != set(params):
        raise ValueError(f"{source}: trainable parameters differ from the model's "
                         f"({sorted(set(tensors) ^ set(params))[:5]} ...)")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


# --------------------------------------------------------------------------- optimizer and RNG states


def optimizer_to_flat(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors named ``optim/<param index>/<name>`` and a JSON-able
    remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in state_dict["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim/{idx}/{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of ``optimizer_to_flat`` (``optimizer.load_state_dict`` moves the tensors to the
    parameters' device); other tensors in ``tensors`` are ignored."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim/"):
            idx, k = key[len("optim/"):].split("/", 1)
            state.setdefault(int(idx), {})[k] = v
    for idx, st in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """The python, numpy and torch (and CUDA) RNG states as tensors + JSON."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype("int64"))}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    py = random.getstate()
    meta = {"numpy": [name, int(pos), int(has_gauss), float(cached)], "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(tensors["torch"].cpu())
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"].cpu())
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy_keys"].numpy().astype("uint32"), pos, has_gauss, cached))
    v, st, gauss = meta["python"]
    random.setstate((v, tuple(st), gauss))


# --------------------------------------------------------------------------- training state


def save_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, key: Any,
                        meta: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None,
                        rngs: list[tuple[dict[str, torch.Tensor], dict]] | None = None) -> None:
    """One atomic file from which a training continues bit-identically: the trainable parameters
    (``param/<name>``), the optimizer (``optim/...``), the RNG of every process (``rng/<rank>/...``;
    ``rngs``: one ``rng_state()`` per rank, default this process's), any extra ``tensors``, and
    ``meta`` (counters, history) with the run's ``key``."""
    flat = {f"param/{n}": p for n, p in trainable(model).items()}
    opt_tensors, opt_meta = optimizer_to_flat(optimizer.state_dict())
    flat.update(opt_tensors)
    rngs = rngs if rngs is not None else [rng_state()]
    for rank, (rng_tensors, _) in enumerate(rngs):
        flat.update({f"rng/{rank}/{k}": v for k, v in rng_tensors.items()})
    flat.update(tensors or {})
    save_state(path, flat, {**meta, "key": key, "optimizer": opt_meta, "rng": [m for _, m in rngs]})


def load_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, key: Any,
                        rank: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Continue from ``save_training_state``'s file: check the key (``check_key``: another run's state
    is an error), then restore the parameters, the optimizer and rank ``rank``'s RNG. Returns the
    file's tensors and metadata (the caller's counters and extra tensors)."""
    tensors, meta = load_state(path)
    check_key(path, meta.get("key"), key)
    load_trainable(model, {k[len("param/"):]: v for k, v in tensors.items() if k.startswith("param/")}, path)
    optimizer.load_state_dict(optimizer_from_flat(tensors, meta["optimizer"]))
    prefix = f"rng/{rank}/"
    set_rng_state({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, meta["rng"][rank])
    return tensors, meta


# --------------------------------------------------------------------------- keyed result caches


def key_digest(key: Any) -> str:
    """sha256 of ``key`` as canonical JSON (sorted keys, default separators): a cache entry's name."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _cache_format(path: Path) -> str:
    if path.suffix not in (".json", ".safetensors"):
        raise ValueError(f"{path}: a cache file is a .json or a .safetensors file")
    return path.suffix


def load_cached(path: str | os.PathLike, key: Any) -> dict[str, Any] | None:
    """The result ``save_cached`` stored at ``path`` for this ``key``; None when the file is missing,
    unreadable or was stored for another key (stale: the caller computes it again and overwrites it)."""
    path = Path(path)
    fmt = _cache_format(path)
    if not path.is_file():
        return None
    try:
        if fmt == ".json":
            tensors, saved = {}, json.loads(path.read_text())
        else:
            tensors, saved = load_state(path)
        if key_digest(saved["key"]) != key_digest(key):
            return None
        return {**saved["result"], **tensors}
    except (ValueError, KeyError, TypeError):
        return None


def save_cached(path: str | os.PathLike, key: Any, result: dict[str, Any]) -> None:
    """Store ``result`` with its ``key`` at ``path``, atomically. A ``.json`` file holds JSON values only; a
    ``.safetensors`` file holds the result's tensors, and the rest as JSON in its metadata."""
    path = Path(path)
    if _cache_format(path) == ".json":
        atomic_write_text(path, json.dumps({"key": key, "result": result}))
        return
    tensors = {k: v for k, v in result.items() if torch.is_tensor(v)}
    save_state(path, tensors, {"key": key, "result": {k: v for k, v in result.items() if k not in tensors}})


def compute_dtype(device_type: str) -> str:
    """The dtype the caller's code computes in on ``device_type`` now: autocast's ("torch.bfloat16") inside an
    enabled ``torch.autocast`` (``Run.autocast``), else "float32". Part of the resume and cache keys of what
    autocast changes, so that a run trained in one precision is not resumed, or its evaluation read back, in
    the other."""
    if torch.is_autocast_enabled(device_type):
        return str(torch.get_autocast_dtype(device_type))
    return "float32"
