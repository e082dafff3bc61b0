"""The exercise checks (``d2l_utils.exercises``) and the student edition's stubs.

Each check accepts the right answer, computed here a second way where that is cheap, and rejects
wrong values and wrong types without printing the answer; ``...`` raises ``YourTurn``, shown as
one line.  Every check is used by a notebook and every notebook's check exists.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import nbformat
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from d2l_utils import exercises
from d2l_utils.exercises import CHECKS, YourTurn, check, expected, verdict

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHECK_CALL = re.compile(r'check\("([^"]+)", answer\)')


def _lenet_bias_before_bn() -> int:
    from d2l_utils.models.lenet import lenet_bn

    layers = list(lenet_bn())
    return sum(
        layer.bias.numel()
        for layer, after in zip(layers, layers[1:], strict=False)
        if isinstance(layer, nn.Conv2d | nn.Linear)
        and isinstance(after, nn.BatchNorm1d | nn.BatchNorm2d)
    )


def _inception_params() -> int:
    # GoogLeNet's block 3a, built from torch's layers (the notebook's class, without its forward).
    branches = [
        nn.Conv2d(192, 64, 1),
        nn.Sequential(nn.Conv2d(192, 96, 1), nn.Conv2d(96, 128, 3, padding=1)),
        nn.Sequential(nn.Conv2d(192, 16, 1), nn.Conv2d(16, 32, 5, padding=2)),
        nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(192, 32, 1)),
    ]
    return sum(p.numel() for b in branches for p in b.parameters())


def _book_minus_torchvision() -> int:
    # The book's convolutions carry biases (one per output channel); torchvision's shortcut
    # convolutions are followed by a batch norm (a scale and a shift per channel) instead.
    from d2l_utils.models.resnet import d2l_resnet18

    with torch.device("meta"):
        book = d2l_resnet18()
    book_biases = sum(m.bias.numel() for m in book.modules() if isinstance(m, nn.Conv2d))
    shortcut_bn = 2 * (128 + 256 + 512)
    return book_biases - shortcut_bn


def _torchvision_flops_ratio() -> float:
    import torchvision

    def flops(make) -> int:
        with torch.device("meta"):
            net = make(num_classes=10)
            net.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)  # grey images
            with FlopCounterMode(display=False) as counter:
                net.eval()(torch.zeros(1, 1, 96, 96))
        return counter.get_total_flops()

    return flops(torchvision.models.resnet50) / flops(torchvision.models.resnet18)


def _never_seen_with_own_seeds() -> int:
    n, batch = 2000, 256
    perms = [torch.randperm(n, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    seen = torch.zeros(n, dtype=torch.long)
    for start in range(0, n, batch):
        for rank, perm in enumerate(perms):
            seen[perm[start : start + batch].tensor_split(2)[rank]] += 1
    return int((seen == 0).sum())


# The right answers, computed here independently of d2l_utils.exercises where that is cheap;
# None: only the check's own value (a count of saved tensors, a FLOPs ratio of our DenseNet).
INDEPENDENT = {
    "01.1": _lenet_bias_before_bn,
    "02.1": _inception_params,
    "03.1": lambda: (64 * 128 * 9 + 128) + (128 * 128 * 9 + 128) + 2 * 2 * 128 + (64 * 128 + 128),
    "03.2": _book_minus_torchvision,
    "03.3": lambda: (1, 512, math.ceil(33 / 32), math.ceil(33 / 32)),  # five halvings of the side
    "03.4": _torchvision_flops_ratio,
    "04.1": lambda: 4.0,  # 2x2 pooling first: the convolution sees a quarter of the pixels
    "04.2": None,
    "04.3": None,
    "05.3": lambda: 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64,  # two 1x1 projections with their BN
    "07.1": _never_seen_with_own_seeds,
}


def wrong_values(exercise: str) -> list:
    c, right = CHECKS[exercise], expected(exercise)
    if c.kind == "count":
        return [right + 1, right - 1, 2 * right, -right, 0]
    if c.kind == "number":
        step = 2 * c.tolerance + 0.05 * abs(right)
        return [right + step, right - step, 1 / right, 100 * right]
    return [right[:-1], right + (1,), tuple(d + 1 for d in right), (0,) * len(right)]


def wrong_types(exercise: str) -> list:
    right = expected(exercise)
    kind = CHECKS[exercise].kind
    common = [str(right), None, True, [right]]
    if kind == "count":
        return common + [float(right)]
    if kind == "shape":
        return common + [list(right), tuple(float(d) for d in right)]
    return common


def revealing(exercise: str) -> list[str]:
    """Ways the expected value could appear in a message."""
    right = expected(exercise)
    if isinstance(right, tuple):
        return [str(right), str(list(right)), ", ".join(map(str, right))]
    if isinstance(right, int):
        return [str(right), f"{right:,}"]
    return [f"{right:.{d}f}" for d in (1, 2, 3)] + [str(right)]


def test_every_check_has_an_entry_in_the_table_of_independent_answers():
    assert set(INDEPENDENT) == set(CHECKS)


@pytest.mark.parametrize("exercise", sorted(CHECKS))
def test_the_right_answer_is_right(exercise, capsys):
    if INDEPENDENT[exercise] is not None:
        right = INDEPENDENT[exercise]()
        assert verdict(exercise, right) == (True, f"Exercise {exercise}: right")
    check(exercise, expected(exercise))
    assert capsys.readouterr().out == f"Exercise {exercise}: right\n"


def test_integers_of_other_types_and_torch_sizes_are_accepted():
    assert verdict("05.3", torch.tensor(expected("05.3")).item())[0]
    assert verdict("03.3", torch.Size(expected("03.3")))[0]
    assert verdict("03.4", torch.tensor(expected("03.4")).item())[0]
    assert verdict("04.1", 4)[0]  # an int is a number


@pytest.mark.parametrize("exercise", sorted(CHECKS))
def test_wrong_values_and_types_are_rejected_without_giving_the_answer_away(exercise):
    for answer in wrong_values(exercise) + wrong_types(exercise):
        ok, line = verdict(exercise, answer)
        assert not ok, (exercise, answer)
        assert line.startswith(f"Exercise {exercise}: not yet: ") and "\n" not in line
        said = line.removeprefix(f"Exercise {exercise}: not yet: ")
        assert not any(v in said for v in revealing(exercise)), (answer, line)


def test_a_wrong_type_says_what_type_is_wanted():
    assert verdict("01.1", 226.0)[1].endswith("should be a whole number (an int), not float")
    assert "torch.Size" in verdict("03.3", [1, 2])[1]


def test_hints_point_at_the_mistake():
    right = expected("03.1")
    assert "batch norms" in verdict("03.1", right - 512)[1]
    assert "upside down" in verdict("04.2", 1 / expected("04.2"))[1]
    assert "parameters" in verdict("03.4", 2.10)[1]
    assert verdict("01.1", 2 * expected("01.1"))[1].endswith("off by a factor of 2")
    assert verdict("03.3", (1, 512, 1, 1))[1].endswith("dimension 2, 3 are wrong")


def test_the_placeholder_raises_your_turn_shown_as_one_line():
    with pytest.raises(YourTurn) as info:
        check("03.1", ...)
    line = "Exercise 03.1: your turn — replace the ... with your answer"
    assert str(info.value) == line
    assert info.value._render_traceback_() == [line]


def test_an_unknown_exercise_is_an_error():
    with pytest.raises(KeyError, match="03.9"):
        check("03.9", 1)


def _check_cells():
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code" and "d2l_utils.exercises" in cell.source:
                yield path.name, cell


def test_every_check_is_used_once_by_a_tagged_notebook_cell_and_every_used_check_exists():
    used = []
    for name, cell in _check_cells():
        ids = CHECK_CALL.findall(cell.source)
        assert ids, (name, cell.source)
        assert "exercise-check" in cell.metadata.get("tags", []), (name, cell.id)
        assert cell.outputs[0]["text"] == f"Exercise {ids[0]}: right\n", (name, cell.id)
        assert ids[0].startswith(name[:2] + "."), (name, ids)
        used += ids
    assert sorted(used) == sorted(CHECKS)


def _student_script():
    spec = importlib.util.spec_from_file_location("student", ROOT / "scripts" / "student.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_student_edition_has_a_stub_for_every_check_and_no_solution():
    student = _student_script()
    found = []
    for path in NOTEBOOKS:
        nb, ids = student.student_edition(nbformat.read(path, as_version=4))
        found += ids
        nbformat.validate(nb)
        text = "\n".join(c.source for c in nb.cells)
        assert "## Solutions" not in text and "## Exercises" in text
        stubs = [c for c in nb.cells if "exercise-check" in c.metadata.get("tags", [])]
        assert [CHECK_CALL.search(c.source).group(1) for c in stubs] == ids
        for cell in stubs:
            assert "answer = ...  # your answer" in cell.source.splitlines()
        assert all(not c.get("outputs") for c in nb.cells)
    assert sorted(found) == sorted(CHECKS)


def test_a_stub_is_the_check_cell_with_its_value_replaced():
    student = _student_script()
    before = 'from x import check\n\n# what\nanswer = 2 + 2\ncheck("01.1", answer)'
    exercise, out = student.stub(nbformat.v4.new_code_cell(before))
    assert exercise == "01.1"
    assert out.source == before.replace("2 + 2", "...  # your answer")
    with pytest.raises(ValueError):
        student.stub(nbformat.v4.new_code_cell('check("01.1", answer)'))


def test_the_module_states_no_expected_literal():
    # The values are computed; the one formula-based value is built from its named parts.
    source = Path(exercises.__file__).read_text()
    for exercise in CHECKS:
        right = expected(exercise)
        if isinstance(right, int) and right > 100:
            assert str(right) not in source and f"{right:_}" not in source, exercise


def test_the_edition_check_accepts_only_one_line_your_turn_errors_for_the_stubs():
    student = _student_script()
    line = "Exercise 03.1: your turn — replace the ... with your answer"

    def executed(*errors):
        cells = [nbformat.v4.new_code_cell("x") for _ in errors]
        for cell, (ename, evalue, traceback) in zip(cells, errors, strict=True):
            cell.outputs = [
                nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=traceback)
            ]
        return nbformat.v4.new_notebook(cells=cells)

    assert student.problems(executed(("YourTurn", line, [line])), ["03.1"]) == []
    assert student.problems(executed(("YourTurn", line, [line])), ["03.1", "03.2"])
    assert student.problems(executed(("YourTurn", line, ["Traceback", line])), ["03.1"])
    assert student.problems(executed(("YourTurn", line, [line]), ("NameError", "x", [])), ["03.1"])
