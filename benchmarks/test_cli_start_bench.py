"""How long the CLI takes to answer when it has no work to do: listing, help, a typo.

Target: ``robench --help``, ``robench plugins`` (and ``--kind attack``) and any input error
answer in under 1.5 s on the 2-core development machine.  They need no torch, torchvision,
timm, foolbox, ray, scipy, scikit-image, scikit-learn, matplotlib or pandas: a plugin's
registration module imports only ``robench`` and light metadata, its factories are
:func:`robench.lazy` references, so the heavy modules load when a job needs them.  Before the
plugins were made lazy, ``robench plugins --kind attack`` took 9-10 s here, almost all of it
importing torch and torchvision through the attack modules.

Each benchmark times the installed ``robench`` console script in a fresh process (start-up
included: that is what a user waits for), checks its exit code and output, and then runs the
same command once more in a probe process that records which of the heavy modules it imported
(``extra_info["heavy_imports"]``).  Listing and help must import none of them; for the
mistyped attack the list is recorded, not asserted, since validating the rest of the default
grid (``timm:test_resnet``) is the core's business.  Times are not asserted (a shared machine
moves them); compare them with the target::

    .venv/bin/python -m pytest benchmarks/test_cli_start_bench.py -q -p no:cacheprovider \\
        --benchmark-only --benchmark-columns=min,median,max
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

#: seconds the commands below should take at most on the development machine (not asserted)
TARGET_S = 1.5
#: modules that only a job may import
HEAVY = ("torch", "torchvision", "timm", "foolbox", "ray", "scipy", "skimage", "sklearn",
         "matplotlib", "pandas")
ROUNDS = int(os.environ.get("ROBENCH_BENCH_ROUNDS", "3"))

#: runs the CLI like the console script, then writes the heavy modules it imported to a file
PROBE = """
import atexit, json, os, sys

def _dump():
    heavy = sorted(m for m in {heavy!r} if m in sys.modules)
    with open(os.environ["ROBENCH_BENCH_PROBE"], "w") as f:
        json.dump(heavy, f)

atexit.register(_dump)
sys.argv = ["robench", *sys.argv[1:]]
from robench.cli import main
main()
"""


@dataclass
class Command:
    args: list[str]
    rc: int
    #: substrings the output (stdout and stderr together) must contain, and must not
    shows: tuple[str, ...]
    hides: tuple[str, ...] = ()
    #: whether the command must import none of HEAVY
    light: bool = True


COMMANDS: dict[str, Command] = {
    "plugins": Command(
        ["plugins"], 0,
        shows=("digits-cnn", "timm:*", "linear-probe", "dann", "pgd-l2", "autoattack",
               "foolbox:*", "gaussian-blur", "pgd-at", "local", "html")),
    "plugins-kind-attack": Command(
        ["plugins", "--kind", "attack"], 0,
        shows=("fgsm", "apgd-t", "fab-t", "square", "jpeg", "autoattack-fast", "foolbox:*",
               "[corruption, bounded]", "[linf, bounded, black-box]"),
        hides=("digits-m", "linear-probe", "pgd-at")),
    "help": Command(["--help"], 0, shows=("Usage", "grid", "plugins")),
    "mistyped-attack": Command(
        ["grid", "--attacks", "pgdd", "--out", "{out}"], 2,
        shows=("Unknown attack 'pgdd'", "Did you mean 'pgd'", "robench plugins --kind attack"),
        light=False),
}


def _robench() -> list[str]:
    """The console script next to this interpreter, as a user runs it."""
    script = Path(sys.executable).with_name("robench")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from robench.cli import main; main()"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    env.pop("ROBENCH_DISABLE_PLUGINS", None)  # list every built-in plugin
    return env


@pytest.mark.parametrize("case", list(COMMANDS))
def test_cli_answers_without_work(benchmark, case: str, tmp_path: Path) -> None:
    command = COMMANDS[case]
    out_dir = tmp_path / "run"
    args = [a.format(out=out_dir) for a in command.args]
    env = _env()

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([*_robench(), *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)

    benchmark.group = "cli start (no work)"
    done = benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    output = done.stdout + done.stderr
    assert done.returncode == command.rc, output
    for text in command.shows:
        assert text in output, f"{text!r} missing from `robench {' '.join(args)}`:\n{output}"
    for text in command.hides:
        assert text not in output, f"{text!r} in `robench {' '.join(args)}`:\n{output}"
    if command.rc:
        assert not out_dir.exists(), "a refused grid must not start (no run folder)"

    probe_file = tmp_path / "heavy.json"
    probe = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True,
        text=True, env={**env, "ROBENCH_BENCH_PROBE": str(probe_file)}, cwd=tmp_path,
        timeout=300)
    assert probe.returncode == command.rc, probe.stdout + probe.stderr
    heavy = json.loads(probe_file.read_text())
    benchmark.extra_info.update(heavy_imports=heavy, target_s=TARGET_S, command=args[:3])
    if command.light:
        assert heavy == [], f"`robench {' '.join(args)}` imported {heavy}"
