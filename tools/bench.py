"""Benchmark a config: `python tools/bench.py --gin experiments/ditdh_s.gin --batch_size 8 --what all`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rae.bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
