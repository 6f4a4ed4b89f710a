"""Command line: harness run | validate | compare | history | report | dashboard | probe | schema | list | lm-eval |
lmeval-tasks.

Also ``python -m harness``.

Exit codes (contract): 0 ok, 1 a regression found by compare, 2 bad input, 3 some cells failed,
4 an environment error (disk full, permission denied, read-only file system), 5 ``compare --require-quiet``
found timings not comparable because the machine was busy (and no regression), 70 an internal error (a harness
bug: the traceback goes to a file, one line says where), 130 interrupted (Ctrl-C, SIGTERM, SIGHUP).
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import shlex
import signal
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from harness import __version__
from harness.backends import BACKENDS
from harness.core import process
from harness.core.errors import UserError, describe_os_error
from harness.core.files import check_output
from harness.core.library_logs import quiet_library_logs
from harness.core.memory import out_of_memory_cause, out_of_memory_line
from harness.core.paths import expand_user
from harness.core.process import interrupt
from harness.core.terminal import console_text, printable
from harness.tasks import TASKS

EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT, EXIT_CELLS_FAILED, EXIT_ENVIRONMENT, EXIT_NOT_QUIET = 0, 1, 2, 3, 4, 5
EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug in the harness, never a regression
EXIT_INTERRUPTED = 130


class _Console(Console):
    """Rich's console, but a reader that goes away (``harness list | head -1``) is an environment error, exit 4,
    not rich's exit 1, which CI reads as a regression."""

    def on_broken_pipe(self) -> None:
        try:
            super().on_broken_pipe()  # stdout onto /dev/null, so that nothing fails again at exit
        except SystemExit:
            raise BrokenPipeError(errno.EPIPE, "broken pipe", "stdout") from None


def _path(text: str) -> Path:
    """A path argument; ``~`` expanded here too, for a quoted one or one after ``--out=``."""
    return expand_user(text)


