"""Mutation testing of the core and the models with cosmic-ray (issue 17): a tool, not CI.

    python tools/mutation.py                         # every file listed in pyproject.toml
    python tools/mutation.py registry/orderings.py   # one file (or several)
    python tools/mutation.py --report                # rewrite the results table only, run nothing
    python tools/mutation.py --reset FILE            # forget FILE's results and start over

Configuration: ``[tool.densreg.mutation]`` in pyproject.toml (per file: the fast test subset
that exercises it, optionally the functions to mutate; the per-mutant timeout; the operators
left out). cosmic-ray: ``pip install -e ".[mutation]"``.

This module is the command line. Running the mutants (the safety checks, each file's session in
``tools/mutation_sessions/``, the fork server) is ``mutation_runner.py``; the report
(``benchmarks/results/mutation.md``) is ``mutation_report.py``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from mutation_report import RESULTS, write_report
from mutation_runner import (ROOT, SESSIONS, ForkServer, check_clean, check_editable_install, client, load_config,
                             run_file, serve, slug)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt  # so that every file is restored on `kill`


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:  # kept light: this runs once per mutant
        return client(argv[1], float(argv[2]), argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="files to mutate (default: every file in the configuration)")
    parser.add_argument("--report", action="store_true", help="only rewrite benchmarks/results/mutation.md")
    parser.add_argument("--reset", action="store_true", help="forget the results of FILES and start over")
    parser.add_argument("--max-minutes", type=float, help="stop each file after this long (the rest stays pending)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    config = load_config()
    unknown = [f for f in args.files if f not in config["files"]]
    if unknown:
        parser.error(f"not configured in [tool.densreg.mutation.files]: {', '.join(unknown)}")
    files = args.files or list(config["files"])
    if args.reset:
        for f in files:
            for suffix in (".sqlite", ".json"):
                (SESSIONS / f"{slug(f)}{suffix}").unlink(missing_ok=True)
    if not args.report:
        check_editable_install()
        for f in files:
            check_clean(f)
        os.nice(19)
        server = ForkServer()
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            for f in files:
                run_file(f, config["files"][f], config, server, args.max_minutes)
                write_report(config)
        finally:
            server.close()
    write_report(config)
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
