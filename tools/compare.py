"""Compare runs in a terminal: `python tools/compare.py --repo runs [QUERY]`.

QUERY is Aim QL, as in the `aim up` search box, e.g.
    python tools/compare.py --repo runs 'run.experiment == "ditdh_xl" and run.hparams.guidance.scale > 1' \\
        --params backbone.name,guidance.scale --metrics loss:last,loss:min,fid:min --sort fid:min
Params are flat config keys (`backbone.hidden_size`) or other run params (`git_commit`, `accelerator.device`).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rae.tracking.compare import DEFAULT_METRICS, DEFAULT_PARAMS, CompareError, compare  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools/compare.py", description="Print a table of Aim runs.")
    p.add_argument("query", nargs="?", default="", help='Aim QL, e.g. \'run.hparams.backbone.name == "ditdh"\'')
    p.add_argument("--repo", default="runs", help="folder holding the Aim repo (default: runs)")
    p.add_argument("--params", default=None,
                   help=f"comma-separated param keys (default: those of {','.join(DEFAULT_PARAMS)} that are set)")
    p.add_argument("--metrics", default=None,
                   help=f"comma-separated NAME:AGG, AGG in last|first|min|max|mean "
                        f"(default: those of {DEFAULT_METRICS} that were tracked)")
    p.add_argument("--sort", default=None, help="sort by this column, e.g. loss:min")
    args = p.parse_args(argv)
    params = [k.strip() for k in args.params.split(",") if k.strip()] if args.params is not None else None
    try:
        print(compare(args.repo, args.query, params, args.metrics, args.sort))
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
