"""`python -m train.evaluate --config train/configs/evaluate_tiny.yaml [--section.field VALUE ...]`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
