"""M³FT stage 2: `python -m train.stage2 --config train/configs/tiny_stage2.yaml --init-from STAGE1.safetensors [--section.field VALUE ...]`."""

import sys

from .cli import run
from .config import Stage2Config

if __name__ == "__main__":
    sys.exit(run(Stage2Config, sys.argv[1:]))
