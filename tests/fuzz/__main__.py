"""``python -m tests.fuzz [--seconds S] [--seed N]``: see the package docstring."""

import argparse
import sys
from pathlib import Path

from . import ROOT, run

parser = argparse.ArgumentParser(prog="python -m tests.fuzz")
parser.add_argument("--seconds", type=float, default=60.0, help="time budget (default 60)")
parser.add_argument("--seed", type=int, default=0, help="random seed of the case sequence")
parser.add_argument("--save", type=Path, default=ROOT / ".fuzz-failures",
                    help="where failed cases are kept (default .fuzz-failures/)")
args = parser.parse_args()
args.save.mkdir(exist_ok=True)
sys.exit(1 if run(seconds=args.seconds, seed=args.seed, save=args.save) else 0)
