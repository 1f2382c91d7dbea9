"""``robench`` command line.

Exit codes: 0 success; 1 some tasks failed (their rows say why, the rest are complete);
2 unusable input, with a one-paragraph message and no traceback; 130 interrupted (what
finished is saved; rerun the same command to resume).
"""

from __future__ import annotations

import signal
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from robench.cli_text import headline_note, plain
from robench.errors import RobenchError, UsageError, unknown_kind

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Robustness benchmarks for image classifiers.")
leaderboard_app = typer.Typer(add_completion=False, no_args_is_help=True,
                              help="Work with leaderboards.")
app.add_typer(leaderboard_app, name="leaderboard")
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)


def _fail(exc: RobenchError, *, debug: bool | None = None) -> None:
    """One paragraph on stderr and the error's exit code.  ``debug`` is ``grid --debug``:
    True prints the traceback of the exception behind the error (a plugin's or the user's
    code that raised) first; False adds a hint that it exists; None (commands without the
    flag) neither."""
    message = f"robench: error: {exc}"
    if exc.__cause__ is not None and debug:
        _print_traceback(exc)
    elif exc.__cause__ is not None and debug is False:
        message += " (`--debug` shows the full traceback.)"
    err.print(message, markup=False)
    raise typer.Exit(getattr(exc, "exit_code", 2))


def _print_traceback(exc: BaseException) -> None:
    import traceback

    err.print("".join(traceback.format_exception(exc)).rstrip(), markup=False)


def _unexpected(exc: Exception, *, debug: bool) -> None:
    """An exception robench did not turn into an error of its own: a bug in robench or in
    plugin code run outside the checks (an executor, a reporter).  One paragraph and exit
    code 1; the traceback with ``--debug``."""
    from robench.errors import describe_exception

    if debug:
        _print_traceback(exc)
    then = ("Please report it with the traceback above." if debug else
            "Rerun with --debug for the full traceback, and please report it.")
    err.print(f"robench: error: unexpected {describe_exception(exc)}. This is a bug in "
              f"robench or in a plugin, not in your input. {then}",
              markup=False)
    raise typer.Exit(1)


def _workers(value: str) -> int:
    """``--workers``, checked like ``[executor.local] workers`` (robench.params)."""
    from robench.params import Check, check_value

    return check_value(Annotated[int, Check(
        ge=1, means="worker processes; 1 runs every task in this process")], value,
        subject="--workers", coerce=True)


def _names(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()] or [""]


