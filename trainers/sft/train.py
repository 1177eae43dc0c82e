"""Entry point: ``python -m trainers.sft.train --training-set ID [--base-model M] [--use-lora] ...``.

Multi-GPU: ``accelerate launch [--num_processes N] [--config_file ...] -m trainers.sft.train --training-set ID``
(every process trains its shard; the main process saves the model and registers the generator version).
Prints the registered model version as JSON on the main process.
"""

from __future__ import annotations

import json
import sys


def parse_args(argv: list[str] | None = None):
    from transformers import HfArgumentParser

    from trainers.sft.config import GeneratorTrainConfig

    parser = HfArgumentParser(GeneratorTrainConfig, description=__doc__)
    (cfg,) = parser.parse_args_into_dataclasses(args=argv)
    return cfg


def main(argv: list[str] | None = None) -> int:
    from app.errors import MucodeError
    from app.logs import setup_logging
    from trainers.sft.trainer import train_generator

    setup_logging()
    cfg = parse_args(argv)
    try:
        mv = train_generator(cfg)
    except MucodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps({k: mv.get(k) for k in ("id", "name", "uri", "metrics")}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
