"""The playground of notebook 09: talk to every trained system of a run and see how the identifiers judge it.

Plain functions, called by the widgets (``widget``) and by the notebook's static example:

    find_systems / load_systems   every saved generator under OUT/checkpoints (w/o RL, full, PPO variants)
    llm_system                    the LLM baseline as one more system, when an endpoint is configured
    replies                       one sampled reply per system, seeded, with the chosen decoding
    score                         the identifiers' levels with probabilities, gold levels, R_emp (Eq. 2-5)
    attention_maps                the identifier's single-head response-to-context attention (Fig. 3)
    append_comparison             the replies as a row of a generations CSV (the human-evaluation kit's input)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from emprl.eval import evaluation
from emprl.models import generator, policy
from emprl.llm import client as llm_baseline
from emprl.models import identifiers as ident
from emprl.checkpoint import atomic_path
from emprl.data import LEVELS, MECHANISMS, format_context
from emprl.eval.reading import bullets, head
from emprl.rl.reward import empathy_reward
from emprl.run import SYSTEMS, Paths
from emprl.models.scoring import EmpathyScorer

SHORT = {"emotional_reactions": "ER", "interpretations": "IP", "explorations": "EX"}
GOLD = "Gold (human)"

# --------------------------------------------------------------------------- the generator API
# The only two calls into the generator and policy code: a new policy type is wired in here.


def _load_policy(directory: Path):
    return generator.load_generator(directory)


def _sample(model, tokenizer, context: str, cfg, seed: int) -> str:
    return policy.sample_responses(model, tokenizer, [context], cfg, seed=seed, batch_size=1,
                                   progress=False)[0]


# --------------------------------------------------------------------------- systems


def find_systems(out) -> dict[str, Path]:
    """Every saved system under ``out/checkpoints``, named as the paper's rows where it is one of them.

    Order: the generators without RL (``generator/<tuning>``), then EmpRL, then the other PPO variants
    (``ppo/<variant>/policy``); a folder without ``generator.json`` (unfinished, or never trained) is skipped.
    """
    root = Path(out) / "checkpoints"
    names = {Path(*parts): name for name, parts in SYSTEMS.items()}
    candidates = [Path("generator", "prefix"), Path("generator", "full")]
    candidates += sorted(p.relative_to(root) for p in root.glob("generator/*") if p.is_dir())
    candidates += [Path("ppo", "emprl", "policy")]
    candidates += sorted(p.relative_to(root) for p in root.glob("ppo/*/policy") if p.is_dir())
    found: dict[str, Path] = {}
    for rel in dict.fromkeys(candidates):
        if not evaluation.is_saved_generator(root / rel):
            continue
        default = f"w/o RL ({rel.name})" if rel.parts[0] == "generator" else f"PPO ({rel.parts[1]})"
        found[names.get(rel, default)] = root / rel
    return found


def missing_systems(out) -> list[str]:
    """The paper's systems (``run.SYSTEMS``) that have no saved checkpoint in ``out``."""
    saved = evaluation.is_saved_generator
    return [name for name in SYSTEMS if not saved(Paths(Path(out)).system(name))]


def load_systems(out, device: str | torch.device = "cpu") -> dict[str, tuple]:
    """{name: (model on ``device``, tokenizer)} of every system ``find_systems`` finds; a clear error if
    there is none."""
    found = find_systems(out)
    if not found:
        raise FileNotFoundError(f"no saved generator under {Path(out) / 'checkpoints'}: run notebooks 03 "
                                "(generator) and 04 (PPO) into this output folder first")
    systems = {name: _load_policy(directory) for name, directory in found.items()}
    return {name: (model.to(device), tokenizer) for name, (model, tokenizer) in systems.items()}