@app.command()
def grid(
    config: Annotated[Path | None, typer.Argument(help="TOML config file")] = None,
    dataset: Annotated[str | None, typer.Option(help="source dataset")] = None,
    target: Annotated[str | None, typer.Option(help="target domain dataset, or 'none'")] = None,
    backbones: Annotated[str | None, typer.Option(help="comma-separated backbones")] = None,
    heads: Annotated[str | None, typer.Option(help="comma-separated heads")] = None,
    adaptors: Annotated[str | None, typer.Option(help="comma-separated adaptors")] = None,
    models: Annotated[str | None, typer.Option(
        help="comma-separated complete classifiers, evaluated as they are "
             "(timm:NAME, robustbench:DATASET/THREAT/NAME, file:PATH, py:module:factory)")] = None,
    defenses: Annotated[str | None, typer.Option(
        help="comma-separated defenses: none, pgd-at, trades, fgsm-rs (training), "
             "jpeg, bit-depth, random-resize-pad (inference)")] = None,
    workers: Annotated[str | None, typer.Option(
        help="local executor: worker processes running tasks in parallel (default: the "
             "usable CPU cores; one thread each)")] = None,
    attacks: Annotated[str | None, typer.Option(help="comma-separated attacks")] = None,
    eps: Annotated[list[str] | None, typer.Option(
        help="THREAT:E1,E2 (repeatable), e.g. linf:4/255,8/255")] = None,
    limit: Annotated[str | None, typer.Option(help="evaluate a fixed subset of N samples")] = None,
    epochs: Annotated[str | None, typer.Option(help="training epochs")] = None,
    seed: Annotated[str | None, typer.Option(help="seed for everything")] = None,
    seeds: Annotated[str | None, typer.Option(
        help="comma-separated seeds, e.g. 0,1,2: every model trained and evaluated per seed; "
             "the leaderboard gives mean, std and worst seed")] = None,
    shard_size: Annotated[str | None, typer.Option(
        "--shard-size", metavar="<N|auto>",
        help="samples per shard of an attack task: shards run in parallel on every worker, "
             "GPU and Ray node, and each is stored when it ends (auto: eight per task, at "
             "least 32 samples each)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, bf16 or fp16 (CUDA)")] = None,
    compile_backend: Annotated[str | None, typer.Option(
        "--compile", metavar="<backend>",
        help="torch.compile the evaluated model with this backend (inductor, aot_eager, ...); "
             "off by default. inductor needs a C++ compiler; compile time is paid once per model "
             "and process, so it pays only on long grids or large models")] = None,
    executor: Annotated[str | None, typer.Option(help="executor name: local or ray")] = None,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="Ray cluster address (implies --executor ray), e.g. auto")] = None,
    name: Annotated[str | None, typer.Option(help="run name (folder and title)")] = None,
    out_dir: Annotated[str | None, typer.Option("--out", help="output folder")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="ignore stored results")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
    debug: Annotated[bool, typer.Option(
        "--debug", help="on an error raised by a plugin's or your own code, print the full "
                        "traceback")] = False,
) -> None:
    """Train, attack and report a model x attack x eps grid."""
    from robench.config import build_config, load_toml, parse_eps_flag
    from robench.grid import Grid

    try:
        data = load_toml(config) if config is not None else {}
        if ray_address is not None:
            if executor not in (None, "ray"):
                raise UsageError(f"--ray-address runs the grid on Ray; it cannot go with "
                                 f"--executor {executor}.")
            executor = "ray"
            tables = data.get("executor") if isinstance(data.get("executor"), dict) else {}
            data = {**data, "executor": {**tables, "ray": {**tables.get("ray", {}),
                                                           "address": ray_address}}}
        eps_table = None
        if eps:
            eps_table = dict(data.get("eps", {})) if isinstance(data.get("eps"), dict) else {}
            for item in eps:
                threat, values = parse_eps_flag(item)
                eps_table[threat] = values
        if workers is not None:
            if executor not in (None, "local"):
                raise UsageError(f"--workers sets the local executor's worker processes; it "
                                 f"cannot go with --executor {executor}.")
            executor = "local"
            tables = data.get("executor") if isinstance(data.get("executor"), dict) else {}
            data = {**data, "executor": {**tables, "local": {**tables.get("local", {}),
                                                             "workers": _workers(workers)}}}
        cfg = build_config(
            data, dataset=dataset, target=target, backbones=_names(backbones),
            heads=_names(heads), adaptors=_names(adaptors), models=_names(models),
            defenses=_names(defenses), attacks=_names(attacks),
            eps=eps_table, limit=limit, epochs=epochs, seed=seed, seeds=seeds,
            shard_size=shard_size, device=device,
            precision=precision, compile=compile_backend,
            executor=executor, name=name, out=out_dir, fresh=True if fresh else None,
        )
        runner = Grid(cfg, progress=not quiet, console=err)
        results = runner.run()
    except RobenchError as exc:
        _fail(exc, debug=debug)
    except KeyboardInterrupt:
        # a second Ctrl-C (often pressed out of impatience) must not cut the clean exit short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        err.print("robench: interrupted; finished tasks are saved. Rerun the same command "
                  "to resume.")
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - one paragraph, traceback with --debug
        _unexpected(exc, debug=debug)
    _summary(results, runner)
    if runner.failures or (results["status"] == "failed").any():
        err.print(f"robench: {len(runner.failures)} task(s) failed; their rows have "
                  f"status 'failed' and say why:", markup=False)
        for failure in runner.failures:
            err.print(f"  - {failure}", markup=False)
        raise typer.Exit(1)


