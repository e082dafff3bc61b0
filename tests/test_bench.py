"""The benchmark (``benchmarks/``, run from the repository root) on tiny configurations.

The bundled sample, small nets, a few batches; timings are faked where a test checks what is
computed from them.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from benchmarks import bench, machine, report, textbook, timing
from benchmarks.cases import MODELS, Case, default_cases
from benchmarks.timing import PathTiming, case_result, run_case
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


# --- the textbook's data path -----------------------------------------------------------------


@pytest.mark.parametrize("resize", [None, 32])
def test_textbook_datasets_hold_the_same_images_and_labels(sample, resize):
    train, test = sample
    tv_train, tv_test = textbook.textbook_datasets(train, test, resize)
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
    base = textbook.textbook_datasets(*sample, None)
    for resize in (None, 32, 96):
        reused = textbook.with_transform(base[0], resize)
        fresh = textbook.textbook_datasets(*sample, resize)[0]
        assert reused.data is base[0].data  # the images are shared, not copied
        for i in (0, 999):
            assert_close(reused[i][0], fresh[i][0], rtol=0, atol=0)
    assert base[0][0][0].shape == (1, 28, 28)  # the original keeps its own transform


def test_textbook_loader_takes_the_first_images_and_the_books_workers(sample):
    tv_train, _ = textbook.textbook_datasets(*sample, None)
    with warnings.catch_warnings():  # more workers than this machine's cores: on purpose
        warnings.simplefilter("ignore", UserWarning)
        loader = textbook.textbook_loader(tv_train, 64, shuffle=False, limit=100)
    assert loader.num_workers == textbook.BOOK_WORKERS == 4
    few = textbook.textbook_loader(tv_train, 64, shuffle=False, num_workers=0, limit=100)
    labels = torch.cat([y for _, y in few])
    assert torch.equal(labels, sample[0].labels[:100])


# --- what is computed from the timings --------------------------------------------------------


def test_matmul_peak_is_2n3_flops_over_the_time_of_one_multiply(monkeypatch):
    """A fake clock that ticks 10 ms per read: the probe multiply takes 10 ms, so each timing
    repeats 0.05 / 0.01 = 5 multiplies in 10 ms, 2 ms each."""
    ticks = iter(range(10_000))
    monkeypatch.setattr(machine.time, "perf_counter", lambda: next(ticks) * 0.01)
    calls = []
    real_mm = torch.mm
    monkeypatch.setattr(machine.torch, "mm", lambda *a, **k: calls.append(1) or real_mm(*a, **k))
    rate = machine.matmul_peak(torch.device("cpu"), n=64, repeats=3)
    assert rate == pytest.approx(2 * 64**3 / 0.002 / 1e9)
    assert len(calls) == 1 + 1 + 3 * 5  # warm-up, probe, 3 timings of 5


def _conv_case() -> Case:
    # Forward FLOPs by hand: 4 output channels x 26 x 26 positions x 9 multiply-adds x 2 FLOPs.
    return Case("conv", lambda: nn.Conv2d(1, 4, kernel_size=3), resize=None, lr=0.1, batches=None)


CONV_FLOPS = 4 * 26 * 26 * 9 * 2


def _faked_timings() -> dict[str, PathTiming]:
    # Medians: textbook 2 s and 3 s per epoch, course 0.5 s and 1 s, for 1,000 images.
    return {
        "textbook": PathTiming(1000, [4.0, 2.0, 1.0], [3.0, 3.5, 2.5], [1.5, 1.5, 1.5]),
        "course": PathTiming(1000, [0.5, 0.4, 0.6], [1.0, 1.2, 0.9]),
    }


@pytest.mark.parametrize("device, course_peak", [("cpu", 100.0), ("cuda", 400.0)])
def test_case_result_from_faked_timings(device, course_peak):
    peaks = {"fp32": 100.0, "bf16": 400.0}
    result = case_result(_conv_case(), _faked_timings(), torch.device(device), peaks)
    assert result["forward_flops_per_image"] == CONV_FLOPS
    assert result["train_flops_per_image"] == 3 * CONV_FLOPS
    assert result["textbook"]["train_img_s"] == 500.0 and result["course"]["train_img_s"] == 2000.0
    assert result["textbook"]["book_timer_img_s"] == pytest.approx(1000 / 1.5)
    assert "book_timer_img_s" not in result["course"]
    assert result["speedup_train"] == 4.0  # textbook time / course time
    assert result["speedup_epoch"] == 3.0
    # The course path trains under bf16 autocast on CUDA, so its ceiling there is the bf16 peak.
    assert result["fraction_of_peak"] == pytest.approx(
        {
            "textbook": 500 * 3 * CONV_FLOPS / 100e9,
            "course": 2000 * 3 * CONV_FLOPS / (course_peak * 1e9),
        }
    )


def _faked_report(results: list[dict]) -> dict:
    return {
        "device_name": "test machine", "device": "cpu", "torch": torch.__version__,
        "command": "python -m benchmarks.bench --quick", "peak_gflops": {"fp32": 100.0},
        "results": results, "repeats": 3, "textbook_workers": 4,
        "flops_convention": timing.FLOPS_CONVENTION, "course_options": {"channels_last": False},
    }  # fmt: skip


def _table(markdown: str) -> list[list[str]]:
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows]


def test_markdown_shows_the_measured_numbers():
    result = case_result(_conv_case(), _faked_timings(), torch.device("cpu"), {"fp32": 100.0})
    markdown = report.to_markdown(_faked_report([result]))
    head, _, row = _table(markdown)
    assert head[:4] == ["model", "input", "batch", "timed"] and len(head) == len(row) == 12
    flops = f"{3 * CONV_FLOPS / 1e9:.3g}"
    peak = (
        f"{100 * 500 * 3 * CONV_FLOPS / 100e9:.0f} % → {100 * 2000 * 3 * CONV_FLOPS / 100e9:.0f} %"
    )
    assert row == [
        "conv", "28 px", "256", "epoch", "500", "2,000", "**4.00×**",
        "3.0 s", "1.0 s", "**3.00×**", flops, peak,
    ]  # fmt: skip
    assert "test machine" in markdown and "`python -m benchmarks.bench --quick`" in markdown
    assert "median of 3 runs" in markdown and "`channels_last=False`" in markdown


def test_markdown_leaves_epoch_columns_empty_for_batch_timed_models(sample):
    case = Case("tiny", _tiny, resize=None, lr=0.1, batch_size=50, batches=1)
    timings = run_case(case, *sample, torch.device("cpu"), 1, num_workers=0, log=lambda _: None)
    result = case_result(case, timings, torch.device("cpu"), {"fp32": 100.0})
    assert "speedup_epoch" not in result and result["timed"] == "1 batch"
    (row,) = _table(report.to_markdown(_faked_report([result])))[2:]
    assert row[0] == "tiny" and row[7:10] == ["—", "—", "—"]


# --- cases and timed runs ---------------------------------------------------------------------


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
    (one,) = default_cases(False, torch.device("cpu"), ["resnet18"], batch_size=32, batches=2)
    assert (one.name, one.batch_size, one.batches) == ("ResNet-18", 32, 2)


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


# --- the command line -------------------------------------------------------------------------


def test_cli_writes_json_and_markdown(tmp_path, capsys):
    args = ["--data", "sample", "--models", "lenet_bn", "--repeats", "1", "--batch-size", "500"]
    args += ["--workers", "2", "--peak-size", "512"]
    assert bench.main([*args, "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written["command"] == f"python -m benchmarks.bench {' '.join(args)} --out {tmp_path}"
    assert written["device"] == "cpu" and written["data"] == "sample"
    assert written["textbook_workers"] == 2 and written["repeats"] == 1
    assert written["peak_matmul_size"] == 512 and written["course_options"] == {}
    (row,) = written["results"]
    assert (row["model"], row["input_px"], row["batch_size"], row["timed"]) == (
        "LeNet-BN", 28, 500, "epoch",
    )  # fmt: skip
    for path in ("textbook", "course"):
        r = row[path]
        assert r["images"] == 2000 and len(r["train_s"]) == len(r["epoch_s"]) == 1
        assert r["train_img_s"] == pytest.approx(2000 / r["train_s"][0])
        assert r["epoch_s_median"] >= r["train_s_median"]  # the epoch adds the test evaluation
        assert 0 <= r["test_acc"][0] <= 1
    markdown = (tmp_path / "bench.md").read_text()
    assert markdown == report.to_markdown(written)
    assert markdown in capsys.readouterr().out  # the table is printed too


def test_unknown_model_is_refused():
    with pytest.raises(SystemExit):
        bench.main(["--models", "lenet_bn,vgg"])


def test_accuracy_comparison_writes_both_paths_per_seed(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(MODELS, "lenet_bn", _tiny)  # the flow, not LeNet's cost
    args = ["--accuracy", "--data", "sample", "--epochs", "1", "--seeds", "0,1", "--workers", "0"]
    assert bench.main([*args, "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "bench_accuracy_lenet_bn.json").read_text())
    assert written["model"] == "LeNet-BN" and written["lr"] == 1.0 and written["epochs"] == 1
    assert [r["seed"] for r in written["runs"]] == [0, 1]
    for path in ("textbook", "course"):
        finals = [r[path]["test_acc"][-1] for r in written["runs"]]
        assert written["final_test_acc"][path] == finals and all(0 <= a <= 1 for a in finals)
        assert written["mean"][path] == pytest.approx(sum(finals) / 2)
    markdown = (tmp_path / "bench_accuracy_lenet_bn.md").read_text()
    rows = _table(markdown)
    assert len(rows) == 2 + 2 + 1  # head, rule, one per seed, mean
    first = written["runs"][0]
    a, b = first["textbook"]["test_acc"][-1], first["course"]["test_acc"][-1]
    assert rows[2] == ["0", f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}"]
    assert markdown in capsys.readouterr().out


def test_course_options_reach_train_ch6():
    assert bench.course_options(bench.parse_args([])) == {}
    args = bench.parse_args(["--channels-last", "off", "--compile"])
    assert bench.course_options(args) == {"compile": True, "channels_last": False}
    assert bench.course_options(bench.parse_args(["--channels-last", "on"])) == {
        "channels_last": True
    }
