"""Reference side: runs INSIDE the trl 0.9.6 venv (.venv-trl096); never imports emprl.

    python trl_worker.py compare WORKDIR   one PPOTrainer.step on given tensors, dumps its internals
    python trl_worker.py bench WORKDIR     the EmpRL authors' stack, timed: generate, decode, re-tokenize,
                                           three identifiers one after another, PPOTrainer.step

Inputs and outputs are safetensors and json files in WORKDIR (written by benchmarks/trl_bridge.py).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def word_tokenizer(vocab):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])  # like T5's
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def unpad(ids: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    return [ids[i, : int(n)].clone() for i, n in enumerate(lengths)]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def build_trainer(work: Path, cfg: dict):
    from trl import AutoModelForSeq2SeqLMWithValueHead, PPOConfig, PPOTrainer, create_reference_model

    tokenizer = word_tokenizer(json.loads((work / "vocab.json").read_text()))
    model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(str(work / "t5"), summary_dropout_prob=0.0)
    v_head = load_file(str(work / "v_head.safetensors"))
    model.v_head.summary.load_state_dict({"weight": v_head["weight"], "bias": v_head["bias"]})
    if (work / "t5_ref").is_dir():  # a given reference (trl_compare: policy != reference)
        ref_model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(str(work / "t5_ref"), summary_dropout_prob=0.0)
        ref_model.v_head.summary.load_state_dict({"weight": v_head["weight"], "bias": v_head["bias"]})
        ref_model.requires_grad_(False).eval()
    else:  # the authors' code: a frozen copy of the policy
        ref_model = create_reference_model(model)
    config = PPOConfig(
        batch_size=cfg["batch_size"], mini_batch_size=cfg["mini_batch_size"], ppo_epochs=cfg["ppo_epochs"],
        gradient_accumulation_steps=1, learning_rate=cfg["lr"], init_kl_coef=cfg["beta"], adap_kl_ctrl=False,
        kl_penalty="kl", gamma=cfg["gamma"], lam=cfg["lam"], cliprange=cfg["clip"],
        cliprange_value=cfg["cliprange_value"], vf_coef=cfg["vf_coef"], max_grad_norm=cfg.get("max_grad_norm"),
        whiten_rewards=False, seed=cfg["seed"], log_with=None, remove_unused_columns=False,
        optimize_device_cache=cfg.get("optimize_device_cache", False),
    )
    optimizer = torch.optim.Adam(filter(lambda p: p.requires_grad, model.parameters()), lr=cfg["lr"])
    trainer = PPOTrainer(config=config, model=model, ref_model=ref_model, tokenizer=tokenizer, optimizer=optimizer)
    return trainer, model, tokenizer


# --------------------------------------------------------------------------- compare


def compare(work: Path, cfg: dict) -> dict:
    trainer, model, _ = build_trainer(work, cfg)
    batch = load_file(str(work / "batch.safetensors"))
    queries = unpad(batch["query_ids"], batch["query_len"])
    responses = unpad(batch["response_ids"], batch["response_len"])  # [start token, y_1 .. y_T]
    scores = [s for s in batch["scores"]]

    rec: dict[str, torch.Tensor] = {}
    forward_calls = []
    orig_bfp, orig_rewards, orig_adv, orig_loss = (trainer.batched_forward_pass, trainer.compute_rewards,
                                                   trainer.compute_advantages, trainer.loss)

    def bfp(*a, **k):
        out = orig_bfp(*a, **k)
        forward_calls.append(out)
        return out

    def compute_rewards(*a, **k):
        rewards, non_score, kls = orig_rewards(*a, **k)
        rec.update(rewards=rewards.clone(), kl=kls.clone())
        return rewards, non_score, kls

    def compute_advantages(values, rewards, mask):
        v, adv, ret = orig_adv(values, rewards, mask)
        rec.update(values=v.clone(), advantages=adv.clone(), returns=ret.clone(), mask=mask.clone().float())
        return v, adv, ret

    losses = []

    def loss(*a, **k):
        pg, vf, stats = orig_loss(*a, **k)
        losses.append({"policy_loss": pg.item(), "value_term": vf.item(), "total": (pg + vf).item(),
                       "clip_frac": float(stats["policy/clipfrac"]), "approx_kl": float(stats["policy/approxkl"]),
                       "entropy": float(stats["policy/entropy"]), "value_clip_frac": float(stats["val/clipfrac"])})
        return pg, vf, stats

    trainer.batched_forward_pass, trainer.compute_rewards = bfp, compute_rewards
    trainer.compute_advantages, trainer.loss = compute_advantages, loss
    trainer.step(queries, responses, scores)

    rec["logprobs"], rec["ref_logprobs"] = forward_calls[0][0].clone(), forward_calls[1][0].clone()
    rec["raw_values"] = forward_calls[0][2].clone()
    save_file({k: v.float().contiguous() for k, v in rec.items()}, str(work / "trl_internals.safetensors"))
    params = {"t5." + k: v.detach().clone().contiguous() for k, v in model.pretrained_model.state_dict().items()}
    params.update({"v_head." + k: v.detach().contiguous() for k, v in model.v_head.summary.state_dict().items()})
    save_file(params, str(work / "trl_params.safetensors"))
    return {"losses": losses}


# --------------------------------------------------------------------------- bench (authors' stack)


class AuthorsIdentifier(torch.nn.Module):
    """The identifier architecture of emprl.models.identifiers (same parameter names), scoring raw text like the
    authors' SeperateT5EncoderClassifier: it tokenizes inside, so each identifier re-tokenizes."""

    def __init__(self, config: dict):
        from transformers import AutoConfig, AutoModel

        super().__init__()

        def encoder(c):
            c = dict(c)
            return AutoModel.from_config(AutoConfig.for_model(c.pop("model_type"), **c))

        self.context_encoder, self.response_encoder = encoder(config["context_encoder"]), encoder(config["response_encoder"])
        d = self.response_encoder.config.hidden_size
        self.attention = torch.nn.Module()
        for name in ("q", "k", "v", "out"):
            setattr(self.attention, name, torch.nn.Linear(d, d))
        self.classifier = torch.nn.Linear(d, 3)
        self.pooling = config["pooling"]

    def forward(self, tokenizer, contexts, responses, max_context_len, max_response_len):
        tokenizer.truncation_side = "left"
        c = tokenizer(contexts, truncation=True, max_length=max_context_len, padding=True, return_tensors="pt")
        tokenizer.truncation_side = "right"
        r = tokenizer(responses, truncation=True, max_length=max_response_len, padding=True, return_tensors="pt")
        C = self.context_encoder(**c).last_hidden_state
        R = self.response_encoder(**r).last_hidden_state
        a = self.attention
        scores = a.q(R) @ a.k(C).transpose(1, 2) / math.sqrt(R.size(-1))
        scores = scores.masked_fill(c["attention_mask"][:, None, :] == 0, torch.finfo(scores.dtype).min)
        H = R + a.out(scores.softmax(-1) @ a.v(C))
        real = r["attention_mask"][:, :, None].bool()
        if self.pooling == "max":
            z = H.masked_fill(~real, torch.finfo(H.dtype).min).amax(1)
        else:
            z = (H * real).sum(1) / real.sum(1)
        return self.classifier(z)


