"""Human-evaluation kit: round trips on synthetic filled sheets with known answers, and bad sheets."""

import numpy as np
import pandas as pd
import pytest

from emprl.eval import humaneval as H

CONTEXTS = [f"Speaker: context number {i}" for i in range(8)]
RESPONSES = {
    "EmpRL": [f"empathetic reply {i}" for i in range(8)],
    "w/o RL": [f"plain reply {i}" for i in range(8)],
    "CASE": [f"generic reply {i}" for i in range(8)],
}


def _fill_ratings(paths, rule):
    """Fill each rater's sheet with rule(rater, system) -> (empathy, relevance, fluency)."""
    key = pd.read_csv(paths["key"]).set_index("item_id")
    for r in (1, 2, 3):
        sheet = pd.read_csv(paths[f"rater{r}"], dtype=str, keep_default_na=False)
        for i, item in enumerate(sheet["item_id"]):
            e, rel, f = rule(r, key.loc[item, "system"])
            sheet.loc[i, ["empathy", "relevance", "fluency"]] = [str(e), str(rel), str(f)]
        sheet.to_csv(paths[f"rater{r}"], index=False)


def test_fleiss_kappa_textbook_example():
    # Fleiss (1971) as worked in Wikipedia's "Fleiss' kappa": 10 items, 14 raters, 5 categories;
    # P-bar = 0.378, P-e-bar = 0.213, kappa = 0.210.
    counts = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]
    assert H.fleiss_kappa(counts) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_kappa_hand_computed_and_edge_cases():
    # items [2,0], [1,1]: P_i = 1, 0; p_j = 3/4, 1/4; Pe = 10/16; kappa = (0.5 - 0.625) / 0.375
    assert H.fleiss_kappa([[2, 0], [1, 1]]) == pytest.approx(-1 / 3)
    assert H.fleiss_kappa([[3, 0], [0, 3]]) == pytest.approx(1.0)
    assert np.isnan(H.fleiss_kappa([[3, 0], [3, 0]]))
    with pytest.raises(ValueError, match="same number"):
        H.fleiss_kappa([[3, 0], [1, 1]])


def test_rating_round_trip_known_means(tmp_path):
    paths = H.export_rating(CONTEXTS, RESPONSES, tmp_path, n=5, seed=1)
    sheet = pd.read_csv(paths["rater1"])
    assert len(sheet) == 15 and list(sheet.columns) == ["item_id", "context", "response", "empathy", "relevance", "fluency"]
    assert not set(H.KEY_ONLY_COLUMNS) & set(sheet.columns)
    # shuffled: rows are not grouped by system, and raters get different orders
    key = pd.read_csv(paths["key"])
    assert key["system"].tolist() != sorted(key["system"].tolist(), key=list(RESPONSES).index)
    assert pd.read_csv(paths["rater2"])["item_id"].tolist() != sheet["item_id"].tolist()
    # the sheet shows the right response for each blind id
    merged = sheet.merge(key, on="item_id")
    assert all(RESPONSES[s][i] == resp for s, i, resp in zip(merged["system"], merged["example_index"], merged["response"]))

    scores = {"EmpRL": (4, 4, 5), "w/o RL": (2, 3, 4), "CASE": (1, 2, 3)}
    _fill_ratings(paths, lambda r, s: (scores[s][0] + (r == 3), scores[s][1], scores[s][2]))
    res = H.score_ratings([paths["rater1"], paths["rater2"], paths["rater3"]], paths["key"])
    means = res["means"]
    # empathy: raters 1, 2 give e, rater 3 gives e + 1 -> e + 1/3
    assert means.loc["EmpRL", "Empathy"] == pytest.approx(4 + 1 / 3)
    assert means.loc["w/o RL", "Relevance"] == pytest.approx(3.0)
    assert means.loc["CASE", "Fluency"] == pytest.approx(3.0)
    assert res["kappa"]["Relevance"] == pytest.approx(1.0)  # raters agree perfectly
    assert res["kappa"]["Empathy"] < 1.0
    assert res["n_items"] == {"EmpRL": 5, "w/o RL": 5, "CASE": 5} and res["n_raters"] == 3


