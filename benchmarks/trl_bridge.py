"""Main-venv side of the trl 0.9.6 comparisons: the reference venv, the shared tiny T5, the worker call.

trl 0.9.6 (the EmpRL authors' PPO) needs transformers 4.44 and numpy<2, so it runs in its own venv
(``.venv-trl096``, built by ``benchmarks/trl_env.sh``). Both sides exchange only safetensors and
json files in a temp dir (no pickle): this side writes the tiny T5 with ``save_pretrained`` (its
config and weights load in transformers 4.44.2, checked), a word vocabulary from which both sides
build the same tokenizer, and the tensors; ``benchmarks/trl_worker.py`` runs in the reference venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
REF_VENV = Path(os.environ.get("EMPRL_TRL_VENV", REPO_ROOT / ".venv-trl096"))
WORKER = BENCH_DIR / "trl_worker.py"
BUILD_COMMAND = f"bash {BENCH_DIR / 'trl_env.sh'} {REF_VENV}"

PAD, EOS, UNK = 0, 1, 2  # T5 conventions: pad is also the decoder start token


def ref_python(build: bool = True) -> Path:
    """The reference venv's python; builds the venv (minutes, needs PyPI) if missing and ``build``."""
    python = REF_VENV / "bin" / "python"
    ok = python.is_file() and subprocess.run(
        [str(python), "-c", "import trl, transformers; assert trl.__version__ == '0.9.6', trl.__version__"],
        capture_output=True).returncode == 0
    if ok:
        return python
    if not build:
        raise RuntimeError(f"the trl 0.9.6 reference venv {REF_VENV} is missing or broken; build it with:\n  {BUILD_COMMAND}")
    print(f"building the trl 0.9.6 reference venv (once, a few minutes):\n  {BUILD_COMMAND}", flush=True)
    subprocess.run(["bash", str(BENCH_DIR / "trl_env.sh"), str(REF_VENV)], check=True)
    return python


def run_worker(mode: str, workdir: Path, threads: int, timeout: float = 1800) -> dict:
    """Run ``trl_worker.py MODE WORKDIR`` in the reference venv; returns its ``result.json``."""
    python = ref_python()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)  # keep the main venv's packages out of the reference side
    proc = subprocess.run([str(python), str(WORKER), mode, str(workdir), "--threads", str(threads)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"trl worker ({mode}) failed with exit code {proc.returncode}:\n{proc.stderr[-4000:]}")
    return json.loads((workdir / "result.json").read_text())


# --------------------------------------------------------------------------- shared tiny T5 + tokenizer


def tiny_t5_config(vocab_size: int = 8000, d_model: int = 256, d_ff: int = 1024, layers: int = 4, heads: int = 4):
    """The ~9.4M-parameter T5 of NOTES section 4 (d_model 256, 4+4 layers, vocab 8k); dropout 0 so
    both sides compute the same function (trl runs its PPO forwards in eval mode anyway)."""
    from transformers import T5Config

    return T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=d_model // heads, d_ff=d_ff, num_layers=layers,
                    num_decoder_layers=layers, num_heads=heads, dropout_rate=0.0, pad_token_id=PAD,
                    eos_token_id=EOS, decoder_start_token_id=PAD)


def word_vocab(size: int) -> list[str]:
    """``size`` tokens: <pad>, </s>, <unk>, then whole English words from MiniLM's vocab.txt (so decoded text
    re-tokenizes for the identifiers at about one word-piece per token, like real text)."""
    from emprl.models import encoders

    words = [w for w in (encoders.minilm_path() / "vocab.txt").read_text().split("\n")
             if w.isalpha() and w.islower() and len(w) > 1]
    if len(words) < size - 3:
        raise ValueError(f"MiniLM vocab has only {len(words)} whole words; ask for a smaller vocab")
    return ["<pad>", "</s>", "<unk>"] + words[: size - 3]


def word_tokenizer(vocab: list[str]):
    """A whitespace word-level fast tokenizer over ``vocab`` (ids = positions); built the same way in both venvs."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])  # like T5's
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def random_queries(n: int, length: int, vocab_size: int, seed: int, spread: int = 10) -> list[torch.Tensor]:
    """``n`` contexts of about ``length`` tokens (+- ``spread``), each ending with </s> like a T5 tokenizer's."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        L = length + int(torch.randint(-spread, spread + 1, (1,), generator=g))
        out.append(torch.cat([torch.randint(3, vocab_size, (L - 1,), generator=g), torch.tensor([EOS])]))
    return out


def pad_right(seqs: list[torch.Tensor], value: int = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [N, max_len], mask [N, max_len]) right-padded."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    return ids, mask


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=1))


def machine() -> str:
    import platform

    return f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible, python {sys.version.split()[0]}, torch {torch.__version__}"