@dataclass(frozen=True)
class LLMSystem:
    """The LLM baseline as a playground system: the paper's 2-shot prompt (the run's two demonstrations)
    sent to an OpenAI-compatible endpoint through ``emprl.llm.client``, replies cached in ``cache_path``.

    It takes the playground's temperature and seed (sent with the request and part of the cache key, so
    the same seed gives the same reply); its length limit is the baseline's ``max_tokens``, not the
    generators' maximum length in T5 tokens, and top-k has no place in the chat-completions API.
    """

    endpoint: llm_baseline.LLMEndpoint
    shots: tuple[tuple[str, str], ...]
    cache_path: Path
    max_tokens: int = llm_baseline.Sampling.max_tokens

    @property
    def name(self) -> str:
        return f"LLM ({self.endpoint.model})"

    def reply(self, turns: Sequence[str], temperature: float, seed: int) -> str:
        # the whole context, as notebook 05 prompts it (split_prompts): the LLM needs no truncation
        prompt = llm_baseline.build_prompt(format_context(turns), self.shots)
        sampling = llm_baseline.Sampling(float(temperature), self.max_tokens, int(seed))
        return llm_baseline.complete_all([prompt], self.endpoint, self.cache_path, sampling, concurrency=1,
                                         progress=False).responses[0]


def llm_system(profile, data_dir, out, environ=None) -> LLMSystem | None:
    """The LLM of ``EMPRL_LLM_URL`` / ``EMPRL_LLM_MODEL`` (``python -m emprl.llm.server`` prints them for
    the local SmolLM2) as a system, its replies cached in ``OUT/cache`` beside notebook 05's; None, and
    the baseline's skip message printed, when no endpoint is configured."""
    endpoint = llm_baseline.LLMEndpoint.from_env(environ)
    if endpoint is None:
        print(llm_baseline.SKIP_MESSAGE)
        return None
    shots = tuple(llm_baseline.paper_shots(profile, data_dir))
    return LLMSystem(endpoint, shots, Path(out) / "cache" / llm_baseline.CACHE_NAME)


# --------------------------------------------------------------------------- replies


def decoding(gen_cfg, top_k: int, temperature: float, max_new_tokens: int):
    """The profile's generation settings with the playground's top-k, temperature and length."""
    if int(top_k) < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k!r}")
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens (max length) must be at least 1, got {max_new_tokens!r}")
    return dataclasses.replace(gen_cfg, top_k=int(top_k), temperature=float(temperature),
                               max_new_tokens=int(max_new_tokens))


def replies(systems: dict[str, tuple | LLMSystem], turns: Sequence[str], gen_cfg,
            max_context_tokens: int | None, seed: int) -> dict[str, str]:
    """One reply per system to the dialogue ``turns`` (speaker first), each sampled under ``seed``.

    A generator sees the context truncated to ``max_context_tokens`` words, as in training and evaluation;
    an ``LLMSystem`` the whole context, with ``gen_cfg``'s temperature.
    """
    turns = _check_turns(turns)
    context = format_context(turns, max_tokens=max_context_tokens)
    out = {}
    for name, system in systems.items():
        if isinstance(system, LLMSystem):
            out[name] = system.reply(turns, gen_cfg.temperature, seed)
        else:
            model, tokenizer = system
            out[name] = _sample(model, tokenizer, context, gen_cfg, int(seed))
    return out


def _check_turns(turns: Sequence[str]) -> list[str]:
    if isinstance(turns, str):
        raise TypeError("turns must be a list of utterances (speaker first), not one string")
    turns = [t.strip() for t in turns]
    if not turns or any(not t for t in turns):
        raise ValueError(f"the dialogue needs at least one turn and no empty turn, got {turns!r}")
    return turns


def parse_dialogue(text: str) -> list[str]:
    """Typed dialogue, one turn per line (speaker first); blank lines are ignored."""
    turns = [line.strip() for line in text.splitlines() if line.strip()]
    if not turns:
        raise ValueError("type the dialogue one turn per line, the speaker's first")
    return turns


# --------------------------------------------------------------------------- scores