def _fill_ab(paths, outcomes_by_rater):
    """outcomes_by_rater[r][k]: outcome for model A on the k-th key row -> the blind choice."""
    key = pd.read_csv(paths["key"])
    for r, outcomes in outcomes_by_rater.items():
        choice = {}
        for (item, a_pos), outcome in zip(zip(key["item_id"], key["a_position"]), outcomes):
            choice[item] = "tie" if outcome == "tie" else str(a_pos if outcome == "win" else 3 - a_pos)
        path = paths.get(f"rater{r}", paths["key"].parent / f"ab_sheet_rater{r}.csv")
        sheet = pd.read_csv(paths["rater1"] if r == 4 else path, dtype=str, keep_default_na=False)
        sheet["choice"] = sheet["item_id"].map(choice)
        sheet.to_csv(path, index=False)
        paths[f"rater{r}"] = path


def test_ab_round_trip_majority_and_fourth_rater(tmp_path):
    two = {k: RESPONSES[k] for k in ("EmpRL", "CASE")}
    paths = H.export_ab(CONTEXTS, two, "EmpRL", tmp_path, n=4, seed=2)
    key = pd.read_csv(paths["key"])
    sheet = pd.read_csv(paths["rater1"])
    assert list(sheet.columns) == ["item_id", "context", "response_1", "response_2", "choice"]
    assert set(key["a_position"]) <= {1, 2}
    for _, row in sheet.merge(key, on="item_id").iterrows():  # model A's response sits at a_position
        assert row[f"response_{row['a_position']}"] == RESPONSES["EmpRL"][row["example_index"]]
    # items (key order): win,win,lose -> win | tie,tie,win -> tie | win,lose,tie -> split, 4th: lose | lose x3 -> lose
    votes = {1: ["win", "tie", "win", "lose"], 2: ["win", "tie", "lose", "lose"], 3: ["lose", "win", "tie", "lose"]}
    _fill_ab(paths, votes)
    sheets = [paths["rater1"], paths["rater2"], paths["rater3"]]
    assert H.split_items(sheets, paths["key"]) == [key["item_id"][2]]
    with pytest.raises(H.SheetError, match="fourth rater"):
        H.score_ab(sheets, paths["key"])
    tiebreak = H.export_tiebreak(sheets, paths["key"], tmp_path / "ab_sheet_rater4.csv")
    assert pd.read_csv(tiebreak)["item_id"].tolist() == [key["item_id"][2]]
    _fill_ab(paths, {4: ["win", "win", "lose", "win"]})  # only the split item counts
    tb = pd.read_csv(paths["rater4"], dtype=str, keep_default_na=False)
    tb[tb["item_id"] == key["item_id"][2]].to_csv(paths["rater4"], index=False)
    res = H.score_ab(sheets, paths["key"], tiebreak_path=paths["rater4"])
    row = res["table"].loc["EmpRL vs CASE"]
    assert (row["Win (%)"], row["Lose (%)"], row["Tie (%)"]) == (25.0, 50.0, 25.0)
    assert res["n_split"] == 1
    # kappa on the three raters' outcomes, by hand: counts (win,lose,tie) = [2,1,0],[1,0,2],[1,1,1],[0,3,0]
    assert res["kappa"] == pytest.approx(H.fleiss_kappa([[2, 1, 0], [1, 0, 2], [1, 1, 1], [0, 3, 0]]))
    p_bar = (1 / 3 + 1 / 3 + 0 + 1) / 4
    p_e = (4 / 12) ** 2 + (5 / 12) ** 2 + (3 / 12) ** 2
    assert res["kappa"] == pytest.approx((p_bar - p_e) / (1 - p_e))


@pytest.fixture
def filled(tmp_path):
    paths = H.export_rating(CONTEXTS, RESPONSES, tmp_path, n=3, seed=0)
    _fill_ratings(paths, lambda r, s: (3, 3, 3))
    return paths, H.read_key(paths["key"])


def _edit(path, fn):
    sheet = pd.read_csv(path, dtype=str, keep_default_na=False)
    sheet = fn(sheet)
    sheet.to_csv(path, index=False)


def test_bad_sheet_out_of_range_names_file_and_line(filled):
    paths, key = filled
    _edit(paths["rater1"], lambda s: s.assign(fluency=["3"] * 4 + ["7"] + ["3"] * (len(s) - 5)))
    with pytest.raises(H.SheetError, match=r"rating_sheet_rater1\.csv, line 6, .*fluency.*'7'"):
        H.read_sheet(paths["rater1"], key)


