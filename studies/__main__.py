"""The study's command line: ``python -m studies {run,list,report,bench}`` (also installed
as ``kerasnorm-study``).

    python -m studies run --claims C1,C4 --profile quick --jobs 2
    python -m studies run --profile full          # follows the seed plans (--no-sequential: not)
    python -m studies run --claims C1 --seeds 0-49 --executor ray
    python -m studies list --profile full
    python -m studies report

Exit status: 0 on success (runs that failed are recorded results, counted in the output),
2 for a bad argument or path, with a message naming it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT_RESULTS = Path("reports") / "results"
DEFAULT_REPORT = Path("reports")


def _claim_ids(text):
    from studies import claims

    try:
        return claims.parse_claims(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _profile(text):
    from studies import claims

    try:
        return claims.check_profile(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _executor(text):
    from studies.engine import sweep

    if text not in sweep.EXECUTORS:
        raise argparse.ArgumentTypeError(f"unknown executor '{text}'; known: {', '.join(sweep.EXECUTORS)}")
    return text


def _jobs(text):
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"--jobs must be a whole number of at least 1, not '{text}'")
    return jobs


def _seeds(text):
    """``N`` (seeds 0 to N-1) or ``A-B`` (seeds A to B) -> the list of seeds."""
    first, dash, last = text.partition("-")
    try:
        seeds = range(int(first), int(last) + 1) if dash else range(int(text))
    except ValueError:
        seeds = range(0)
    if not seeds or seeds.start < 0:
        raise argparse.ArgumentTypeError(
            f"--seeds must be a count N >= 1 or a range A-B with 0 <= A <= B, not '{text}'"
        )
    return list(seeds)


def _parser():
    parser = argparse.ArgumentParser(prog="python -m studies", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,list,report,bench}")

    def selection(sub):
        sub.add_argument("--claims", type=_claim_ids, default="all", help="C1,C4,... or all (default)")
        sub.add_argument("--profile", type=_profile, default="full", help="smoke | quick | full (default)")
        sub.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=f"default {DEFAULT_RESULTS}")
        sub.add_argument(
            "--seeds", type=_seeds, default=None,
            help="N (seeds 0..N-1) or A-B: every arm's seeds, instead of the claims' own",
        )  # fmt: skip

    run = commands.add_parser("run", help="run the claims' grids; finished runs are skipped")
    selection(run)
    run.add_argument("--executor", type=_executor, default="local", help="local (default) | ray")
    run.add_argument("--jobs", type=_jobs, default=1, help="runs at a time (default 1)")
    run.add_argument("--retry-errors", action="store_true", help="rerun runs recorded as failed")
    run.add_argument(
        "--sequential", action=argparse.BooleanOptionalAction, default=True,
        help="full profile: follow each claim's sequential seed plan, adding seed blocks while a "
        "decisive check is undecided for want of precision, up to its cap (default); "
        "--no-sequential trains the seeds the plans stand at",
    )  # fmt: skip

    listing = commands.add_parser("list", help="runs planned and done per claim")
    selection(listing)

    report = commands.add_parser("report", help="write the report from stored results")
    report.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=f"default {DEFAULT_RESULTS}")
    report.add_argument("--out", type=Path, default=DEFAULT_REPORT, help=f"default {DEFAULT_REPORT}")

    commands.add_parser(
        "bench", help="time the layers: studies.bench.main(arguments after 'bench')", add_help=False
    )
    return parser


def _check_writable(parser, path, what):
    """Creates folder `path` if needed; exits 2 naming it if it cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"cannot create {what} '{path}': {error.strerror or error}")
    if not os.access(path, os.W_OK | os.X_OK):
        parser.error(f"cannot write to {what} '{path}'")