@dataclass
class Scores:
    """The identifiers' judgement of some replies to one context."""

    names: list[str]
    responses: list[str]
    probs: np.ndarray  # [N, 3 mechanisms, 3 levels], softmax of the identifiers' logits (Eq. 4)
    gold_levels: np.ndarray | None  # [3]: the identifiers' levels of the human reply (Eq. 5), if there is one
    r_emp: np.ndarray | None  # [N]: exp(-sum_i CE) against the gold levels (Eq. 2-3)

    @property
    def levels(self) -> np.ndarray:
        return self.probs.argmax(-1)

    def table(self) -> pd.DataFrame:
        """One row per reply: the reply, each mechanism's level with its probability, and R_emp."""
        rows = []
        for k, name in enumerate(self.names):
            row = {"reply": self.responses[k]}
            for j, m in enumerate(MECHANISMS):
                level = int(self.levels[k, j])
                row[SHORT[m]] = f"{LEVELS[level]} ({self.probs[k, j, level]:.2f})"
            if self.gold_levels is not None:
                row["gold levels"] = "/".join(LEVELS[int(v)] for v in self.gold_levels)
                row["R_emp"] = round(float(self.r_emp[k]), 4)
            rows.append(row)
        return pd.DataFrame(rows, index=pd.Index(self.names, name="system"))


def score(scorer: EmpathyScorer, turns: Sequence[str], responses: dict[str, str],
          gold: str | None = None) -> Scores:
    """Levels with probabilities of each reply; with the human reply ``gold``, its levels and R_emp of each.

    The identifiers see the whole context (they truncate from the left themselves), as for the gold labels.
    The human reply is scored as a row of its own (``GOLD``), so its R_emp is its agreement with itself.
    """
    context = format_context(_check_turns(turns))
    names, texts = list(responses), list(responses.values())
    if gold is not None:
        names, texts = [*names, GOLD], [*texts, gold]
    if not texts:
        raise ValueError("score: no replies to score")
    if list(scorer.mechanisms) != list(MECHANISMS):
        raise ValueError(f"score: the scorer's mechanisms {scorer.mechanisms} are not {MECHANISMS}")
    logits = scorer.logits([context] * len(texts), texts)
    gold_levels, r_emp = None, None
    if gold is not None:
        gold_levels = logits[-1].argmax(-1)  # Eq. 5
        r_emp = empathy_reward(logits, gold_levels.expand(len(texts), -1)).numpy()  # Eq. 2-4
        gold_levels = gold_levels.numpy()
    return Scores(names, texts, logits.softmax(-1).numpy(), gold_levels, r_emp)


# --------------------------------------------------------------------------- attention


@dataclass
class AttentionMap:
    """One identifier's attention of the response (rows) over the context (columns); rows sum to 1."""

    mechanism: str
    context_tokens: list[str]
    response_tokens: list[str]
    weights: np.ndarray  # [response length, context length]


@torch.inference_mode()
def attention_map(identifier: ident.EmpathyIdentifier, tokenizer, context: str, response: str,
                  max_context_len: int, max_response_len: int, mechanism: str = "") -> AttentionMap:
    """softmax(q(R) k(C)^T / sqrt(d)) of the identifier's single head (Fig. 3), over tokens.

    R and C are the response and context encoders' states, tokenized and truncated as the scorer does
    (context from the left, response from the right); one unpadded pair, so no key is masked. This is
    the weight matrix inside ``identifiers.SingleHeadAttention.forward``, which does not return it
    (tests check that ``out(weights @ v(C))`` reproduces that module's output).
    """
    was_training = identifier.training
    identifier.eval()
    c_ids = ident.tokenize(tokenizer, [context], max_context_len, "left")[0]
    r_ids = ident.tokenize(tokenizer, [response], max_response_len, "right")[0]
    device = next(identifier.parameters()).device
    c = torch.tensor([c_ids], device=device)
    r = torch.tensor([r_ids], device=device)
    C = identifier.encode_context(c, torch.ones_like(c))
    R = identifier.encode_response(r, torch.ones_like(r))
    att = identifier.attention
    scores = att.q(R) @ att.k(C).transpose(1, 2) / math.sqrt(R.size(-1))  # [1, Lr, Lc]
    weights = scores.float().softmax(dim=-1)[0].cpu().numpy()
    identifier.train(was_training)
    tokens = tokenizer.convert_ids_to_tokens
    return AttentionMap(mechanism, tokens(c_ids), tokens(r_ids), weights)


