"""d2l_utils.results: the rows of ``make run``'s results table."""

from __future__ import annotations

import json

import pytest
from torch import nn

import d2l_utils as d2l
from d2l_utils.results import record_result


def test_record_result_appends_a_json_line(tmp_path, monkeypatch):
    net = nn.Linear(3, 2)  # 3 * 2 + 2 parameters
    history = d2l.History(
        train_loss=[0.5], train_acc=[0.81234], test_acc=[0.79876], epoch_time=[2.0],
        examples_per_sec=1234.56, total_time=2.54, device="cpu", profile="quick", num_epochs=1,
    )  # fmt: skip
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv("D2L_RESULTS", str(results))
    monkeypatch.setenv("D2L_NOTEBOOK", "03_resnet18_fashion_mnist")
    row = record_result("tiny", net, history, note="x")
    record_result("tiny again", net, history)
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert rows[0] == row and rows[1]["model"] == "tiny again"
    assert row["notebook"] == "03_resnet18_fashion_mnist" and row["model"] == "tiny"
    assert row["parameters"] == 8 and row["epochs"] == 1
    assert (row["train_acc"], row["test_acc"]) == (0.8123, 0.7988)
    assert (row["examples_per_sec"], row["time_s"]) == (1234.6, 2.5)
    assert (row["device"], row["profile"], row["note"]) == ("cpu", "quick", "x")


def test_record_result_without_d2l_results_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("D2L_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    history = d2l.History(train_acc=[0.5], test_acc=[0.5], examples_per_sec=1.0, num_epochs=1)
    assert record_result("m", nn.Linear(2, 2), history)["parameters"] == 6
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_run_is_never_recorded(tmp_path, monkeypatch):
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv("D2L_RESULTS", str(results))
    history = d2l.History(
        train_acc=[0.5], test_acc=[0.5], examples_per_sec=1.0, num_epochs=1, interrupted=True
    )
    with pytest.raises(ValueError, match="'m' was interrupted after 1 of its epochs"):
        record_result("m", nn.Linear(2, 2), history)
    assert not results.exists()
