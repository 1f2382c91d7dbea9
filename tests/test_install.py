"""The README's install of RobustBench's zoo leaves timm as it is (issue 23).

robustbench pins timm==1.0.9, older than the timm:test_resnet of the default grid, so a plain
``pip install robustbench`` next to robench downgraded timm and broke the grid.  The README
says to install the ``robustbench`` extra (robustbench's real needs) and then robustbench
without its pins.  This test runs that exact README line, with the current pip, in a
throwaway venv, and checks that timm is unchanged, that robustbench imports, and that a tiny
grid on timm:test_resnet runs.

torch (several GB) is not installed again: the throwaway venv sees this venv's torch and
torchvision, and what they need, through a .pth file pointing at symlinks to them; everything
else comes from the package index (pip's cache after ``make test``).  About a minute.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: shared with the throwaway venv; pip and setuptools stay its own
SHARED = ("torch", "torchvision")
NOT_SHARED = {"pip", "setuptools", "wheel"}


def readme_robustbench_command() -> list[list[str]]:
    """The README's robustbench install line, as the commands it chains with ``&&``."""
    lines = [line for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
             if "[robustbench]" in line and "--no-deps robustbench==" in line]
    assert len(lines) == 1, f"README: expected one robustbench install line, found {lines}"
    command = lines[0].split("#", 1)[0]
    return [shlex.split(part) for part in command.split("&&")]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(names: tuple[str, ...]) -> dict[str, md.Distribution]:
    """The installed distributions ``names`` need, themselves included (markers evaluated
    for this interpreter, no extras)."""
    from packaging.requirements import Requirement

    found: dict[str, md.Distribution] = {}
    todo = list(names)
    while todo:
        name = _canonical(todo.pop())
        if name in found or name in NOT_SHARED:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        found[name] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def share(dists: dict[str, md.Distribution], folder: Path) -> None:
    """Symlink every top-level file and folder of ``dists`` into ``folder``."""
    folder.mkdir()
    for dist in dists.values():
        site = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or []}:
            if top.startswith("..") or (folder / top).exists():
                continue
            if (site / top).exists():
                (folder / top).symlink_to(site / top)


def copy_project(target: Path) -> None:
    """The working tree's files (tracked and untracked, not ignored), without .venv."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, (
        f"{shlex.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
        f"{result.stderr[-3000:]}")
    return result


@pytest.mark.slow
def test_readme_robustbench_install_keeps_timm_and_the_default_grid(tmp_path):
    if not shutil.which("git") or not (ROOT / ".git").exists():
        pytest.skip("needs the project's git checkout")
    commands = readme_robustbench_command()
    source = tmp_path / "robench"
    copy_project(source)
    shared = tmp_path / "shared"
    share(closure(SHARED), shared)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
                    ).stdout.strip())
    (site / "robench-test-shared.pth").write_text(f"{shared}\n")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    # the current pip, as make installs with: no resolver pin
    run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], env=env)

    def timm_version() -> str:
        return run([str(python), "-c", "import timm; print(timm.__version__)"],
                   env=env).stdout.strip()

    versions = []
    for args in commands:
        assert args[0] == "pip", f"README's robustbench line runs {args[0]!r}, not pip"
        args = [str(python), "-m", "pip", "-q", *args[1:]]
        args = [a.replace(".[", f"{source}[", 1) if a.startswith(".[") else a for a in args]
        run(args, cwd=tmp_path, env=env)
        versions.append(timm_version())

    assert versions[-1] == versions[0], f"installing robustbench changed timm: {versions}"
    major_minor_patch = tuple(int(p) for p in re.findall(r"\d+", versions[-1])[:3])
    assert major_minor_patch >= (1, 0, 10), f"timm {versions[-1]} has no test_* models"
    shared_torch = run([str(python), "-c", "import torch; print(torch.__file__)"],
                       env=env).stdout.strip()
    assert shared_torch.startswith(str(shared)), "the throwaway venv installed its own torch"
    run([str(python), "-c", "from robench_models.robustbench_models import import_robustbench\n"
         "import_robustbench().utils.load_model"], env=env, cwd=tmp_path)

    robench = str(venv / "bin" / "robench")
    listing = run([robench, "plugins", "--kind", "backbone"], env=env, cwd=tmp_path).stdout
    assert "timm:*" in listing
    run([robench, "grid", "--dataset", "digits", "--target", "none",
         "--backbones", "timm:test_resnet", "--heads", "linear", "--adaptors", "none",
         "--attacks", "noise", "--eps", "linf:8/255", "--limit", "20", "--epochs", "1",
         "--workers", "1", "--out", str(tmp_path / "runs"), "--name", "tiny", "-q"],
        env=env, cwd=tmp_path)
    rows = json.loads((tmp_path / "runs" / "tiny" / "results.json").read_text())["results"]
    assert rows and all(row["status"] == "ok" for row in rows), rows
