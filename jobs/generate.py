"""`argen generate [overrides]`: a config's plan -> WebDataset shards under output.uri (resumable).

    argen generate                                   # the demo: var_toy, 40 images, ./argen_output
    argen generate model=var_d16 accel=fastvar output.uri=s3://bucket/run data.classes=null data.per_class=50
"""
from __future__ import annotations

import sys

from omegaconf import DictConfig

from jobs.common import run_job


def _generate(cfg: DictConfig) -> int:
    from pipeline.driver import run
    from pipeline.lease import LeaseLost
    from pipeline.redaction import redact
    from pipeline.scheduler import ShardFailed
    from pipeline.sinks import StorageUnavailable

    try:
        run(cfg)
    except (ShardFailed, StorageUnavailable, LeaseLost) as e:  # shards kept failing, the store stayed down ...
        print(f"argen generate: failed: {redact(str(e))}\nCommitted shards are kept; run the same command again "
              f"to resume.", file=sys.stderr, flush=True)
        return 1
    return 0


def main() -> int:
    code = run_job("generate", _generate)
    if code:
        sys.exit(code)
    return 0


if __name__ == "__main__":
    from jobs.cli import entry

    entry(main)