def _check_readable(parser, path, what, must_exist):
    if not path.exists():
        if must_exist:
            parser.error(f"{what} '{path}' does not exist")
        return
    if not path.is_dir():
        parser.error(f"{what} '{path}' is not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        parser.error(f"cannot read {what} '{path}'")


def _run(args, parser):
    from studies import claims, plan
    from studies.engine import sweep
    from studies.engine.store import ResultsStore

    _check_writable(parser, args.results, "results folder")
    store = ResultsStore(args.results)
    start = time.monotonic()

    def run_configs(configs):
        return sweep.run_sweep(
            configs,
            store,
            executor=args.executor,
            jobs=args.jobs,
            retry_errors=args.retry_errors,
            setup=claims.register_tasks,
        )

    try:  # the grids, then more seeds where a claim's sequential seed plan asks for them
        if args.seeds is None:
            summary, seeds = plan.run_planned(args.claims, args.profile, store, run_configs, args.sequential)
        else:  # the user's seeds, recorded so that the report plans them too
            summary, seeds = run_configs(_planned_configs(args)), {}
            _record_seeds(store, args)
        if seeds:
            print("sequential seed plan, seeds per arm: " + ", ".join(f"{c} {n}" for c, n in seeds.items()))
    except RuntimeError as error:  # the ray executor without ray
        parser.error(str(error))
    if summary.ok or summary.errors:
        _write_manifest(store, args, summary, time.monotonic() - start)
    print(
        f"{summary.planned} runs planned, {summary.skipped} already done, "
        f"{summary.ok} ran ok, {summary.errors} failed; results in {args.results}"
        + (f" (with {summary.extra} runs of the other seeds of the blocks that ran)" if summary.extra else "")
    )
    if summary.errors:
        print("Failed runs are recorded with their error; rerun them with --retry-errors.")
    return 0


def _planned_configs(args, claim_ids=None) -> list:
    """The configs of the selected claims (or `claim_ids`), with ``--seeds`` applied."""
    from studies import claims
    from studies.engine.config import reseed

    planned = claims.plan(claim_ids or args.claims, args.profile)
    configs = [c for claim_configs in planned.values() for c in claim_configs]
    return configs if args.seeds is None else reseed(configs, args.seeds)


def _record_seeds(store, args):
    """Stores each selected claim's seeds per arm as at least ``max(--seeds) + 1`` in the
    seed plan's file (`studies.plan.SEEDS`), which `studies.report` and later runs read:
    the report then takes every stored seed up to that one."""
    from studies import plan

    seeds = plan.read_seeds(store.root, args.profile)
    for claim_id in args.claims:
        seeds[claim_id] = max(seeds.get(claim_id, 0), max(args.seeds) + 1)
    plan.write_seeds(store.root, args.profile, seeds)


def _write_manifest(store, args, summary, wall_s):
    """Records how the results were made. A study may be run in pieces (claim by claim,
    or resumed after a crash): each invocation that ran something is appended to
    ``sweeps``, and the totals cover them all; a different profile starts a new record."""
    from studies import claims

    previous = store.read_manifest() or {}
    sweeps = previous.get("sweeps", []) if previous.get("profile") == args.profile else []
    sweeps.append(
        {
            "claims": args.claims,
            "seeds": None if args.seeds is None else f"{min(args.seeds)}-{max(args.seeds)}",
            "executor": args.executor,
            "jobs": args.jobs,
            "wall_s": wall_s,
            "runs": summary.planned,
            "runs_before": summary.skipped,
            "runs_failed": summary.errors,
        }
    )
    store.write_manifest(
        {
            "profile": args.profile,
            "claims": sorted({c for s in sweeps for c in s["claims"]}, key=claims.CLAIM_IDS.index),
            "executor": sorted({s["executor"] for s in sweeps}),
            "jobs": max(s["jobs"] for s in sweeps),
            "wall_s": sum(s["wall_s"] for s in sweeps),
            "sweeps": sweeps,
        }
    )


def _list(args, parser):
    from studies import claims
    from studies.engine.store import ResultsStore

    _check_readable(parser, args.results, "results folder", must_exist=False)
    store = ResultsStore(args.results)
    total_done = total = 0
    for claim_id in args.claims:
        configs = _planned_configs(args, [claim_id])
        statuses = [store.status(c) for c in configs]
        done = sum(s is not None for s in statuses)
        failed = statuses.count("error")
        title = claims.load(claim_id).TITLE
        print(f"{claim_id}  {done}/{len(configs)} done" + (f" ({failed} failed)" if failed else "") + f"  {title}")
        total_done, total = total_done + done, total + len(configs)
    print(f"total: {total_done}/{total} runs done")
    return 0


def _report(args, parser):
    _check_readable(parser, args.results, "results folder", must_exist=True)
    _check_writable(parser, args.out, "report folder")
    from studies.report import render

    render.write_report(args.results, args.out)
    return 0


def _bench(args, parser):
    from studies import bench

    result = bench.main(args.bench_args)
    return int(result or 0)


def main(argv=None) -> int:
    """Runs the command line on `argv` (default: ``sys.argv[1:]``); returns the exit status
    (argument errors exit with status 2 through `SystemExit`, as argparse does)."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = rest  # studies.bench parses its own arguments
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    command = {"run": _run, "list": _list, "report": _report, "bench": _bench}[args.command]
    return command(args, parser)


if __name__ == "__main__":
    sys.exit(main())