def load_identifiers(work: Path, mechanisms):
    out = {}
    for m in mechanisms:
        d = work / "identifiers" / m
        config = json.loads((d / "config.json").read_text())
        model = AuthorsIdentifier(config)
        missing, unexpected = model.load_state_dict(load_file(str(d / "model.safetensors")), strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"{d}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        out[m] = model.eval()
    return out, config["max_context_len"], config["max_response_len"]


def bench(work: Path, cfg: dict) -> dict:
    from transformers import AutoTokenizer, GenerationConfig

    t_load = time.perf_counter()
    trainer, model, tokenizer = build_trainer(work, cfg)
    mechanisms = cfg["mechanisms"]
    identifiers, max_c, max_r = load_identifiers(work, mechanisms)
    id_tokenizer = AutoTokenizer.from_pretrained(cfg["identifier_tokenizer"])
    data = load_file(str(work / "bench.safetensors"))
    gold = data["gold"]  # [steps, B, 3] precomputed, as the authors store them with the data
    rss_loaded = peak_rss_mib()
    t_load = time.perf_counter() - t_load
    gen = GenerationConfig(do_sample=True, top_k=cfg["top_k"], top_p=cfg["top_p"], temperature=cfg["temperature"],
                           max_new_tokens=cfg["max_new_tokens"], min_new_tokens=cfg["min_new_tokens"],
                           bos_token_id=0, eos_token_id=1, pad_token_id=0, decoder_start_token_id=0)
    B = cfg["batch_size"]
    times = {k: [] for k in ("generate", "score", "step", "total")}
    cpu = {k: [] for k in times}
    torch.manual_seed(cfg["seed"])
    for s in range(cfg["warmup"] + cfg["steps"]):
        q_ids, q_mask = data["query_ids"][s], data["query_mask"][s]
        t0, c0 = time.perf_counter(), time.process_time()
        # 1. rollout, as the authors' my_get_inputs: model.generate on the padded batch, then trim
        model.eval()
        with torch.no_grad():
            out = model.generate(input_ids=q_ids, attention_mask=q_mask, generation_config=gen)
        queries, responses = [], []
        for i in range(B):
            queries.append(q_ids[i, : int(q_mask[i].sum())])
            nz = (out[i] != 0).nonzero()
            responses.append(out[i, : (nz[-1].item() + 1) if len(nz) else 1])
        t1, c1 = time.perf_counter(), time.process_time()
        # 2. reward, as the authors' my_get_rewards: decode, then three identifiers one after another
        with torch.no_grad():
            ctx = tokenizer.batch_decode(queries, skip_special_tokens=True, clean_up_tokenization_spaces=True)
            rsp = tokenizer.batch_decode(responses, skip_special_tokens=True, clean_up_tokenization_spaces=True)
            loss = 0.0
            for k, m in enumerate(mechanisms):
                logits = identifiers[m](id_tokenizer, ctx, rsp, max_c, max_r)
                loss = loss - torch.log(torch.softmax(logits, 1)).gather(1, gold[s][:, k].view(-1, 1))
            scores = list(torch.exp(-loss).float().view(-1))
        t2, c2 = time.perf_counter(), time.process_time()
        # 3. PPO update
        model.train()
        trainer.step(queries, responses, scores)
        t3, c3 = time.perf_counter(), time.process_time()
        if s >= cfg["warmup"]:
            for k, w, c in (("generate", t1 - t0, c1 - c0), ("score", t2 - t1, c2 - c1), ("step", t3 - t2, c3 - c2),
                            ("total", t3 - t0, c3 - c0)):
                times[k].append(w)
                cpu[k].append(c)
    return {"times": times, "cpu": cpu, "peak_rss_mib": peak_rss_mib(), "rss_after_load_mib": rss_loaded, "load_s": t_load,
            "params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "versions": versions()}


def versions() -> dict:
    import transformers
    import trl

    return {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["compare", "bench"])
    p.add_argument("workdir", type=Path)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = json.loads((args.workdir / "config.json").read_text())
    result = compare(args.workdir, cfg) if args.mode == "compare" else bench(args.workdir, cfg)
    result["versions"] = versions()
    (args.workdir / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
