"""Command line: harness run | validate | compare | history | report | schema | list.

Also ``python -m harness``.

Exit codes (contract): 0 ok, 1 a regression found by compare, 2 bad input, 3 some cells failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from harness import __version__
from harness.backends import BACKENDS
from harness.core.errors import UserError
from harness.tasks import TASKS

EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT, EXIT_CELLS_FAILED = 0, 1, 2, 3


def _load(path: Path, only: list[str], overrides: list[str]):
    from harness.suite.cells import expand, select_cells
    from harness.suite.parse import parse_suite

    suite, _ = parse_suite(path, overrides)
    cells = select_cells(expand(suite), only)
    if not cells:
        raise UserError(f"{path}: --only {' '.join(only)} matches no cell")
    return suite, cells


def cmd_validate(args, console: Console) -> int:
    from harness.run.plan import check_inputs
    from harness.sources.corpora import corpora_dir

    suite, cells = _load(args.suite, [], args.set)
    _executor(args, suite)
    check_inputs(suite, cells, args.suite, corpora_dir(args.corpora))
    console.print(f"{args.suite}: ok, {len(cells)} cells")
    return EXIT_OK


def _executor(args, suite):
    """The suite's executor with --executor/--address on top, its package checked (no cluster is started)."""
    from harness.suite.executor import check_available, effective

    settings = effective(suite.executor, args.executor, args.address)
    from_cli = args.executor is not None or args.address is not None
    check_available(settings, "--executor" if from_cli else f"{args.suite}: executor.type:")
    return settings


def cmd_run(args, console: Console) -> int:
    from harness.report.console import print_results
    from harness.run.plan import RunOptions
    from harness.run.runner import Runner

    suite, cells = _load(args.suite, args.only, args.set)
    if args.dry_run:
        for cell in cells:
            settings = {k: v for k, v in cell.params["task"].items() if v is not None and k != "type"}
            console.print(f"{cell.cell_id}  {cell.label}  {json.dumps(settings)}", highlight=False,
                          soft_wrap=True)
        console.print(f"{len(cells)} cells would run")
        return EXIT_OK
    options = RunOptions(suite_path=args.suite, out=args.out, only=args.only, overrides=args.set,
                         resume=args.resume, corpora=args.corpora, timeout_s=args.timeout,
                         executor=_executor(args, suite))
    summary = Runner(suite, cells, options, console).run()
    print_results(summary.run_dir, console)
    console.print(f"results: {summary.run_dir} ({summary.ran} cells ran, {summary.reused} reused, "
                  f"{summary.failed} failed, {summary.skipped} skipped)", highlight=False)
    return EXIT_CELLS_FAILED if summary.failed else EXIT_OK


def _gates(args, run_info: dict):
    from harness.analysis.gates import Gates, parse_overrides

    return Gates(suite=run_info.get("gates", {}), threshold=parse_overrides(args.threshold, "--threshold", 1.0),
                 tolerance=parse_overrides(args.tolerance, "--tolerance", 0.0), alpha=args.alpha)


def _emit(text: str, out: Path | None) -> None:
    from harness.core.files import atomic_write_text

    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        atomic_write_text(out, text)


def cmd_compare(args, console: Console) -> int:
    from harness.analysis import compare, export
    from harness.results.store import read_run

    base, new = read_run(args.base), read_run(args.new)
    result = compare.compare(base, new, _gates(args, new.info))
    if args.format == "markdown":
        _emit(compare.to_markdown(result, args.all), args.out)
    elif args.format == "json":
        _emit(compare.to_json(result), args.out)
    else:  # the new run's figures, for a tool that keeps its own history
        _emit(json.dumps(export.EXPORTS[args.format](new), indent=2), args.out)
    if args.out is not None:
        print(f"{args.out}: {result.regressions} regressions", file=sys.stderr)
    return EXIT_REGRESSION if result.regressions else EXIT_OK


def cmd_history(args, console: Console) -> int:
    from harness.analysis import history

    runs = history.load_runs(args.dirs)
    trends = history.history(runs, _gates(args, runs[-1].info))
    text = history.to_json(runs, trends) if args.format == "json" else history.to_markdown(runs, trends, args.last)
    _emit(text, args.out)
    return EXIT_OK


def cmd_report(args, console: Console) -> int:
    from harness.analysis import export
    from harness.report.render import write_report
    from harness.results.store import read_run

    if args.format != "html":
        _emit(json.dumps(export.EXPORTS[args.format](read_run(args.run_dir)), indent=2), args.out)
        return EXIT_OK
    md, page = write_report(args.run_dir, args.out)
    console.print(f"report: {md}, {page}", highlight=False)
    return EXIT_OK