def test_bad_sheet_empty_or_fractional_score(filled):
    paths, key = filled
    _edit(paths["rater2"], lambda s: s.assign(empathy=["3.5"] + ["3"] * (len(s) - 1)))
    with pytest.raises(H.SheetError, match=r"line 2, .*empathy.*whole number"):
        H.read_sheet(paths["rater2"], key)
    _edit(paths["rater2"], lambda s: s.assign(empathy=["3"] * (len(s) - 1) + [""]))
    with pytest.raises(H.SheetError, match=r"empathy"):
        H.read_sheet(paths["rater2"], key)


def test_bad_sheet_missing_rows(filled):
    paths, key = filled
    _edit(paths["rater3"], lambda s: s.iloc[:-2])
    with pytest.raises(H.SheetError, match=r"rating_sheet_rater3\.csv: 2 row\(s\) missing"):
        H.score_ratings([paths["rater1"], paths["rater3"]], paths["key"])


def test_bad_sheet_unblinded(filled):
    paths, key = filled
    ks = pd.read_csv(paths["key"])
    _edit(paths["rater1"], lambda s: s.merge(ks[["item_id", "system"]], on="item_id"))
    with pytest.raises(H.SheetError, match="not blind.*system"):
        H.read_sheet(paths["rater1"], key)
    _edit(paths["rater2"], lambda s: s.assign(item_id=["EmpRL_1"] + s["item_id"].tolist()[1:]))
    with pytest.raises(H.SheetError, match="line 2: item id 'EmpRL_1' names system 'EmpRL'"):
        H.read_sheet(paths["rater2"], key)


def test_bad_sheet_unknown_and_duplicate_ids(filled):
    paths, key = filled
    _edit(paths["rater1"], lambda s: s.assign(item_id=s["item_id"].tolist()[:-1] + ["R9999"]))
    with pytest.raises(H.SheetError, match="line 10: unknown item id 'R9999'"):
        H.read_sheet(paths["rater1"], key)
    _edit(paths["rater2"], lambda s: s.assign(item_id=[s["item_id"][0]] + s["item_id"].tolist()[:-1]))
    with pytest.raises(H.SheetError, match="line 3: .* already on line 2"):
        H.read_sheet(paths["rater2"], key)


def test_bad_ab_choice(tmp_path):
    paths = H.export_ab(CONTEXTS, RESPONSES, "EmpRL", tmp_path, n=2, seed=0)
    _edit(paths["rater1"], lambda s: s.assign(choice=["A"] + ["tie"] * (len(s) - 1)))
    with pytest.raises(H.SheetError, match=r"line 2, .*choice must be one of"):
        H.read_sheet(paths["rater1"], H.read_key(paths["key"]))


def test_cli_export_and_score(tmp_path, capsys):
    gen = tmp_path / "gen.csv"
    pd.DataFrame({"context": CONTEXTS, **RESPONSES}).to_csv(gen, index=False)
    out = tmp_path / "kit"
    assert H.main(["export", "--generations", str(gen), "--systems", "EmpRL", "CASE", "--n", "4", "--out", str(out)]) == 0
    paths = {"key": out / "rating_key.csv", **{f"rater{r}": out / f"rating_sheet_rater{r}.csv" for r in (1, 2, 3)}}
    _fill_ratings(paths, lambda r, s: (5, 4, 3) if s == "EmpRL" else (1, 2, 3))
    assert H.main(["score", "--key", str(paths["key"]), *(str(paths[f"rater{r}"]) for r in (1, 2, 3))]) == 0
    printed = capsys.readouterr().out
    assert "EmpRL" in printed and "5.0" in printed
    assert H.main(["export", "--generations", str(gen), "--systems", "Nope", "--out", str(out)]) == 1
    assert "missing column" in capsys.readouterr().err
    # filled sheets are never overwritten silently
    assert H.main(["export", "--generations", str(gen), "--systems", "EmpRL", "CASE", "--n", "4", "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert pd.read_csv(paths["rater1"])["empathy"].notna().all()
    assert H.main(["export", "--generations", str(gen), "--systems", "EmpRL", "CASE", "--out", str(out), "--n", "4",
                   "--overwrite"]) == 0
    assert pd.read_csv(paths["rater1"])["empathy"].isna().all()
