"""Playground functions (notebook 09) on tiny random generators and identifiers, checked by hand."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from emprl.models import generator as G
from emprl.eval import humaneval
from emprl.llm import client as llm_baseline
from emprl.ops import playground
from emprl.models import identifiers as I
from emprl.profiles import get_profile
from emprl.models.scoring import EmpathyScorer
from test_generator import corpus, tiny_cfg
from test_identifiers import tiny_identifier
from test_llm_baseline import reply_of, server  # noqa: F401  (server: the fake OpenAI-compatible endpoint)

torch.set_num_threads(1)
MECHS = ("emotional_reactions", "interpretations", "explorations")
TURNS = ["I lost my job today and I do not know what to do.", "Oh no, what happened?", "They closed the office."]


@pytest.fixture(scope="module")
def id_tokenizer():
    from emprl.models import encoders

    return encoders.load_tokenizer("minilm")


@pytest.fixture(scope="module")
def scorer(id_tokenizer):
    models = {m: tiny_identifier(seed=10 * k) for k, m in enumerate(MECHS)}
    return EmpathyScorer(models, id_tokenizer, 24, 12, batch_size=3, mechanism_order=MECHS)


@pytest.fixture(scope="module")
def systems():
    contexts, responses = corpus(40, 0)
    return {name: G.build_generator(tiny_cfg(tuning=tuning), contexts + responses, seed=s)
            for name, tuning, s in (("w/o RL", "prefix", 0), ("EmpRL", "full", 1))}


# --------------------------------------------------------------------------- systems


def test_find_systems_names_orders_and_skips_unfinished(systems, tmp_path):
    model, tok = systems["w/o RL"]
    ck = tmp_path / "checkpoints"
    for rel in ("ppo/zeta/policy", "ppo/no_kl/policy", "generator/prefix", "ppo/emprl/policy"):
        G.save_generator(model, tok, ck / rel)
    (ck / "ppo" / "broken" / "policy").mkdir(parents=True)  # no generator.json: an unfinished run
    found = playground.find_systems(tmp_path)
    assert list(found) == ["w/o RL", "EmpRL", "w/o KL Penalty", "PPO (zeta)"]
    assert found["PPO (zeta)"] == ck / "ppo" / "zeta" / "policy"
    assert playground.missing_systems(tmp_path) == ["w/o Empathy Reward", "w/o RL, Prefix-tuning"]
    loaded = playground.load_systems(tmp_path)
    assert set(loaded) == set(found)


def test_no_system_is_a_clear_error(tmp_path):
    assert playground.find_systems(tmp_path) == {}
    with pytest.raises(FileNotFoundError, match="notebooks 03"):
        playground.load_systems(tmp_path)


# --------------------------------------------------------------------------- replies


def test_same_seed_same_reply_and_decoding_applies(systems):
    cfg = tiny_cfg()
    one = playground.replies(systems, TURNS, playground.decoding(cfg, 20, 1.5, 6), 64, seed=3)
    assert set(one) == set(systems)
    assert one == playground.replies(systems, TURNS, playground.decoding(cfg, 20, 1.5, 6), 64, seed=3)
    others = [playground.replies(systems, TURNS, playground.decoding(cfg, 20, 1.5, 6), 64, seed=s) for s in range(4, 9)]
    assert any(o != one for o in others)  # the seed matters
    # top-k 1 is greedy decoding: compare with transformers' own greedy search
    model, tok = systems["EmpRL"]
    greedy = playground.replies({"EmpRL": systems["EmpRL"]}, TURNS, playground.decoding(cfg, 1, 1.0, 6), 64, 0)
    tok.truncation_side = "left"  # the generator keeps the latest max_source_len tokens
    ids = tok([playground.format_context(TURNS, max_tokens=64)], truncation=True, max_length=cfg.max_source_len,
              return_tensors="pt")
    ref = model.eval().generate(**ids, do_sample=False, max_new_tokens=6)
    assert greedy["EmpRL"] == tok.decode(ref[0], skip_special_tokens=True).strip()


def test_bad_decoding_and_dialogue_are_clear_errors(systems):
    cfg = tiny_cfg()
    for args, word in (((0, 1.0, 5), "top_k"), ((5, 0.0, 5), "temperature"), ((5, 1.0, 0), "max length")):
        with pytest.raises(ValueError, match=word):
            playground.decoding(cfg, *args)
    with pytest.raises(ValueError, match="empty turn"):
        playground.replies(systems, ["hi", "  "], cfg, 64, 0)
    with pytest.raises(TypeError, match="list of utterances"):
        playground.replies(systems, "hi", cfg, 64, 0)
    assert playground.parse_dialogue("I am sad.\n\n  Why?  \n") == ["I am sad.", "Why?"]
    with pytest.raises(ValueError, match="one turn per line"):
        playground.parse_dialogue(" \n")


# --------------------------------------------------------------------------- scores


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_score_levels_probabilities_and_r_emp_by_hand(scorer):
    replies = {"A": "That sounds really hard, I am sorry.", "B": "Why did that happen?"}
    gold = "What are you going to do now?"
    s = playground.score(scorer, TURNS, replies, gold)
    assert s.names == ["A", "B", playground.GOLD]
    context = "Speaker: " + TURNS[0] + " Listener: " + TURNS[1] + " Speaker: " + TURNS[2]
    logits = np.stack([[I.predict_logits(scorer.identifiers[m], scorer.tokenizer, [context], [r], 24, 12)[0].numpy()
                        for m in MECHS] for r in [*replies.values(), gold]])  # each identifier alone
    probs = _softmax(logits.astype(np.float64))
    assert np.allclose(s.probs, probs, atol=1e-5)
    gold_levels = logits[-1].argmax(-1)
    assert np.array_equal(s.gold_levels, gold_levels)
    for k in range(3):  # R_emp = exp(-sum_i CE_i) = product of the gold levels' probabilities (Eq. 2-3)
        ce = [-math.log(probs[k, j, gold_levels[j]]) for j in range(3)]
        assert s.r_emp[k] == pytest.approx(math.exp(-sum(ce)), rel=1e-5)
    table = s.table()
    assert list(table.index) == s.names and table.loc["A", "R_emp"] == round(float(s.r_emp[0]), 4)
    no_gold = playground.score(scorer, TURNS, replies)
    assert no_gold.names == ["A", "B"] and no_gold.r_emp is None and no_gold.gold_levels is None
    assert "R_emp" not in no_gold.table().columns


# --------------------------------------------------------------------------- attention


def test_attention_rows_sum_to_one_and_equal_a_hand_computation(scorer):
    model, tok = scorer.identifiers["interpretations"], scorer.tokenizer
    context, response = "Speaker: my dog died yesterday", "I am so sorry for your loss"
    a = playground.attention_map(model, tok, context, response, 24, 12, "interpretations")
    c_ids, r_ids = tok(context)["input_ids"], tok(response)["input_ids"]
    assert a.context_tokens == tok.convert_ids_to_tokens(c_ids) and a.response_tokens[0] == "[CLS]"
    assert a.weights.shape == (len(r_ids), len(c_ids))
    assert np.allclose(a.weights.sum(1), 1.0, atol=1e-6)
    with torch.no_grad():
        C = model.encode_context(torch.tensor([c_ids]), torch.ones(1, len(c_ids), dtype=torch.long))[0].double().numpy()
        R = model.encode_response(torch.tensor([r_ids]), torch.ones(1, len(r_ids), dtype=torch.long))[0].double().numpy()
    p = {n: (getattr(model.attention, n).weight.detach().double().numpy(),
             getattr(model.attention, n).bias.detach().double().numpy()) for n in ("q", "k", "v", "out")}
    q, k = R @ p["q"][0].T + p["q"][1], C @ p["k"][0].T + p["k"][1]
    hand = _softmax(q @ k.T / math.sqrt(R.shape[1]))
    assert np.allclose(a.weights, hand, atol=1e-5)
    # these are the weights the identifier uses: out(weights @ v(C)) is the attention module's output
    v = C @ p["v"][0].T + p["v"][1]
    with torch.no_grad():
        module = model.attention(torch.tensor(R[None]).float(), torch.tensor(C[None]).float(),
                                 torch.ones(1, len(c_ids), dtype=torch.long))[0].double().numpy()
    assert np.allclose((a.weights @ v) @ p["out"][0].T + p["out"][1], module, atol=1e-4)


def test_attention_context_truncated_from_the_left_like_the_scorer(scorer):
    turns = ["word " * 40 + "finally the dog"]
    maps = playground.attention_maps(scorer, turns, "sorry")
    assert set(maps) == set(MECHS)
    tokens = maps["explorations"].context_tokens
    assert len(tokens) == 24 and tokens[0] == "[CLS]" and tokens[-4:] == ["finally", "the", "dog", "[SEP]"]


def test_by_words_merges_pieces_by_hand():
    w = np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25], [0.4, 0.3, 0.2, 0.1]])
    amap = playground.AttentionMap("x", ["[CLS]", "run", "##ning", "fast"], ["so", "##rry", "[SEP]"], w)
    words = playground.by_words(amap)
    assert words.context_tokens == ["[CLS]", "running", "fast"] and words.response_tokens == ["sorry", "[SEP]"]
    cols = np.array([[0.1, 0.5, 0.4], [0.25, 0.5, 0.25], [0.4, 0.5, 0.1]])
    assert np.allclose(words.weights, [(cols[0] + cols[1]) / 2, cols[2]])
    assert np.allclose(words.weights.sum(1), 1.0)
    sp = playground.AttentionMap("x", ["▁I", "▁lo", "st", "</s>"], ["▁ok", "</s>"], np.full((2, 4), 0.25))
    assert playground.by_words(sp).context_tokens == ["I", "lost", "</s>"]


def test_attention_figure_has_one_heatmap_per_mechanism(scorer):
    fig = playground.attention_figure(playground.attention_maps(scorer, TURNS, "so sorry"), title="t")
    assert len([ax for ax in fig.axes if ax.images]) == 3
    assert playground.figure_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"
    scores = playground.score(scorer, TURNS, {"A": "so sorry", "B": "why?"}, "what now?")
    fig = playground.levels_figure(scores)
    bars = [patch.get_width() for patch in fig.axes[1].patches]  # IP: 3 replies x 3 levels, in order
    assert np.allclose(bars, scores.probs[:, 1, :].ravel())


# --------------------------------------------------------------------------- human-evaluation CSV


def test_comparisons_csv_is_read_by_the_human_eval_kit(tmp_path):
    path = tmp_path / "kit" / "comparisons.csv"
    settings = {"seed": 1, "top_k": 20}
    playground.append_comparison(path, TURNS, {"EmpRL": "so sorry, that is hard", "w/o RL, Prefix-tuning": "ok"},
                                 "what now?", settings)
    playground.append_comparison(path, ["my cat is back!"], {"EmpRL": "great news", "w/o RL, Prefix-tuning": "why"},
                                 None, settings)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["context", "gold", "EmpRL", "w/o RL, Prefix-tuning", "seed", "top_k"]
    assert frame["context"].tolist() == [playground.format_context(TURNS), "Speaker: my cat is back!"]
    assert frame["gold"].tolist() == ["what now?", ""]
    assert humaneval.main(["export", "--generations", str(path), "--systems", "EmpRL", "w/o RL, Prefix-tuning",
                           "--n", "2", "--out", str(tmp_path / "sheets")]) == 0
    sheet = pd.read_csv(tmp_path / "sheets" / "rating_sheet_rater1.csv")
    assert sorted(sheet["response"]) == sorted(["so sorry, that is hard", "ok", "great news", "why"])
    with pytest.raises(ValueError, match="comparisons.csv has columns"):
        playground.append_comparison(path, TURNS, {"EmpRL": "x"}, None, settings)


def test_comparisons_csv_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "comparisons.csv"
    playground.append_comparison(path, TURNS, {"EmpRL": "so sorry"}, "what now?")
    before = path.read_bytes()

    def dies_half_way(self, target, **kw):
        Path(target).write_text("context,gold\n\"torn")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        playground.append_comparison(path, TURNS, {"EmpRL": "again"}, "what now?")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["comparisons.csv"]


# --------------------------------------------------------------------------- the LLM as one more system


def test_llm_system_only_with_an_endpoint(tmp_path, capsys):
    smoke = get_profile("smoke")
    assert playground.llm_system(smoke, None, tmp_path, environ={}) is None
    assert "LLM baseline skipped" in capsys.readouterr().out
    llm = playground.llm_system(smoke, None, tmp_path, {"EMPRL_LLM_URL": "http://127.0.0.1:9/v1",
                                                        "EMPRL_LLM_MODEL": "tiny-chat"})
    assert llm.name == "LLM (tiny-chat)" and llm.cache_path == tmp_path / "cache" / llm_baseline.CACHE_NAME
    assert list(llm.shots) == llm_baseline.paper_shots(smoke)  # notebook 05's demonstrations


def test_llm_replies_beside_the_generators_seeded_and_cached(systems, scorer, server, tmp_path):
    shots = tuple(llm_baseline.paper_shots(get_profile("smoke")))
    llm = playground.LLMSystem(server.endpoint, shots, tmp_path / "c.jsonl")
    cfg = playground.decoding(tiny_cfg(), 20, 0.7, 6)
    both = {**systems, llm.name: llm}
    out = playground.replies(both, TURNS, cfg, 3, seed=3)
    prompt = llm_baseline.build_prompt(playground.format_context(TURNS), shots)  # whole context, not 3 words
    assert out[llm.name] == reply_of(prompt)
    assert {k: v for k, v in out.items() if k != llm.name} == playground.replies(systems, TURNS, cfg, 3, seed=3)
    body = server.bodies[-1]
    assert (body["seed"], body["temperature"], body["max_tokens"]) == (3, 0.7, llm_baseline.Sampling.max_tokens)
    assert playground.replies(both, TURNS, cfg, 3, seed=3) == out and len(server.bodies) == 1  # the cache
    playground.replies(both, TURNS, cfg, 3, seed=4)
    assert len(server.bodies) == 2 and server.bodies[-1]["seed"] == 4  # another seed, another request
    scores = playground.score(scorer, TURNS, out, gold="what now?")
    assert scores.names == [*systems, llm.name, playground.GOLD]


def test_widget_with_the_llm_and_its_errors(systems, scorer, server, tmp_path):
    pytest.importorskip("ipywidgets")
    llm = playground.LLMSystem(server.endpoint, tuple(llm_baseline.paper_shots(get_profile("smoke"))),
                               tmp_path / "c.jsonl")
    examples = [SimpleNamespace(context=TURNS, response="what now?", emotion="sad")]
    ui = playground.widget({**systems, llm.name: llm}, scorer, examples, tiny_cfg(), 64, "c.csv", root=tmp_path)
    ui.sample.click()
    assert len(ui.cards.children) == 4 and ui.last["replies"][llm.name].startswith("reply to [")
    ui.add.click()
    assert pd.read_csv(tmp_path / "c.csv", dtype=str)[llm.name].tolist() == [ui.last["replies"][llm.name]]
    server.plan = {playground.format_context(TURNS): ["ok", "401"]}  # the second request is refused
    ui.seed.value = 99  # not cached: asked, and refused
    ui.sample.click()
    assert "HTTP 401" in ui.status.value and "API key" in ui.status.value


# --------------------------------------------------------------------------- the widgets


def test_widget_samples_scores_and_adds_to_the_csv(systems, scorer, tmp_path):
    pytest.importorskip("ipywidgets")
    examples = [SimpleNamespace(context=TURNS, response="what now?", emotion="sad"),
                SimpleNamespace(context=["my cat is back!"], response="great!", emotion="joyful")]
    ui = playground.widget(systems, scorer, examples, tiny_cfg(), 64, "c.csv", seed=5, root=tmp_path)
    assert ui.add.disabled
    ui.example.value = 1
    ui.sample.click()
    assert len(ui.cards.children) == 3  # two systems and the human reply
    card_html = [w.value for card in ui.cards.children for w in card.children if hasattr(w, "value")
                 and isinstance(w.value, str)]
    expected = playground.replies(systems, ["my cat is back!"], tiny_cfg(), 64, seed=5)
    assert all(any(r in h for h in card_html) for r in expected.values() if r)
    bars = [b for card in ui.cards.children for row in card.children if hasattr(row, "children")
            for b in row.children if "emprl-level-bar" in b._dom_classes]
    assert len(bars) == 9 * 3
    assert ui.attention_of.options == ("w/o RL", "EmpRL", playground.GOLD)
    ui.add.click()
    ui.add.click()
    assert len(pd.read_csv(tmp_path / "c.csv")) == 2 and "holds 2" in ui.status.value
    # turn by turn: continue with EmpRL's reply, type the speaker's next turn, sample again
    reply = ui.last["replies"]["EmpRL"]
    ui.cards.children[1].children[-1].click()
    assert ui.source.value == "typed dialogue" and ui.typed.value == f"my cat is back!\n{reply}\n"
    ui.typed.value += "He was hiding in the garage."
    ui.sample.click()
    assert ui.last["turns"] == ["my cat is back!", reply, "He was hiding in the garage."] and ui.last["gold"] is None
    assert len(ui.cards.children) == 2 and "R<sub>emp" not in str([c.children for c in ui.cards.children])
    ui.typed.value = ""
    ui.sample.click()
    assert "one turn per line" in ui.status.value