def _summary(results, runner) -> None:
    import pandas as pd

    run_dir = runner.run_dir
    lb_path = run_dir / "leaderboard.csv"
    if lb_path.exists():
        board = pd.read_csv(lb_path)
        table = Table(title=f"robench: {runner.config.name}", title_justify="left")
        cols = [c for c in board.columns if c in ("model", "domain", "clean_acc")]
        cols += [c for c in board.columns if c.startswith("headline")][:1]
        for col in cols:
            table.add_column(col)
        for _, row in board.iterrows():
            table.add_row(*[f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c])
                            for c in cols])
        out.print(table)
        note = headline_note(board)
        if note:
            out.print(note, markup=False)
    out.print(f"results: {run_dir / 'results.csv'}  ({len(results)} rows)")
    for report in ("leaderboard.csv", "leaderboard.md", "leaderboard.html",
                   "leaderboard.json", "run.json"):
        if (run_dir / report).exists():
            out.print(f"report:  {run_dir / report}")


@app.command()
def plugins(
    kind: Annotated[str | None, typer.Option(help="dataset, backbone, head, adaptor, model, "
                                                  "defense, attack, executor or reporter")] = None,
) -> None:
    """List installed plugins: kind, name, providing plugin and distribution, description."""
    from robench.host import KINDS, PluginHost, plugin_table

    try:
        if kind is not None and kind not in KINDS:
            plural = {f"{k}s": k for k in KINDS}
            if kind not in plural:
                raise unknown_kind(kind, KINDS)
            kind = plural[kind]
        host = PluginHost.create()
        rows = plugin_table(host, [kind] if kind else KINDS)
    except RobenchError as exc:
        _fail(exc)
    table = Table(show_lines=False)
    for col in ("kind", "name", "plugin", "distribution", "description"):
        table.add_column(col, overflow="fold")
    for row in rows:  # names and descriptions are data: "[linf, bounded]" is no markup
        table.add_row(*(plain(row[c]) for c in ("kind", "name", "plugin", "distribution",
                                                "description")))
    Console(width=max(160, out.width), highlight=False).print(table)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run folder")]) -> None:
    """Rebuild every report of a run from its stored results, without rerunning anything."""
    from robench.merge import report_run

    try:
        if not run_dir.is_dir():
            raise UsageError(f"Run folder {str(run_dir)!r} does not exist.")
        written = report_run(run_dir)
    except RobenchError as exc:
        _fail(exc)
    for path in written:
        out.print(f"report: {path}")


@leaderboard_app.command("merge")
def leaderboard_merge(
    files: Annotated[list[Path], typer.Argument(help="results.csv files to merge")],
    output: Annotated[Path, typer.Option("-o", "--output", help="merged results csv")],
    allow_mixed_precision: Annotated[bool, typer.Option(
        "--allow-mixed-precision",
        help="rank rows computed in different precisions (fp32, bf16, fp16) together")] = False,
) -> None:
    """Merge runs or submissions into one validated leaderboard."""
    try:
        from robench.merge import merge_leaderboards

        merged = merge_leaderboards(list(files), output,
                                    allow_mixed_precision=allow_mixed_precision)
    except RobenchError as exc:
        _fail(exc)
    out.print(f"merged {len(files)} file(s), {len(merged)} rows -> {output}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Warnings as one line, like errors, instead of Python's file:line and source."""
    err.print(f"robench: warning: {message}", markup=False)


def main() -> None:
    warnings.showwarning = _show_warning
    try:
        app(standalone_mode=True)
    except SystemExit as exc:
        sys.exit(exc.code)


if __name__ == "__main__":
    main()
