"""``python -m bench [--quick] [--out docs/]`` -- run the benchmark suite and write the page.

``--from-json FILE`` re-renders the markdown and the chart from a previous run's raw JSON without measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.report import SECTIONS


def sections_arg(text: str) -> list[str]:
    """``core,scale`` -> ["core", "scale"]; argparse reports a name that is not a section."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in SECTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(SECTIONS)}, got {text!r}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="imqd vs kernel HTB vs a bare NFQUEUE "
                                     "loop vs plain forwarding, measured in one run on one topology")
    parser.add_argument("--quick", action="store_true",
                        help="one repetition, one rate, short runs, fewer classes (the core section < 2 min)")
    parser.add_argument("--sections", type=sections_arg, default=list(SECTIONS), metavar="S[,S...]",
                        help=f"what to measure, comma-separated: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="directory for benchmarks.{md,json,png}")
    parser.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                        help="re-render the page from a previous benchmarks.json (no measuring)")
    args = parser.parse_args(argv)

    from bench import runner

    if args.from_json is not None:
        try:
            raw = json.loads(args.from_json.read_text())["raw"]
        except (OSError, ValueError, KeyError) as e:
            print(f"bench: --from-json {args.from_json}: {e}", file=sys.stderr)
            return 2
        paths = runner.write_outputs(raw, args.out)
        print("\n".join(str(p) for p in paths.values()))
        return 0
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces, iptables, tc)", file=sys.stderr)
        return 2
    from bench.figures import FULL, QUICK

    shown = ["python", "-m", "bench", *(["--quick"] if args.quick else []),
             *(["--sections", ",".join(args.sections)] if set(args.sections) != set(SECTIONS) else []),
             "--out", str(args.out)]
    raw = runner.run(QUICK if args.quick else FULL, command=shlex.join(shown), quick=args.quick,
                     log=lambda s: print(s, flush=True), sections=args.sections)
    paths = runner.write_outputs(raw, args.out)
    print(f"bench: done in {raw['meta']['duration_s']:.0f} s")
    print("\n".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
