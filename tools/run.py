"""The one runner: `python tools/run.py --gin experiments/<name>.gin [--dry_run]`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rae.runner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
