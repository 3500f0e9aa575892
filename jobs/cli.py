"""`argen <job> [hydra overrides]`: the same as `python -m jobs.<job> [overrides]`."""
from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys
import traceback
from typing import Callable

JOBS = {
    "generate": "jobs.generate",
    "evaluate": "jobs.evaluate",
    "verify": "jobs.verify",
    "submit": "jobs.submit",
    "bench": "jobs.bench",
    "train-toy": "jobs.train_toy",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: argen <job> [hydra overrides]\n\njobs:")
        for name in JOBS:
            print(f"  {name}")
        print("\nexamples:\n  argen generate                                   # the demo: var_toy, 40 images, ./argen_output"
              "\n  argen generate model=var_toy data.per_class=100 output.uri=/tmp/run"
              "\n  argen <job> --help                               # the job's options")
        return 0 if argv else 2
    job = argv.pop(0)
    if job not in JOBS:
        print(f"argen: unknown job {job!r}; known jobs: {', '.join(JOBS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(JOBS[job])
    if job in ("generate", "evaluate", "verify") and {"-h", "--help"} & set(argv):
        # what the job does, before Hydra's listing of the whole config (which every job shares)
        print((module.__doc__ or "").strip().split("\n\n")[0] + "\n\n(the job's module docstring, "
              f"{JOBS[job].replace('.', '/')}.py, says more)\n")
    sys.argv = [f"argen {job}"] + argv  # Hydra parses sys.argv
    result = module.main()
    return int(result or 0)


def entry(run: Callable[[], int | None] = main) -> None:
    """A console script or `python -m jobs.<job>`: run(), then exit with its status at once. Exit handlers run,
    but not the interpreter's teardown of native libraries, where pyarrow (with torch loaded) can abort after
    the job has finished and turn its status into 134."""
    try:
        code = run() or 0
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()  # Ray's shutdown, tempfile clean-up ...
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(int(code))


if __name__ == "__main__":
    entry()
