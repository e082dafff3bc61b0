"""The benchmark's pieces, on tiny configurations (the bundled sample, small nets, few batches)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from d2l_utils import bench
from d2l_utils.bench import Case, default_cases, matmul_peak, run_case, textbook_datasets
from d2l_utils.data import load_sample, resize_batch


@pytest.fixture(scope="module")
def sample():
    return load_sample(train=True), load_sample(train=False)


def _tiny() -> nn.Module:
    """A conv net that takes any image size (global pooling), cheap enough for tests."""
    return nn.Sequential(
        nn.Conv2d(1, 4, kernel_size=3, stride=2),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 10),
    )


@pytest.mark.parametrize("resize", [None, 32])
def test_textbook_datasets_hold_the_same_images_and_labels(sample, resize):
    train, test = sample
    tv_train, tv_test = textbook_datasets(train, test, resize)
    assert (len(tv_train), len(tv_test)) == (len(train), len(test))
    size = None if resize is None else (resize, resize)
    for tv, ours in ((tv_train, train), (tv_test, test)):
        picks = [0, 1, len(ours) // 2, len(ours) - 1]
        X = torch.stack([tv[i][0] for i in picks])
        assert [tv[i][1] for i in picks] == ours.labels[picks].tolist()
        if resize is None:  # ToTensor alone: exactly the course's images over 255
            assert_close(X, resize_batch(ours.images[picks], None), rtol=0, atol=0)
        else:  # through PIL's Resize: the tolerance tests/test_fastpath.py pins
            assert X.shape == (4, 1, resize, resize)
            assert_close(X, resize_batch(ours.images[picks], size), rtol=0, atol=1 / 255 + 1e-6)


def test_textbook_datasets_are_read_once_and_reused_with_each_transform(sample):
    base = textbook_datasets(*sample, None)
    for resize in (None, 32, 96):
        reused = bench._with_transform(base[0], resize)
        fresh = textbook_datasets(*sample, resize)[0]
        assert reused.data is base[0].data  # the images are shared, not copied
        for i in (0, 999):
            assert_close(reused[i][0], fresh[i][0], rtol=0, atol=0)
    assert base[0][0][0].shape == (1, 28, 28)  # the original keeps its own transform


def test_matmul_peak_is_a_rate():
    rate = matmul_peak(torch.device("cpu"), n=256, repeats=2)
    assert math.isfinite(rate) and rate > 0.1  # GFLOP/s; any machine that runs torch does more


def test_default_cases_follow_the_book_and_the_device():
    cpu = {c.name: c for c in default_cases(quick=True, device=torch.device("cpu"))}
    assert list(cpu) == ["LeNet-BN", "ResNet-18", "DenseNet"]
    assert (cpu["LeNet-BN"].resize, cpu["LeNet-BN"].lr, cpu["LeNet-BN"].batches) == (
        None,
        1.0,
        None,
    )
    assert (cpu["ResNet-18"].resize, cpu["ResNet-18"].lr) == (96, 0.05)
    assert (cpu["DenseNet"].resize, cpu["DenseNet"].lr) == (96, 0.1)
    assert all(c.batch_size == 256 for c in cpu.values())
    # --quick on a CPU: one batch per run, the median of the runs leaves out the cold first one.
    assert [(c.batches, c.warmup) for c in cpu.values()] == [(None, 2), (1, 0), (1, 0)]
    slow = default_cases(quick=False, device=torch.device("cpu"))
    assert [(c.batches, c.warmup) for c in slow] == [(None, 2), (4, 1), (4, 1)]
    gpu = default_cases(quick=True, device=torch.device("cuda"))
    assert all(c.batches is None for c in gpu)  # whole epochs where epochs are cheap


def test_run_case_times_both_paths_over_a_few_batches(sample):
    case = Case("tiny", _tiny, resize=32, lr=0.1, batch_size=32, batches=2)
    logged: list[str] = []
    timings = run_case(
        case, *sample, torch.device("cpu"), repeats=2, num_workers=0, log=logged.append
    )
    for path in ("course", "textbook"):
        t = timings[path]
        assert t.images == 64
        assert len(t.train_s) == len(t.train_loss) == len(t.train_acc) == 2
        assert all(s > 0 for s in t.train_s)
        assert t.epoch_s == [] and t.test_acc == []  # a few batches: no evaluation timed
    assert len(timings["textbook"].book_s) == 2 and timings["course"].book_s == []
    # The paths take turns, and the order alternates.
    assert [line.split()[1] for line in logged] == ["course", "textbook", "textbook", "course"]


def test_cli_writes_json_and_markdown(tmp_path, capsys):
    args = ["--data", "sample", "--models", "lenet_bn", "--repeats", "1", "--batch-size", "500"]
    args += ["--workers", "2", "--peak-size", "512"]
    assert bench.main([*args, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["command"] == f"python -m d2l_utils.bench {' '.join(args)} --out {tmp_path}"
    assert report["device"] == "cpu" and report["data"] == "sample"
    assert report["textbook_workers"] == 2 and report["repeats"] == 1
    assert report["peak_matmul_size"] == 512 and report["course_options"] == {}
    assert report["peak_gflops"]["fp32"] > 0 and "3 x forward FLOPs" in report["flops_convention"]
    (row,) = report["results"]
    assert (row["model"], row["input_px"], row["batch_size"], row["timed"]) == (
        "LeNet-BN", 28, 500, "epoch",
    )  # fmt: skip
    for path in ("textbook", "course"):
        r = row[path]
        assert r["images"] == 2000 and len(r["train_s"]) == len(r["epoch_s"]) == 1
        assert r["train_img_s"] == pytest.approx(2000 / r["train_s"][0])
        assert r["epoch_s_median"] >= r["train_s_median"]  # the epoch adds the test evaluation
        assert 0 <= r["test_acc"][0] <= 1
    assert row["speedup_train"] == pytest.approx(
        row["course"]["train_img_s"] / row["textbook"]["train_img_s"]
    )
    assert row["speedup_epoch"] == pytest.approx(
        row["textbook"]["epoch_s_median"] / row["course"]["epoch_s_median"]
    )
    flops = row["train_flops_per_image"]
    assert flops == 3 * row["forward_flops_per_image"] > 0
    for path in ("textbook", "course"):
        expected = row[path]["train_img_s"] * flops / (report["peak_gflops"]["fp32"] * 1e9)
        assert row["fraction_of_peak"][path] == pytest.approx(expected)

    markdown = (tmp_path / "bench.md").read_text()
    assert report["device_name"] in markdown and report["command"] in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | input | batch |") and len(table) == 3  # head, rule, row
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[:4] == ["LeNet-BN", "28 px", "500", "epoch"]
    assert cells[6] == f"**{row['speedup_train']:.2f}×**"
    assert cells[9] == f"**{row['speedup_epoch']:.2f}×**"
    assert markdown in capsys.readouterr().out  # the table is printed too


def test_markdown_leaves_epoch_columns_empty_for_batch_timed_models(sample):
    case = Case("tiny", _tiny, resize=None, lr=0.1, batch_size=50, batches=1)
    timings = run_case(case, *sample, torch.device("cpu"), 1, num_workers=0, log=lambda _: None)
    result = bench._case_result(case, timings, torch.device("cpu"), {"fp32": 100.0})
    assert "speedup_epoch" not in result and result["timed"] == "1 batch"
    report = {
        "device_name": "test machine", "device": "cpu", "torch": torch.__version__,
        "command": "python -m d2l_utils.bench --quick", "peak_gflops": {"fp32": 100.0},
        "results": [result], "repeats": 1, "textbook_workers": 4,
        "flops_convention": bench.FLOPS_CONVENTION,
    }  # fmt: skip
    row = bench.to_markdown(report).splitlines()[4]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "tiny" and cells[7:10] == ["—", "—", "—"]


def test_unknown_model_is_refused():
    with pytest.raises(SystemExit):
        bench.main(["--models", "lenet_bn,vgg"])


def test_accuracy_comparison_writes_both_paths_per_seed(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(bench.MODELS, "lenet_bn", _tiny)  # the flow, not LeNet's cost
    args = ["--accuracy", "--data", "sample", "--epochs", "1", "--seeds", "0,1", "--workers", "0"]
    assert bench.main([*args, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench_accuracy_lenet_bn.json").read_text())
    assert report["model"] == "LeNet-BN" and report["lr"] == 1.0 and report["epochs"] == 1
    assert [r["seed"] for r in report["runs"]] == [0, 1]
    for path in ("textbook", "course"):
        finals = [r[path]["test_acc"][-1] for r in report["runs"]]
        assert report["final_test_acc"][path] == finals and all(0 <= a <= 1 for a in finals)
        assert report["mean"][path] == pytest.approx(sum(finals) / 2)
    markdown = (tmp_path / "bench_accuracy_lenet_bn.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + 2 + 1  # head, rule, one per seed, mean
    assert markdown in capsys.readouterr().out


def test_course_options_reach_train_ch6():
    assert bench._options(bench._parse([])) == {}
    args = bench._parse(["--channels-last", "off", "--compile"])
    assert bench._options(args) == {"compile": True, "channels_last": False}
    assert bench._options(bench._parse(["--channels-last", "on"])) == {"channels_last": True}
