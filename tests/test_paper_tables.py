"""Lookups into the paper's numbers (values typed from the paper, checked here by hand)."""

import pytest

from emprl import paper_tables as T


def test_reported_reads_table_ii_then_the_ablation_table():
    assert T.reported("EmpRL", ("Dist-1", "Dist-2", "Emp-F1 (%)")) == (4.55, 27.71, 66.40)
    assert T.reported("w/o RL", ("Dist-1", "Dist-2", "Emp-F1 (%)")) == (4.25, 26.09, 65.90)  # Table V only
    assert T.reported("CASE", ("PPL",)) == (35.59,)
    with pytest.raises(KeyError, match="neither"):
        T.reported("GPT-5", ("PPL",))
    with pytest.raises(KeyError, match="BLEU"):
        T.reported("EmpRL", ("BLEU",))


def test_table_i_rows_are_the_identifier_scores():
    assert T.TABLE_I["rows"]["interpretations"] == (85.25, 83.79)
