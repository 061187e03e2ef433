"""M³FT stage 1: `python -m train.stage1 --config train/configs/tiny_stage1.yaml [--section.field VALUE ...]`."""

import sys

from .cli import run
from .config import Stage1Config

if __name__ == "__main__":
    sys.exit(run(Stage1Config, sys.argv[1:]))