def attention_maps(scorer: EmpathyScorer, turns: Sequence[str], response: str) -> dict[str, AttentionMap]:
    """The attention map of each mechanism's identifier for one reply."""
    context = format_context(_check_turns(turns))
    return {m: attention_map(scorer.identifiers[m], scorer.tokenizer, context, response,
                             scorer.max_context_len, scorer.max_response_len, m) for m in scorer.mechanisms}


def _word_groups(tokens: list[str]) -> list[tuple[str, list[int]]]:
    """Sub-word pieces grouped into words: WordPiece continues a word with "##", SentencePiece starts
    one with "▁"; special tokens ([CLS], </s>, ...) stay alone."""
    sentencepiece = any(t.startswith("▁") for t in tokens)
    groups: list[tuple[str, list[int]]] = []
    for i, tok in enumerate(tokens):
        special = tok.startswith(("[", "<")) and tok.endswith(("]", ">"))
        if sentencepiece:
            after_special = groups and groups[-1][0].endswith(">")
            continues = groups and not special and not tok.startswith("▁") and not after_special
            piece = tok.lstrip("▁")
        else:
            continues = groups and tok.startswith("##")
            piece = tok[2:] if continues else tok
        if continues:
            groups[-1] = (groups[-1][0] + piece, groups[-1][1] + [i])
        else:
            groups.append((piece, [i]))
    return groups


def by_words(amap: AttentionMap) -> AttentionMap:
    """The map over words: a context word gets the sum of its pieces' weights (rows still sum to 1),
    a response word the mean of its pieces' rows."""
    cols, rows = _word_groups(amap.context_tokens), _word_groups(amap.response_tokens)
    summed = np.stack([amap.weights[:, idx].sum(axis=1) for _, idx in cols], axis=1)
    weights = np.stack([summed[idx].mean(axis=0) for _, idx in rows], axis=0)
    return AttentionMap(amap.mechanism, [w for w, _ in cols], [w for w, _ in rows], weights)


