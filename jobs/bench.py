"""`argen bench [suite] [key=value ...]`: speed and quality benchmarks, ratios measured in one run.

Benchmarks are not tests. Each suite prints a markdown table; the figures and the exact command go
into docs/BENCHMARKS.md. With no suite, the quick suites run in turn with their defaults (name `toy` or `load` to run those).
"""
from __future__ import annotations

import importlib
import sys

SUITES = {
    "var": "jobs.benches.var",            # accel=none vs fastvar
    "llamagen": "jobs.benches.llamagen",  # plain AR vs speculative / LANTERN / SJD
    "eagle": "jobs.benches.eagle",        # LlamaGen with EAGLE draft trees vs plain AR and the chain drafter
    "decode": "jobs.benches.decode",      # every family's sampling loop, eager vs compiled (accel/compiled.py)
    "gpu": "jobs.benches.gpu",            # the prepared GPU check: fp32 vs release precision, eager vs compiled
    "mar": "jobs.benches.mar",            # accel=none vs lazymar
    "pipeline": "jobs.benches.pipeline",  # bare generator vs the whole pipeline
    "toy": "jobs.benches.toy",            # quality vs speed of every acceleration on the trained toy models
    "load": "jobs.benches.load",          # 2,000 small shards: shards/s, driver CPU and memory per shard
    "toys_sheet": "jobs.benches.toys_sheet",  # the toys, a labelled row per class (docs/toys.png)
    "fastvar_cache": "jobs.benches.fastvar_cache",  # error of FastVAR's restored tokens per cache scale (var_toy)
}


# with no suite named: the quick ones (toy and load take hours and a quarter of an hour on a CPU)
DEFAULT_SUITES = ("var", "llamagen", "mar", "pipeline")


def parse_overrides(args: list[str]) -> dict[str, str]:
    out = {}
    for a in args:
        key, eq, value = a.partition("=")
        if not eq or not key:
            raise SystemExit(f"argen bench: expected key=value, got {a!r}")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print("usage: argen bench [suite ...] [key=value ...]\n\nsuites:")
        for name, module in SUITES.items():
            doc = (importlib.import_module(module).__doc__ or "").strip().split("\n\n")[0]
            print(f"  {name:14s} {' '.join(doc.split())}")  # the docstring's first paragraph
        print(f"\nwith no suite: {', '.join(DEFAULT_SUITES)}. Each suite's options: its module's docstring "
              f"(jobs/benches/<suite>.py); figures and commands: docs/BENCHMARKS.md")
        return 0
    suites = []
    while argv and "=" not in argv[0]:
        suites.append(argv.pop(0))
    for s in suites:
        if s not in SUITES:
            raise SystemExit(f"argen bench: unknown suite {s!r}; known: {', '.join(SUITES)}")
    for s in suites or DEFAULT_SUITES:
        module = importlib.import_module(SUITES[s])
        print(f"\n## bench {s}\n", flush=True)
        module.run(parse_overrides(argv))
    return 0


if __name__ == "__main__":
    from jobs.cli import entry

    entry(main)
