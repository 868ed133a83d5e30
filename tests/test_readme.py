"""The README runs as written (issue 15): its bash blocks, in order, in an empty folder, then
its Python block, then `make demo` and the `prom3e serve` line on the demo's output.

The README is what a user runs; the test only makes it small. REWRITES is the whole list of
changes (each must still match, so a stale rule fails): fewer rows, species and epochs, a
tiny model, fewer timed repeats, and a free port for the server. A line ending in
``# needs your data`` is not run (it wants the user's file); its flags must still parse.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEEDS_DATA = "# needs your data"

# (a regular expression on one command line, its replacement) — every rule must match a line
REWRITES: list[tuple[str, str]] = [
    (r"^(prom3e synth --out synth\.parquet)$", r"\1 --n 1200 --species 12 --dim 16"),
    (r"^(prom3e train --data train\.parquet --out runs/synth)$", r"\1 --epochs 2 --model tiny --threads 1"),
    (r"--resume --epochs 60$", "--resume --epochs 3 --threads 1"),
    (r"^(prom3e evaluate .*)$", r"\1 --max-subset-size 2 --threads 1"),
    (r"--epochs 20 --seeds 0,1,2 --lrs 1e-3,3e-3", "--epochs 1 --seeds 0 --methods prom3e,zero-fill,late-fusion"
                                                  " --threads 1"),
    (r"--config paper --batch 1024 --threads 2", "--config tiny --batch 64 --threads 1 --repeats 1 --no-reference"
                                                 " --precision fp32"),
    (r"^(\S*prom3e demo .*)$", r"\1 --n 600 --epochs 1 --model tiny"),
]
SMALL_PYTHON = [("IVF256,Flat", "IVF8,Flat")]  # the synthetic gallery here has ~500 text vectors


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def command_lines(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comment lines and blanks dropped."""
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append(re.sub(r"\s+", " ", line))
    return lines


def split_comment(line: str) -> tuple[str, str]:
    """``cmd  # comment`` → (cmd, comment): the first ``#`` after a space, outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip(), line[i:]
    return line.strip(), ""


def rewrite(cmd: str, used: set[int]) -> str:
    for k, (pattern, repl) in enumerate(REWRITES):
        new = re.sub(pattern, repl, cmd)
        if new != cmd:
            used.add(k)
            cmd = new
    return cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    print(f"{time.perf_counter() - t0:6.1f}s  {shlex.join(argv[1:4])}")
    return r


def _check_output(cmd: str, r: subprocess.CompletedProcess) -> None:
    text = r.stdout + r.stderr
    assert r.returncode == 0, f"{cmd}\nexit {r.returncode}\n{text[-3000:]}"
    assert "\r" not in text, f"{cmd}: progress-bar redraws written to a pipe"
    assert "//" not in re.sub(r"\w+://", "", text), f"{cmd}: a path printed with '//'\n{text[-2000:]}"
    assert "WARNING clustering" not in text, f"{cmd}: faiss's raw warning reached the user"
    assert "Traceback" not in text, f"{cmd}\n{text[-3000:]}"


@pytest.mark.slow
def test_readme_runs_as_written(tmp_path):
    from prom3e.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    work = tmp_path / "empty"
    work.mkdir()
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    used: set[int] = set()
    ran, skipped = [], []

    # 1. every `prom3e …` line of every bash block, in order (make lines: the Makefile's recipe)
    makefile = (ROOT / "Makefile").read_text()
    for block in code_blocks(readme, "bash"):
        for line in command_lines(block):
            cmd, comment = split_comment(line)
            words = shlex.split(cmd)
            if words[:2] == ["make", "demo"]:
                recipe = re.search(r"^demo:.*\n\t(.+)$", makefile, flags=re.M).group(1)
                demo = rewrite(recipe, used).split()
                demo[0] = str(bindir / "prom3e")  # .venv/bin/prom3e in a checkout
                r = _run(demo, work, env)
                _check_output(recipe, r)
                ran.append(recipe)
                continue
            if words[:1] == ["make"]:
                continue  # `make test` runs this suite
            assert Path(words[0]).name == "prom3e", f"README bash line is not a prom3e command: {line}"
            if NEEDS_DATA in comment:
                build_parser().parse_args(words[1:])  # its flags exist and parse
                skipped.append(cmd)
                continue
            if words[1] == "serve":
                continue  # below, once the rest has run
            small = rewrite(cmd, used)
            r = _run(["prom3e", *shlex.split(small)[1:]], work, env)
            _check_output(small, r)
            ran.append(small)
    assert len(skipped) <= 5, f"too many README lines need the user's data: {skipped}"
    assert len(ran) >= 12, ran

    # the quickstart evaluates held-out rows of the same species: well above chance
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    assert metrics["settings"]["n_classes"] == 12
    z = metrics["zeroshot"]
    assert z["n_prototypes"] == 12 and z["summary"]["top1_inversion_mean"] > 2 / 12
    chance = [p["chance_r1"] for p in metrics["retrieval"]["pairs"]]
    assert metrics["retrieval"]["summary"]["r1_cross_mean"] > 2 * sum(chance) / len(chance)
    assert (work / "exports" / "synth" / "README.md").is_file()

    # 2. the Python block, verbatim but for a gallery-sized IVF
    py = code_blocks(readme, "python")
    assert len(py) == 1
    code = py[0]
    for old, new in SMALL_PYTHON:
        assert old in code
        code = code.replace(old, new)
    r = _run([sys.executable, "-c", code + "\nprint('python ok', ids.shape)\n"], work, env)
    assert r.returncode == 0 and "python ok" in r.stdout, r.stdout + r.stderr[-3000:]

    # 3. the serve line on the demo's output: the page and the API answer
    serve = next(split_comment(line)[0] for b in code_blocks(readme, "bash") for line in command_lines(b)
                 if shlex.split(line)[1:2] == ["serve"])
    port = _free_port()
    argv = [str(bindir / "prom3e"), *shlex.split(serve)[1:], "--port", str(port)]
    proc = subprocess.Popen(argv, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, page = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        log = proc.stdout.read() if proc.poll() is not None else ""
        assert page is not None, f"serve did not answer: {serve}\n{log}"
        assert "<html" in page.lower()
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read().decode()
        assert "ok" in health.lower()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    stale = [REWRITES[k] for k in range(len(REWRITES)) if k not in used]
    assert not stale, f"rewrite rules that no longer match a README line: {stale}"
