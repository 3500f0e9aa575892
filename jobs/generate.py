"""`argen generate [overrides]`: a config's plan -> WebDataset shards under output.uri (resumable).

    argen generate                                   # the demo: var_toy, 40 images, ./argen_output
    argen generate model=var_d16 accel=fastvar output.uri=s3://bucket/run data.classes=null data.per_class=50
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from accel.api import ArgenError


CONF_DIR = str(Path(__file__).resolve().parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _generate(cfg: DictConfig) -> None:
    from pipeline.driver import run
    from pipeline.scheduler import ShardFailed

    try:
        run(cfg)
    except ArgenError as e:  # bad input: named, with the fix, before any generation where possible
        print(f"argen generate: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except ShardFailed as e:  # shards kept failing; committed shards stay, rerun to resume
        print(f"argen generate: failed: {e}\nCommitted shards are kept; run the same command again to resume.",
              file=sys.stderr, flush=True)
        sys.exit(1)


def main() -> int:
    _generate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
