"""No committed notebook shows the machine that ran it: no paths, no user name, no tokens.

The scanner reads every output (stream text, rich data other than images and widget ids, error
tracebacks) and all metadata with every pattern, and each cell's source with the token
patterns.  The scanner itself is tested on synthetic notebooks: it must pass clean outputs
that look like the course's, and flag each planted leak.
"""

from __future__ import annotations

import getpass
import json
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from d2l_utils.fashion_mnist import FILES

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# The user's real home folder, read when this module is imported: while the tests run, HOME
# points to a temporary folder (tests/conftest.py).
REAL_HOME = str(Path.home())

# Folders that only exist on one machine.  The look-behind keeps URLs (example.com/root) and
# relative paths (data/tmp/x) out.
_START = r"(?<![\w.~/-])"
MACHINE = {
    "a home folder": _START + r"/home/[\w.-]+",
    "a macOS home folder": _START + r"/Users/[\w. -]+",
    "a Windows user folder": r"\b[A-Za-z]:[\\/]+Users[\\/]+",
    "root's home folder": _START + r"/root\b",
    "a temporary folder": _START + r"(?:/tmp|/var/tmp|/var/folders|/private/var)/[^\s'\"]+",
    "a work folder": _START + r"/work/[^\s'\"]*",
}
SECRETS = {
    "a GitHub token": r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_\w{30,})",
    "a Hugging Face token": r"\bhf_[A-Za-z0-9]{30,}",
    "an API key (sk-)": r"\bsk-[\w-]{20,}",
    "an AWS access key": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "a Slack token": r"\bxox[abprs]-[\w-]{10,}",
    "a Google API key": r"\bAIza[\w-]{35}",
    "a JSON web token": r"\beyJ[\w-]{10,}\.eyJ[\w-]{10,}\.",
    "a private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "a token in a URL": r"[?&](?:token|access_token|api_key|key)=[^\s&'\"]{8,}",
    "a long hex string": r"(?<![0-9A-Fa-f])[0-9a-fA-F]{32,}(?![0-9A-Fa-f])",
}
# Base64-like runs: flagged only when they mix upper case, lower case and digits, as keys do
# (long identifiers and paths do not).
_BASE64 = re.compile(r"(?<![\w+/=-])[A-Za-z0-9+/_-]{40,}={0,2}")
# Hex strings that are facts, not secrets: the published checksums of the dataset.
ALLOWED_HEX = {spec.md5 for spec in FILES.values()}
# Account names too common to search for as words; paths under them are still caught above.
GENERIC_USERS = {
    "root", "user", "admin", "runner", "jovyan", "ubuntu", "vscode", "codespace", "nobody",
    "docker", "jenkins", "debian", "ec2-user", "colab", "circleci", "travis", "vagrant",
}  # fmt: skip
SKIPPED_DATA = ("image/", "application/vnd.jupyter.widget")  # pixels and widget model ids


def _machine_patterns() -> dict[str, str]:
    """Patterns for this machine's own paths and user name, whatever they are."""
    found = {
        "the repository's path": str(ROOT),
        "the Python environment's path": sys.prefix,
        "the home folder": REAL_HOME,
        "the temporary folder": tempfile.gettempdir(),
    }
    found = {what: s for what, s in found.items() if len(s) > 4}  # never "/" or "/tmp"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = ""
    patterns = {what: _START + re.escape(s) + r"(?![\w-])" for what, s in found.items()}
    if len(user) >= 3 and user.lower() not in GENERIC_USERS:
        patterns["the user name"] = rf"\b{re.escape(user)}\b"
    return patterns


