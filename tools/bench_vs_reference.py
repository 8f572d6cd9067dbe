"""The RAE release vs ours, side by side: `python tools/bench_vs_reference.py --reference /path/to/RAE`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rae.bench.versus import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