def attention_figure(maps: dict[str, AttentionMap], title: str = ""):
    """One heatmap per mechanism, response words down, context words across."""
    import matplotlib.pyplot as plt

    maps = {m: by_words(a) for m, a in maps.items()}
    width = max(len(a.context_tokens) for a in maps.values())
    height = max(len(a.response_tokens) for a in maps.values())
    size = (min(4 + 0.32 * width, 22), len(maps) * (1.2 + 0.26 * height))
    fig, axes = plt.subplots(len(maps), 1, figsize=size, squeeze=False)
    for ax, (m, a) in zip(axes[:, 0], maps.items()):
        im = ax.imshow(a.weights, aspect="auto", cmap="viridis", vmin=0.0)
        ax.set_xticks(range(len(a.context_tokens)), a.context_tokens, rotation=70, fontsize=7)
        ax.set_yticks(range(len(a.response_tokens)), a.response_tokens, fontsize=7)
        ax.set_title(f"{SHORT.get(m, m)}: response-to-context attention", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def levels_figure(scores: Scores):
    """The widgets' level bars as one figure: per mechanism, each reply's probability of each level,
    the predicted level drawn solid and the gold level (the human reply's) marked with a star."""
    import matplotlib.pyplot as plt

    n = len(scores.names)
    size = (4.2 * len(MECHANISMS), 0.5 + 0.55 * n * len(LEVELS) / 2)
    fig, axes = plt.subplots(1, len(MECHANISMS), figsize=size, sharex=True, squeeze=False)
    colors = ("tab:gray", "tab:orange", "tab:green")
    for ax, (j, m) in zip(axes[0], enumerate(MECHANISMS)):
        for k in range(n):
            for level in range(len(LEVELS)):
                y = k * (len(LEVELS) + 1) + level
                solid = level == scores.levels[k, j]
                ax.barh(y, scores.probs[k, j, level], color=colors[level], alpha=1.0 if solid else 0.35)
                if scores.gold_levels is not None and level == int(scores.gold_levels[j]):
                    ax.plot(scores.probs[k, j, level] + 0.04, y, marker="*", color="black")
        ax.set_yticks([k * (len(LEVELS) + 1) + 1 for k in range(n)], scores.names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.1)
        ax.set_title(f"{SHORT[m]}: p(none / weak / strong)", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors]
    axes[0, -1].legend(handles, LEVELS, fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- human-evaluation CSV


def append_comparison(path, turns: Sequence[str], responses: dict[str, str], gold: str | None = None,
                      settings: dict | None = None) -> Path:
    """Add one row (context, gold, one column per system, the decoding ``settings``) to the generations CSV
    at ``path``, the input of ``python -m emprl.eval.humaneval export --generations``; written atomically.

    Every row of one file must have the same columns: a file written with other systems or settings is
    a ValueError naming it (start a new file instead).
    """
    path = Path(path)
    row = {"context": format_context(_check_turns(turns)), "gold": gold if gold is not None else "",
           **responses, **(settings or {})}
    if "context" in responses or "gold" in responses:
        raise ValueError("a system may not be called 'context' or 'gold'")
    frame = pd.DataFrame([row])
    if path.is_file():
        old = pd.read_csv(path, dtype=str, keep_default_na=False)
        if list(old.columns) != list(frame.columns):
            raise ValueError(f"{path} has columns {list(old.columns)}, this comparison "
                             f"{list(frame.columns)}: choose another file for other systems or settings")
        frame = pd.concat([old, frame.astype(str)], ignore_index=True)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


# --------------------------------------------------------------------------- the widgets


def figure_png(fig) -> bytes:
    """The figure as PNG bytes (shown with IPython's Image whatever matplotlib backend the notebook set)."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _level_card(scores: Scores, k: int, on_continue=None):
    """One reply with a bar per (mechanism, level) holding that level's probability."""
    import html

    import ipywidgets as W

    name = scores.names[k]
    text = html.escape(scores.responses[k]) or "<i>(empty)</i>"
    reply = W.HTML(f"<div style='min-height:2.6em'>{text}</div>")
    rows = [W.HTML(f"<b>{html.escape(name)}</b>"), reply.add_class("emprl-reply")]
    for j, m in enumerate(MECHANISMS):
        rows.append(W.HTML(f"<small>{SHORT[m]} ({m.replace('_', ' ')})</small>"))
        for level, level_name in enumerate(LEVELS):
            p = float(scores.probs[k, j, level])
            gold = scores.gold_levels is not None and int(scores.gold_levels[j]) == level
            bar = W.FloatProgress(value=p, min=0.0, max=1.0, description=level_name,
                                  bar_style="success" if level == scores.levels[k, j] else "",
                                  layout=W.Layout(width="175px"))
            label = W.HTML(f"<small>{p:.2f}{' &#9733;' if gold else ''}</small>")
            rows.append(W.HBox([bar.add_class("emprl-level-bar"), label]))
    if scores.r_emp is not None:
        rows.append(W.HTML(f"R<sub>emp</sub> = <b>{scores.r_emp[k]:.4f}</b>").add_class("emprl-remp"))
    if on_continue is not None:
        button = W.Button(description="continue with this reply", layout=W.Layout(width="auto"))
        button.on_click(lambda _b: on_continue(scores.responses[k]))
        rows.append(button)
    return W.VBox(rows, layout=W.Layout(border="1px solid #ccc", padding="4px", margin="2px", width="255px"))


def widget(systems: dict[str, tuple], scorer: EmpathyScorer, examples: Sequence, gen_cfg,
           max_context_tokens: int | None, csv_path, seed: int = 0, root=None):
    """The playground's controls and views; ``.view`` is the widget to display, ``.sample`` the button.

    ``examples``: test examples (``context`` turns, ``response`` the human reply, ``emotion``).
    ``csv_path``: the comparisons CSV, relative to ``root`` (the run's output folder) when given, so
    that the page shows no machine path.
    Returns a namespace holding the widgets, so that code (and tests) can drive them.
    """
    import html
    from types import SimpleNamespace

    import ipywidgets as W
    from IPython.display import Image, display

    shown = list(examples)[:100]  # the examples the dropdown offers
    ui = SimpleNamespace(last=None)
    ui.source = W.ToggleButtons(options=["test context", "typed dialogue"], value="test context")
    labels = [f"{i}: {getattr(ex, 'emotion', '')}: {format_context(ex.context)[:70]}"
              for i, ex in enumerate(shown)]
    ui.example = W.Dropdown(options=[(label, i) for i, label in enumerate(labels)], description="context",
                            layout=W.Layout(width="95%"))
    ui.typed = W.Textarea(placeholder="one turn per line, the speaker's first", description="dialogue",
                          layout=W.Layout(width="95%", height="6em"))
    ui.top_k = W.IntSlider(value=gen_cfg.top_k, min=1, max=100, description="top-k")
    ui.temperature = W.FloatSlider(value=gen_cfg.temperature, min=0.1, max=2.0, step=0.05,
                                   description="temperature", style={"description_width": "initial"})
    ui.max_length = W.IntSlider(value=gen_cfg.max_new_tokens, min=1, max=64, description="max length")
    ui.seed = W.IntText(value=seed, description="seed", layout=W.Layout(width="180px"))
    ui.sample = W.Button(description="sample", button_style="primary", icon="play")
    ui.add = W.Button(description="add to human-eval CSV", icon="plus", disabled=True,
                      layout=W.Layout(width="auto"))
    ui.csv = W.Text(value=str(csv_path), description="CSV" if root is None else "CSV in OUT",
                    layout=W.Layout(width="95%"))
    ui.status = W.HTML()
    ui.context = W.HTML()
    ui.cards = W.HBox(layout=W.Layout(flex_flow="row wrap"))
    ui.table = W.Output()
    ui.attention_of = W.Dropdown(description="attention of")
    ui.attention = W.Output()

    def dialogue():
        if ui.source.value == "typed dialogue":
            return parse_dialogue(ui.typed.value), None
        ex = shown[ui.example.value]
        return list(ex.context), ex.response

    def show_attention(change=None):
        if ui.last is None:
            return
        scores, turns = ui.last["scores"], ui.last["turns"]
        k = scores.names.index(ui.attention_of.value)
        fig = attention_figure(attention_maps(scorer, turns, scores.responses[k]), title=scores.names[k])
        with ui.attention:
            ui.attention.clear_output(wait=True)
            display(Image(data=figure_png(fig)))

    def on_sample(_button=None):
        ui.status.value = "sampling..."
        try:
            turns, gold = dialogue()
            cfg = decoding(gen_cfg, ui.top_k.value, ui.temperature.value, ui.max_length.value)
            out = replies(systems, turns, cfg, max_context_tokens, ui.seed.value)
            scores = score(scorer, turns, out, gold)
        except (ValueError, TypeError, llm_baseline.LLMError) as err:  # the LLM's says what to fix
            ui.status.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            return
        settings = {"seed": ui.seed.value, "top_k": cfg.top_k, "temperature": cfg.temperature,
                    "max_new_tokens": cfg.max_new_tokens}
        ui.context.value = (f"<b>context</b>: {html.escape(format_context(turns))}<br>"
                            "<small>bars: each level's probability, the predicted level in green"
                            + ("; &#9733;: the gold level (the human reply's)" if gold is not None else "")
                            + "</small>")
        ui.cards.children = [_level_card(scores, k, on_continue) for k in range(len(scores.names))]
        with ui.table:
            ui.table.clear_output(wait=True)
            display(scores.table())
        ui.last = None  # new options select a name: the heatmap is drawn once, below
        ui.attention_of.options = scores.names
        ui.attention_of.value = scores.names[0]
        ui.last = {"turns": turns, "gold": gold, "replies": out, "scores": scores, "settings": settings}
        show_attention()
        ui.add.disabled = False
        ui.status.value = f"{len(out)} replies, seed {ui.seed.value}"

    def on_continue(reply: str):
        """Turn by turn: the chosen reply becomes the listener's turn; the speaker's next turn is typed."""
        if not reply.strip():
            ui.status.value = "<span style='color:#b00'>an empty reply cannot be a turn: sample again</span>"
            return
        ui.typed.value = "\n".join([*ui.last["turns"], reply]) + "\n"
        ui.source.value = "typed dialogue"
        ui.status.value = "type the speaker's next turn on the last line, then sample"

    def on_add(_button=None):
        if ui.last is None:
            return
        try:
            path = append_comparison(Path(root or ".") / ui.csv.value, ui.last["turns"], ui.last["replies"],
                                     ui.last["gold"], ui.last["settings"])
        except (ValueError, OSError) as err:
            ui.status.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            return
        rows = len(pd.read_csv(path, dtype=str, keep_default_na=False))
        ui.status.value = f"added: {html.escape(ui.csv.value)} now holds {rows} comparison(s)"

    ui.attention_of.observe(show_attention, "value")
    ui.sample.on_click(on_sample)
    ui.add.on_click(on_add)
    ui.on_sample, ui.on_add = on_sample, on_add
    decoding_row = W.HBox([ui.top_k, ui.temperature, ui.max_length, ui.seed])
    names = ", ".join(f"<span class='emprl-system'>{html.escape(n)}</span>" for n in systems)
    ui.view = W.VBox([W.HTML(f"<b>systems</b>: {names}"), ui.source, ui.example, ui.typed, decoding_row,
                      W.HBox([ui.sample, ui.add]), ui.csv, ui.status, ui.context, ui.cards, ui.table,
                      ui.attention_of, ui.attention])
    ui.view.add_class("emprl-playground")
    return ui


def reading(scores, maps: dict, shown: str, smoke: bool) -> str:
    """09: the static example: which reply the reward prefers, which levels match the human reply's,
    and where each identifier's attention goes for the reply ``shown``.

    ``scores``: ``score`` with a gold reply (its last row the human reply); ``maps``:
    ``attention_maps`` of ``shown``'s reply, mechanism -> AttentionMap."""
    names = scores.names[:-1]  # the last row is the human reply, scored against its own levels
    r_emp = dict(zip(names, (float(v) for v in scores.r_emp[:-1])))
    gold = " / ".join(f"{SHORT[m]} {LEVELS[int(v)]}" for m, v in zip(SHORT, scores.gold_levels))
    human = float(scores.r_emp[-1])
    above = [n for n in names if r_emp[n] > human]
    lines = [f"The identifiers put the human reply at {gold}; it scores R_emp {human:.4f} against its own levels "
             f"(the product of the identifiers' confidence in them). {len(above)} of {len(names)} systems' replies "
             "score higher: R_emp rewards the identifiers' confidence in the gold levels, not closeness to the "
             "human reply." if above else
             f"The identifiers put the human reply at {gold}; it scores R_emp {human:.4f} against its own levels "
             "(the product of the identifiers' confidence in them), and no system's reply scores higher."]
    best, worst = max(r_emp, key=r_emp.get), min(r_emp, key=r_emp.get)
    if len(r_emp) > 1:
        lines.append(f"Of the {len(r_emp)} systems' replies, {best}'s has the highest R_emp "
                     f"({r_emp[best]:.4f}) and {worst}'s the lowest ({r_emp[worst]:.4f}).")
    elif r_emp:
        lines.append(f"{best}'s reply scores R_emp {r_emp[best]:.4f}.")
    same = [n for k, n in enumerate(names) if (scores.levels[k] == scores.gold_levels).all()]
    lines.append(f"{len(same)} of {len(names)} replies get the human reply's level in all three mechanisms"
                 + (f" ({'; '.join(same)})." if same else "."))
    for m, amap in maps.items():
        words = by_words(amap)
        mean = words.weights.mean(axis=0)
        top = int(mean.argmax())
        lines.append(f"{SHORT.get(m, m)} identifier, {shown}'s reply: the most attended context word is "
                     f"'{words.context_tokens[top]}' (mean weight {mean[top]:.3f}, against "
                     f"{1 / len(mean):.3f} if the attention were uniform over the {len(mean)} words).")
    lines.append("Limits: one context and one sample per system under one seed; the levels and the attention "
                 "are our identifiers' (notebook 02), so they show how the reward sees a reply, not how empathic "
                 "it is.")
    return "\n".join(head(smoke)) + bullets(lines)