def _text(value: object) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _strings(value: object, where: str) -> Iterator[tuple[str, str]]:
    """Every string inside a JSON value, with where it is."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{where}[{i}]")
    elif isinstance(value, str):
        yield where, value


def _outputs(nb: dict) -> Iterator[tuple[str, str]]:
    """(where, text) of every output and metadata string that may show the machine."""
    yield from _strings(nb.get("metadata", {}), "notebook metadata")
    for i, cell in enumerate(nb.get("cells", [])):
        yield from _strings(cell.get("metadata", {}), f"cell {i} metadata")
        for j, out in enumerate(cell.get("outputs", [])):
            where = f"cell {i} output {j}"
            if "text" in out:
                yield where, _text(out["text"])
            for mime, value in out.get("data", {}).items():
                if not mime.startswith(SKIPPED_DATA):
                    text = value if isinstance(value, str | list) else json.dumps(value)
                    yield f"{where} {mime}", _text(text)
            for key in ("ename", "evalue"):
                if key in out:
                    yield f"{where} {key}", str(out[key])
            if "traceback" in out:
                yield f"{where} traceback", "\n".join(out["traceback"])


def _secrets(text: str) -> Iterator[tuple[str, str]]:
    for what, pattern in SECRETS.items():
        for m in re.finditer(pattern, text):
            if what == "a long hex string" and m.group().lower() in ALLOWED_HEX:
                continue
            yield what, m.group()
    for m in _BASE64.finditer(text):
        s = m.group()
        if re.search(r"[a-z]", s) and re.search(r"[A-Z]", s) and re.search(r"[0-9]", s):
            yield "a long base64 string", s


def scan(nb: dict) -> list[str]:
    """Every leak in a notebook, as 'where: what: the text found'."""
    mine = _machine_patterns()
    findings = []
    for where, text in _outputs(nb):
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # colours of tracebacks
        hits = [(what, m.group()) for what, p in MACHINE.items() for m in re.finditer(p, text)]
        hits += [(what, m.group()) for what, p in mine.items() for m in re.finditer(p, text)]
        hits += list(_secrets(text))
        findings += [f"{where}: {what}: {found[:60]!r}" for what, found in hits]
    for i, cell in enumerate(nb.get("cells", [])):
        findings += [
            f"cell {i} source: {what}: {found[:60]!r}"
            for what, found in _secrets(_text(cell.get("source", "")))
        ]
    return findings


def scan_file(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return scan(json.load(f))


def test_committed_notebooks_show_nothing_of_the_machine():
    assert NOTEBOOKS, f"no notebooks found in {ROOT / 'notebooks'}"
    findings = [f"{nb.name} {line}" for nb in NOTEBOOKS for line in scan_file(nb)]
    assert not findings, "notebook outputs show the machine:\n" + "\n".join(findings)


# --- the scanner itself ---------------------------------------------------------------------------

PNG = (  # a 1x1 pixel
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def _notebook(outputs: list[dict], source: str = "print(1)") -> nbformat.NotebookNode:
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nb.cells = [new_markdown_cell("# Title"), new_code_cell(source, outputs=outputs)]
    return nb


def _stream(text: str) -> dict:
    return new_output("stream", name="stdout", text=text)


CLEAN = [
    _stream("profile quick: at most 30,000 training images, at most 4 epochs\n"),
    _stream("training on cpu\nloss 0.312, train acc 0.887, test acc 0.874\n"),
    _stream("2041.3 examples/sec on cpu\n"),
    _stream("resuming from checkpoint checkpoints/resnet18.pt: 2 of 4 epochs done\n"),
    _stream("set D2L_DATA_DIR=/path/to/fashion-mnist, or use ~/.cache/d2l_utils\n"),
    _stream(f"published MD5 of train-images: {FILES['train-images-idx3-ubyte'].md5}\n"),
    _stream("see https://github.com/zalandoresearch/fashion-mnist, https://example.com/root/x\n"),
    _stream("test_corrupt_checkpoint_is_a_clear_error_and_is_left_alone_with_the_file_name\n"),
    new_output(
        "display_data",
        data={"image/png": PNG * 5, "text/plain": "<Figure size 350x250 with 1 Axes>"},
    ),
    new_output("execute_result", execution_count=1, data={"text/plain": "tensor([0.1000])"}),
    new_output("display_data", data={"text/html": "<table><tr><td>11,178,378</td></tr></table>"}),
    new_output(
        "display_data",
        data={"application/vnd.jupyter.widget-view+json": {"model_id": "0123456789abcdef" * 2}},
    ),
]


def test_scanner_passes_clean_course_outputs(tmp_path):
    path = tmp_path / "clean.ipynb"
    nbformat.write(
        _notebook(CLEAN, source="import d2l_utils as d2l\nd2l.train_ch6(net, ...)"), path
    )
    assert scan_file(path) == []


LEAKS = {
    "a home folder": "saved to /home/alice/course/run.pt",
    "a macOS home folder": "FileNotFoundError: /Users/Alice Smith/data",
    "a Windows user folder": "C:\\Users\\alice\\AppData\\Local\\Temp\\x",
    "root's home folder": "looked in /root/.cache/d2l_utils/fashion-mnist",
    "a temporary folder": "checkpoint /tmp/tmpab12cd/run.pt",
    "a work folder": "/work/main/.venv/lib/python3.11/site-packages/torch/x.py:12: UserWarning",
    "a GitHub token": "token ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "a Hugging Face token": "HF_TOKEN=hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ012345",
    "an API key (sk-)": "OPENAI_API_KEY=sk-" + "proj-abcdefghijklmnopqrstuv",
    "an AWS access key": "AKIA" + "ABCDEFGHIJKLMNOP",
    "a JSON web token": "eyJ" + "hbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig",
    "a private key": "-----BEGIN " + "RSA PRIVATE KEY-----",
    "a token in a URL": "http://127.0.0.1:8888/lab?token=" + "c8de56fa4deed24899803e93c2275" * 2,
    "a long hex string": "secret " + "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd",
    "a long base64 string": "key " + "dGhpcyBpcyBhIHNlY3JldCBrZXkgdGhhdCBzaG91bGQgbm90IGxlYWs9PQ1",
}  # fmt: skip


@pytest.mark.parametrize("kind", list(LEAKS))
@pytest.mark.parametrize("place", ["stream", "result", "error", "metadata"])
def test_scanner_flags_each_planted_leak(tmp_path, kind, place):
    leak = LEAKS[kind]
    outputs = list(CLEAN)
    nb = _notebook(outputs)
    if place == "stream":
        outputs.append(_stream(f"epoch 1/4 ... {leak}\n"))
    elif place == "result":
        outputs.append(new_output("execute_result", execution_count=2, data={"text/plain": leak}))
    elif place == "error":
        tb = [f"\x1b[0;31mValueError\x1b[0m: bad data in {leak}"]
        outputs.append(new_output("error", ename="ValueError", evalue="x", traceback=tb))
    else:
        nb.metadata["papermill"] = {"input_path": leak}
    nb.cells[1].outputs = outputs
    path = tmp_path / "leaky.ipynb"
    nbformat.write(nb, path)
    findings = scan_file(path)
    assert any(kind in line for line in findings), findings
    where = "notebook metadata" if place == "metadata" else f"cell 1 output {len(CLEAN)}"
    assert all(line.startswith(where) for line in findings), findings


def test_scanner_flags_a_token_in_a_cell_source_and_this_machine_paths(tmp_path):
    nb = _notebook(CLEAN, source='login("hf_' + "aBcDeFgHiJkLmNoPqRsTuVwXyZ012345" + '")')
    nb.cells[1].outputs = [*CLEAN, _stream(f"wrote {ROOT / 'build' / 'results.md'}\n")]
    path = tmp_path / "leaky.ipynb"
    nbformat.write(nb, path)
    findings = scan_file(path)
    assert any(line.startswith("cell 1 source: a Hugging Face token") for line in findings)
    assert any("the repository's path" in line for line in findings)