def _gate_options(parser: argparse.ArgumentParser) -> None:
    from harness.analysis.gates import ALPHA

    parser.add_argument("--threshold", action="append", default=[], metavar="[METRIC=]RATIO",
                        help="timings: the ratio a change must pass (and be significant), for one metric or "
                        "all; repeatable; overrides the suite's gates")
    parser.add_argument("--tolerance", action="append", default=[], metavar="[METRIC=]REL",
                        help="deterministic metrics: the relative change allowed; repeatable")
    parser.add_argument("--alpha", type=float, default=ALPHA, help=f"significance level (default {ALPHA})")
    parser.add_argument("--out", type=Path, help="write to this file instead of stdout")


def cmd_schema(args, console: Console) -> int:
    from harness.suite.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_list(args, console: Console) -> int:
    from harness.sources.corpora import BUILTINS

    console.print("backends: " + ", ".join(f"{name} ({', '.join(sorted(cls.capabilities))}; loads "
                                          f"{', '.join(sorted(cls.model_kinds))})"
                                          for name, cls in BACKENDS.items()), highlight=False)
    console.print("tasks:    " + ", ".join(f"{name} (needs {', '.join(sorted(cls.requires))})"
                                          for name, cls in TASKS.items()), highlight=False)
    console.print("datasets: " + ", ".join(f"builtin:{name}#train|test" for name in BUILTINS)
                  + ", file:PATH, corpora:NAME, hf:DATASET/CONFIG[#split]", highlight=False)
    suites = sorted(Path("suites").glob("*.yaml")) if Path("suites").is_dir() else []
    if suites:
        console.print("suites:   " + ", ".join(str(s) for s in suites), highlight=False)
    return EXIT_OK


def _set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override one suite setting (VALUE is YAML; null unsets), e.g. "
                        "tasks.kld.max_tokens=null; repeatable")


def _executor_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=["local", "ray"],
                        help="where cells run (default: the suite's executor, else local): local = one at a time "
                        "on this machine, ray = Ray tasks on a cluster")
    parser.add_argument("--address", metavar="ADDRESS",
                        help="--executor ray: the cluster (auto, HOST:PORT); default: a private "
                        "cluster on this machine")


def build_parser() -> argparse.ArgumentParser:
    """Every command and option in one place (a flat list reads like the help text it produces)."""
    parser = argparse.ArgumentParser(prog="harness", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite's cells and write the result tables")
    run.add_argument("suite", type=Path)
    run.add_argument("--out", type=Path, help="run directory (default: results/SUITE/RUN_ID)")
    run.add_argument("--only", action="append", default=[], metavar="GLOB",
                     help="run only cells whose model/backend/task (or id prefix) matches; repeatable")
    run.add_argument("--resume", action="store_true",
                     help="keep finished cells of the run directory (default: the suite's latest run)")
    run.add_argument("--dry-run", action="store_true", help="print the cells that would run")
    run.add_argument("--corpora", type=Path, help="corpora directory for corpora: datasets "
                     "(default: $HARNESS_CORPORA)")
    run.add_argument("--timeout", type=float, help="per-cell timeout in seconds (default: the suite's)")
    _set_option(run)
    _executor_options(run)
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check a suite and its inputs without running anything")
    validate.add_argument("suite", type=Path)
    validate.add_argument("--corpora", type=Path)
    _set_option(validate)
    _executor_options(validate)
    validate.set_defaults(func=cmd_validate)

    compare = sub.add_parser("compare", help="compare two runs of a suite; exit 1 on a regression")
    compare.add_argument("base", type=Path, help="run directory of the baseline (last night)")
    compare.add_argument("new", type=Path, help="run directory of the candidate (tonight)")
    compare.add_argument("--format", default="markdown",
                         choices=["markdown", "json", "github-action-benchmark", "pytest-benchmark"],
                         help="the last two export NEW's figures for those tools (the exit code still compares)")
    compare.add_argument("--all", action="store_true", help="markdown: list unchanged rows too")
    _gate_options(compare)
    compare.set_defaults(func=cmd_compare)

    hist = sub.add_parser("history", help="trend of every metric over many runs, and where it stepped")
    hist.add_argument("dirs", type=Path, nargs="+", help="run directories, or folders of them (results/SUITE)")
    hist.add_argument("--format", default="markdown", choices=["markdown", "json"])
    hist.add_argument("--last", type=int, default=10, help="runs shown as columns (all are analysed)")
    _gate_options(hist)
    hist.set_defaults(func=cmd_history)

    report = sub.add_parser("report", help="report.md and a self-contained report.html with plots")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--format", default="html", choices=["html", "github-action-benchmark", "pytest-benchmark"],
                        help="html: report.md + report.html; the others print the run's figures for those tools")
    report.add_argument("--out", type=Path, help="html: directory for the report (default: the run directory); "
                        "otherwise a file (default: stdout)")
    report.set_defaults(func=cmd_report)

    sub.add_parser("schema", help="print the suite JSON Schema").set_defaults(func=cmd_schema)
    sub.add_parser("list", help="list backends, tasks, dataset sources and suites").set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        return args.func(args, console)
    except UserError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("harness: interrupted; finished cells are kept (resume with --resume)", file=sys.stderr)
        return 130