def _probability(text: str) -> float:
    """``--alpha``: a finite number strictly between 0 and 1 (``nan`` compares false with everything)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number ≥ 1")
    return value


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

    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise UserError(f"--timeout {args.timeout:g}: expected a number of seconds > 0")
    if args.wait_quiet is not None and not (math.isfinite(args.wait_quiet) and args.wait_quiet >= 0):
        raise UserError(f"--wait-quiet {args.wait_quiet:g}: expected a number of seconds ≥ 0")
    if args.out is not None:
        check_output(args.out, folder=True)
    suite, cells = _load(args.suite, args.only, args.set)
    if args.dry_run:
        for cell in cells:
            settings = {k: v for k, v in cell.params["task"].items() if v is not None and k != "type"}
            console.print(f"{cell.cell_id}  {console_text(cell.label)}  {console_text(json.dumps(settings))}",
                          highlight=False, soft_wrap=True)
        console.print(f"{len(cells)} cells would run")
        return EXIT_OK
    options = RunOptions(suite_path=args.suite, out=args.out, only=args.only, overrides=args.set,
                         resume=args.resume, corpora=args.corpora, timeout_s=args.timeout,
                         executor=_executor(args, suite), wait_quiet_s=args.wait_quiet)
    summary = Runner(suite, cells, options, console).run()
    print_results(summary.run_dir, console)
    console.print(f"results: {summary.run_dir} ({summary.ran} cells ran, {summary.reused} reused, "
                  f"{summary.failed} failed, {summary.skipped} skipped)", highlight=False, soft_wrap=True, markup=False)
    console.print(f"report:  harness report {shlex.quote(str(summary.run_dir))}", highlight=False, soft_wrap=True,
                  markup=False)
    return EXIT_CELLS_FAILED if summary.failed else EXIT_OK


def _gates(args, run_info: dict):
    from harness.analysis.gates import Gates, parse_overrides, recorded_gates

    return Gates(suite=recorded_gates(run_info), threshold=parse_overrides(args.threshold, "--threshold", 1.0),
                 tolerance=parse_overrides(args.tolerance, "--tolerance", 0.0), alpha=args.alpha)


def _emit(text: str, out: Path | None) -> None:
    """``text`` to stdout, or to the file ``out`` (checked before the work: :func:`check_output`)."""
    from harness.core.files import atomic_write_text

    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        atomic_write_text(out, text)


def cmd_compare(args, console: Console) -> int:
    from harness.analysis import compare, export, noise
    from harness.results.store import read_run

    if args.out is not None:
        check_output(args.out)
    if args.calibrate is not None:
        return _calibrate(args)
    if args.base is None or args.new is None:
        raise UserError("compare: expected BASE and NEW run directories, or --calibrate DIR")
    base, new = read_run(args.base), read_run(args.new)
    gates = _gates(args, new.info)
    history_dirs = [] if args.no_history else args.history or noise.default_history(base)
    history = noise.read_history(history_dirs, new, gates) if history_dirs else None
    result = compare.compare(base, new, gates, history)
    if args.format == "markdown":
        _emit(compare.to_markdown(result, args.all), args.out)
    elif args.format == "json":
        _emit(compare.to_json(result), args.out)
    else:  # the new run's figures, for a tool that keeps its own history
        _emit(json.dumps(export.EXPORTS[args.format](new), indent=2), args.out)
    if args.out is not None:
        print(f"{args.out}: {result.regressions} regressions, {result.not_comparable} rows not comparable "
              "(machine busy)", file=sys.stderr)
    if result.regressions:
        return EXIT_REGRESSION
    return EXIT_NOT_QUIET if args.require_quiet and result.not_comparable else EXIT_OK


def _calibrate(args) -> int:
    """``compare --calibrate DIR``: what unchanged runs look like to the gates (A/A)."""
    from harness.analysis import calibration, history

    if args.base is not None or args.history or args.format not in ("markdown", "json"):
        raise UserError("compare --calibrate DIR: takes no BASE/NEW nor --history, and writes markdown or json")
    runs = history.load_runs(args.calibrate)
    result = calibration.calibrate(runs, _gates(args, runs[-1].info))
    _emit(calibration.calibration_json(result) if args.format == "json" else calibration.calibration_markdown(result),
          args.out)
    return EXIT_OK


def cmd_history(args, console: Console) -> int:
    from harness.analysis import history

    if args.out is not None:
        check_output(args.out)
    runs = history.load_runs(args.dirs)
    trends = history.history(runs, _gates(args, runs[-1].info))
    text = history.to_json(runs, trends) if args.format == "json" else history.to_markdown(runs, trends, args.last)
    _emit(text, args.out)
    return EXIT_OK


def cmd_report(args, console: Console) -> int:
    from harness.analysis import export
    from harness.report.render import write_report
    from harness.results.store import read_run

    if args.out is not None:
        check_output(args.out, folder=args.format == "html")
    if args.format != "html":
        _emit(json.dumps(export.EXPORTS[args.format](read_run(args.run_dir)), indent=2), args.out)
        return EXIT_OK
    md, page = write_report(args.run_dir, args.out)
    console.print(f"report: {md}, {page}", highlight=False)
    return EXIT_OK


def cmd_dashboard(args, console: Console) -> int:
    from harness.report.site import write_site

    check_output(args.out, folder=True)
    site = write_site(args.dirs, args.out, lambda info: _gates(args, info))
    console.print(f"dashboard: {args.out / 'index.html'} ({len(site.nights)} runs, "
                  f"{len({line.metric for line in site.lines})} metrics)", highlight=False, soft_wrap=True)
    return EXIT_OK


def _gate_options(parser: argparse.ArgumentParser, out: bool = True) -> None:
    from harness.analysis.gates import ALPHA

    parser.add_argument("--threshold", action="append", default=[], metavar="[METRIC=]RATIO",
                        help="timings: the ratio a change must pass (and be significant), for one metric or "
                        "all; repeatable; overrides the suite's gates")
    parser.add_argument("--tolerance", action="append", default=[], metavar="[METRIC=]REL",
                        help="deterministic metrics: the relative change allowed; repeatable")
    parser.add_argument("--alpha", type=_probability, default=ALPHA,
                        help=f"significance level, between 0 and 1 (default {ALPHA})")
    if out:
        parser.add_argument("--out", type=_path, help="write to this file instead of stdout")


def cmd_probe(args, console: Console) -> int:
    from harness.core.cpus import available_cpus
    from harness.results.probe import probe, probe_line

    cpus = available_cpus()
    threads = cpus if args.threads is None else args.threads
    if not 1 <= threads <= cpus:  # more threads than CPUs measures nothing (and 100,000 crash the probe)
        raise UserError(f"--threads {args.threads}: expected 1 to {cpus} (the CPUs this process may use)")
    with console.status(f"probing the machine's memory bandwidth and GEMM rate ({threads} threads)"):
        result = probe(threads, rerun=True)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        console.print(f"{threads} threads, {result['probe_s']:.0f} s: {probe_line(result)}", highlight=False)
    return EXIT_OK


def cmd_schema(args, console: Console) -> int:
    from harness.suite.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_list(args, console: Console) -> int:
    from harness.sources.corpora import BUILTINS

    console.print("backends: " + ", ".join(f"{name} ({', '.join(sorted(cls.capabilities))}; loads "
                                          f"{', '.join(sorted(cls.model_kinds))})"
                                          for name, cls in BACKENDS.items()), highlight=False)
    needs = {name: f" (needs {', '.join(sorted(cls.requires))})" if cls.requires else "" for name, cls in TASKS.items()}
    console.print("tasks:    " + ", ".join(name + needs[name] for name in TASKS), highlight=False)
    console.print("datasets: " + ", ".join(f"builtin:{name}#train|test" for name in BUILTINS)
                  + ", file:PATH, corpora:NAME, hf:DATASET/CONFIG[#split]", highlight=False)
    suites = sorted(Path("suites").glob("*.yaml")) if Path("suites").is_dir() else []
    if suites:
        console.print("suites:   " + ", ".join(str(s) for s in suites), highlight=False)
    return EXIT_OK


def cmd_lm_eval(arguments: list[str]) -> int:
    """lm-eval's own command line, with the ``harness`` model registered (``--model harness``)."""
    from harness.core.errors import require

    require("lm_eval", "lmeval", "harness lm-eval")
    from lm_eval.__main__ import cli_evaluate

    import harness.lmeval  # noqa: F401  (registers the model)
    from harness.sources.lmeval_tasks import LOCAL_TASKS

    sys.argv = ["lm-eval", *arguments]
    try:
        cli_evaluate()
    except ValueError as exc:  # lm-eval's word for a task name it cannot find; others are lm-eval's or ours
        if not str(exc).startswith("Tasks not found"):
            raise
        raise UserError(f"lm-eval: {exc} (a task of your own needs its folder: --include_path; harness "
                        f"lmeval-tasks writes {' and '.join(LOCAL_TASKS)})") from None
    except ConnectionError as exc:  # datasets' (no errno): a hub task's data, offline
        raise UserError(f"lm-eval: {exc}: a hub task's data is downloaded once, online (or use the local tasks "
                        f"{' and '.join(LOCAL_TASKS)})") from None
    return EXIT_OK


