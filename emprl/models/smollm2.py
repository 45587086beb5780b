"""SmolLM2-135M-Instruct as plain safetensors, the one copy behind the judge's backbone and a trainable policy.

``python -m emprl.download --llm smollm2`` fetches the Q4_1 GGUF and checks its sha256. transformers reads a
GGUF into a model flagged as GGUF-quantized, which it will neither save nor train, so ``convert_gguf``
dequantises it once into a float32 causal LM saved beside the GGUF (model.safetensors, config, generation
config, tokenizer, and a manifest holding the weights' sha256, checked on every load: no pickle, no remote
code). The judge loads the base model from that folder (``AutoModel`` leaves out the LM head, which is tied to
the embeddings anyway), a trainer the whole causal LM (``AutoModelForCausalLM``).

The tiny random Llama (2 layers, width 32, seeded, with the MiniLM tokenizer) stands in for it at the smoke
profile and in the tests: the judge's "tiny-random" backbone and ``tiny_random_causal_lm`` share its config.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from emprl import checkpoint as ckpt
from emprl import download
from emprl.models import encoders

CONVERTED = "smollm2-causal-lm"  # the converted copy's folder, beside the GGUF in the LLM cache
MANIFEST, WEIGHTS = "manifest.json", "model.safetensors"
TINY_SEED = 0  # the tiny model is one fixed model, whatever the run's seed
# The tiny causal LM's chat template: the MiniLM tokenizer has none, and trl renders conversational prompts
# with one. SmolLM2's own (ChatML) comes with the converted copy.
TINY_CHAT_TEMPLATE = ("{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
                      "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


def convert_gguf(gguf: str | Path, folder: str | Path, expected_sha256: str) -> dict:
    """Dequantise the GGUF at ``gguf`` into a float32 causal LM saved to ``folder`` (model.safetensors,
    config.json, generation_config.json, tokenizer files, manifest.json). The GGUF's sha256 must be
    ``expected_sha256``. Returns the manifest.

    The weights are copied into a model built from the GGUF's config without its ``quantization_config``
    (which makes transformers refuse to save the model, and trainers to train it)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf} not found: fetch it with `python -m emprl.download --llm smollm2`")
    actual = download.sha256_of(gguf)
    if actual != expected_sha256:
        raise ValueError(f"{gguf}: sha256 {actual} is not the published {expected_sha256}; fetch it again with "
                         "`python -m emprl.download --llm smollm2 --force`")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())  # copies in place: a tied LM head stays the embeddings
    plain.generation_config = quantized.generation_config  # its eos token ends a completion
    with ckpt.atomic_dir(folder) as tmp:
        plain.save_pretrained(str(tmp))  # one model.safetensors (540 MB); a tied LM head is not stored twice
        tokenizer.save_pretrained(str(tmp))
        manifest = {"file": WEIGHTS, "sha256": download.sha256_of(tmp / WEIGHTS), "source": gguf.name,
                    "source_sha256": expected_sha256, "dtype": "float32",
                    "architecture": plain.config.architectures[0]}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def verified_folder(folder: str | Path, source_sha256: str) -> Path:
    """``folder`` after checking that its manifest names the GGUF ``source_sha256`` and that its weights hash
    to the manifest's sha256; a ValueError names the file otherwise."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("source_sha256") != source_sha256:
        raise ValueError(f"{folder / MANIFEST}: converted from a GGUF with sha256 "
                         f"{manifest.get('source_sha256')}, not {source_sha256}; delete {folder} to convert "
                         "again")
    actual = download.sha256_of(folder / manifest["file"])
    if actual != manifest["sha256"]:
        raise ValueError(f"sha256 mismatch for {folder / manifest['file']}: the manifest records "
                         f"{manifest['sha256']}, the file hashes to {actual}; delete {folder} to convert again")
    return folder


def smollm2_folder(cache_root: str | Path | None = None) -> Path:
    """The verified safetensors copy of SmolLM2-135M-Instruct, converted from the verified GGUF on first use."""
    spec = download.llm_spec("smollm2")
    folder = download.llm_cache_dir(cache_root) / CONVERTED
    if not (folder / MANIFEST).is_file():
        print(f"converting {spec.gguf_name} to safetensors in {folder} (once)", flush=True)
        convert_gguf(download.llm_path("smollm2", cache_root), folder, spec.gguf_sha256)
    return verified_folder(folder, spec.gguf_sha256)


def _tiny_random(model_class) -> tuple[nn.Module, object]:
    """A 2-layer Llama of width 32 of ``model_class``, seeded random weights, with the (offline, verified)
    MiniLM tokenizer."""
    from transformers import LlamaConfig

    tokenizer = encoders.load_tokenizer("minilm")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)  # as SmolLM2
    generator_state = torch.get_rng_state()
    torch.manual_seed(TINY_SEED)
    try:
        model = model_class(config)
    finally:
        torch.set_rng_state(generator_state)  # the caller's random stream is left as it was
    return model, tokenizer


def tiny_random_backbone() -> tuple[nn.Module, object]:
    """The tiny random Llama's base model (the judge's "tiny-random" backbone) and its tokenizer."""
    from transformers import LlamaModel

    return _tiny_random(LlamaModel)


def tiny_random_causal_lm() -> tuple[nn.Module, object]:
    """The tiny random Llama with its (tied) LM head, and its tokenizer, made ready to chat: [SEP] ends a
    reply, ``TINY_CHAT_TEMPLATE`` renders the messages, and no token type ids (BERT's, which a Llama's
    ``generate`` refuses; in ``init_kwargs`` too, which ``save_pretrained`` writes)."""
    from transformers import LlamaForCausalLM

    model, tokenizer = _tiny_random(LlamaForCausalLM)
    tokenizer.eos_token = tokenizer.sep_token
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.model_input_names = tokenizer.init_kwargs["model_input_names"] = ["input_ids", "attention_mask"]
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