def cmd_lmeval_tasks(args, console: Console) -> int:
    from harness.sources.corpora import DatasetSpec, corpora_dir, load_corpus
    from harness.sources.lmeval_tasks import LOCAL_TASKS, write_local_tasks

    if args.docs < 1:
        raise UserError(f"--docs {args.docs}: expected a number of documents ≥ 1")
    check_output(args.out, folder=True)
    corpus = load_corpus("text", DatasetSpec(source=args.source), Path.cwd(), corpora_dir(args.corpora))
    try:
        out = write_local_tasks(args.out, corpus.text, args.docs, args.seed)
    except ValueError as exc:
        raise UserError(f"{args.source}: {exc}") from None
    console.print(f"{out}: {', '.join(LOCAL_TASKS)} (lm-eval ... --include_path {out} --tasks {LOCAL_TASKS[0]})",
                  highlight=False)
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
    run.add_argument("suite", type=_path)
    run.add_argument("--out", type=_path, help="run directory (default: results/SUITE/RUN_ID)")
    run.add_argument("--only", action="append", default=[], metavar="GLOB",
                     help="run only cells whose model/backend/task (or id prefix) matches; repeatable")
    run.add_argument("--resume", action="store_true",
                     help="keep finished cells of the run directory (default: the suite's latest run)")
    run.add_argument("--dry-run", action="store_true", help="print the cells that would run")
    run.add_argument("--corpora", type=_path, help="corpora directory for corpora: datasets "
                     "(default: $HARNESS_CORPORA)")
    run.add_argument("--timeout", type=float, help="per-cell timeout in seconds (default: the suite's)")
    run.add_argument("--wait-quiet", type=float, metavar="SECONDS",
                     help="before each timing cell and interleaved round, wait up to SECONDS for the machine to "
                     "be quiet; a cell that never got a quiet machine is flagged busy (default: the suite's "
                     "busy.wait_quiet_s, 0)")
    _set_option(run)
    _executor_options(run)
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check a suite and its inputs without running anything")
    validate.add_argument("suite", type=_path)
    validate.add_argument("--corpora", type=_path)
    _set_option(validate)
    _executor_options(validate)
    validate.set_defaults(func=cmd_validate)

    compare = sub.add_parser("compare", help="compare two runs of a suite; exit 1 on a regression")
    compare.add_argument("base", type=_path, nargs="?", help="run directory of the baseline (last night)")
    compare.add_argument("new", type=_path, nargs="?", help="run directory of the candidate (tonight)")
    compare.add_argument("--history", type=_path, action="append", default=[], metavar="DIR",
                         help="earlier runs of the suite (run directories or a folder of them; repeatable): "
                         "each timing's threshold becomes at least k·σ of their night-to-night spread "
                         "(default: BASE's folder when it is results/SUITE)")
    compare.add_argument("--no-history", action="store_true", help="judge without history (uncalibrated)")
    compare.add_argument("--calibrate", type=_path, nargs="+", metavar="DIR",
                         help="instead of comparing two runs: every consecutive pair of these runs (run "
                         "directories or folders of them), taken as unchanged: how far apart each metric's "
                         "figures are, how often the gates flag them, and suggested gates")
    compare.add_argument("--format", default="markdown",
                         choices=["markdown", "json", "github-action-benchmark", "pytest-benchmark"],
                         help="the last two export NEW's figures for those tools (the exit code still compares)")
    compare.add_argument("--all", action="store_true", help="markdown: list unchanged rows too")
    compare.add_argument("--require-quiet", action="store_true",
                         help="exit 5 when a timing is not comparable because the machine was busy on either side "
                         "(a runner that is always busy must not pass in silence); a regression still exits 1")
    _gate_options(compare)
    compare.set_defaults(func=cmd_compare)

    hist = sub.add_parser("history", help="trend of every metric over many runs, and where it stepped")
    hist.add_argument("dirs", type=_path, nargs="+", help="run directories, or folders of them (results/SUITE)")
    hist.add_argument("--format", default="markdown", choices=["markdown", "json"])
    hist.add_argument("--last", type=_positive_int, default=10, help="runs shown as columns (all are analysed)")
    _gate_options(hist)
    hist.set_defaults(func=cmd_history)

    report = sub.add_parser("report", help="report.md and a self-contained report.html with plots")
    report.add_argument("run_dir", type=_path)
    report.add_argument("--format", default="html", choices=["html", "github-action-benchmark", "pytest-benchmark"],
                        help="html: report.md + report.html; the others print the run's figures for those tools")
    report.add_argument("--out", type=_path, help="html: directory for the report (default: the run directory); "
                        "otherwise a file (default: stdout)")
    report.set_defaults(func=cmd_report)

    dash = sub.add_parser("dashboard", help="a static site of every metric over the runs: overview, a page per "
                          "metric, the quantization and decoding views, the runs' machines and reports")
    dash.add_argument("dirs", type=_path, nargs="+", help="run directories, or folders of them (results/SUITE); "
                      "runs of several suites and per-backend runs of one nightly may be mixed")
    dash.add_argument("--out", type=_path, default=Path("site"), help="the site's folder, replaced if it holds an "
                      "earlier one (default: site)")
    _gate_options(dash, out=False)
    dash.set_defaults(func=cmd_dashboard)

    probe = sub.add_parser("probe", help="measure the machine's memory read bandwidth and GEMM rate again "
                           "(the cache a run's MBU/MFU use)")
    probe.add_argument("--threads", type=int, help="CPU threads (default: all this process may use)")
    probe.add_argument("--json", action="store_true", help="print every figure, with method and repeats")
    probe.set_defaults(func=cmd_probe)

    sub.add_parser("schema", help="print the suite JSON Schema").set_defaults(func=cmd_schema)
    sub.add_parser("list", help="list backends, tasks, dataset sources and suites").set_defaults(func=cmd_list)
    sub.add_parser("lm-eval", add_help=False, help="lm-evaluation-harness's command line with the 'harness' model "
                   "registered: harness lm-eval run --model harness --model_args backend=llamacpp,gguf=... "
                   "--tasks ... (every argument goes to lm-eval)")
    tasks = sub.add_parser("lmeval-tasks", help="write the local lm-eval tasks harness_cloze and harness_rolling, "
                           "built from a text, for lm-eval's --include_path")
    tasks.add_argument("source", help="the text: corpora:NAME, file:PATH, builtin:NAME or hf:DATASET/CONFIG")
    tasks.add_argument("out", type=_path, help="folder for the task YAMLs and their data")
    tasks.add_argument("--docs", type=int, default=500, help="documents per task (default 500)")
    tasks.add_argument("--seed", type=int, default=1234, help="the cloze task's draws (default 1234)")
    tasks.add_argument("--corpora", type=_path, help="corpora directory (default: $HARNESS_CORPORA)")
    tasks.set_defaults(func=cmd_lmeval_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quiet_library_logs()
    main_thread = threading.current_thread() is threading.main_thread()  # where Python delivers signals
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if main_thread else ()
    previous = {s: signal.signal(s, interrupt) for s in signals}  # all three alike: exit 130
    process.last_signal = None
    try:
        if argv[:1] == ["lm-eval"]:  # every argument is lm-eval's, its options too
            args = argparse.Namespace(func=lambda args, console: cmd_lm_eval(argv[1:]))
        else:
            args = build_parser().parse_args(argv)  # inside: a path type may raise UserError (~nosuchuser)
        if sys.stdout is None:  # started with stdout closed (`harness list >&-`)
            raise OSError(errno.EBADF, "cannot write the output", "stdout")
        console = _Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 100)  # piped: 100
        return args.func(args, console)
    except UserError as exc:
        print(f"harness: error: {printable(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        if exc.errno is None:
            return _internal_error(exc, argv)
        print(f"harness: error: {printable(describe_os_error(exc))}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except (MemoryError, ImportError, RuntimeError) as exc:  # out of memory is the environment's, where Python sees it
        cause = out_of_memory_cause(exc)
        if cause is None:
            return _internal_error(exc, argv)
        print(f"harness: error: {out_of_memory_line(cause)}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:  # Interrupted, or a bare one from Ray's waits: the handler kept the signal
        how = f" by {signal.Signals(process.last_signal).name}" if process.last_signal else ""
        print(f"harness: interrupted{how}; finished cells are kept (resume with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        return _internal_error(exc, argv)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _internal_error(exc: Exception, argv: list[str]) -> int:
    """A harness bug: not exit 1 (CI reads 1 as a regression) but 70, with the traceback in a file (the run
    folder's when the exception says which, else the cache's) and one line saying where."""
    import traceback

    from harness.core.files import atomic_write_text
    from harness.sources.cache import cache_dir

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    run_dir = getattr(exc, "run_dir", None)
    try:
        folder = Path(run_dir) / "logs" if run_dir is not None else cache_dir() / "crashes"
        path = folder / f"harness-crash-{stamp}-{os.getpid()}.txt"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, f"harness {__version__}: harness {' '.join(argv)}\n{text}")
        where = f"the traceback is in {path}"
    except (OSError, UserError) as write_error:
        where = f"the traceback could not be saved ({write_error}):\n{text.rstrip()}"
    first_line = printable(str(exc).splitlines()[0]) if str(exc).strip() else ""
    print(f"harness: internal error (a bug in the harness: please report it), {type(exc).__name__}: {first_line}; "
          f"{where}", file=sys.stderr)
    return EXIT_INTERNAL_ERROR
