"""The command line: a thin shell over the library.

    python -m minibert4rec gradcheck [--json]
    python -m minibert4rec --help            (every command has its own --help)

Bad input never shows a Python traceback: the command prints one line naming
the problem (file and line for data files) and exits with status 2. Add
``--debug`` (before the command) to see the traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import InputError


def cmd_gradcheck(args) -> int:
    from .gradcheck import suite
    results = suite(seed=args.seed)
    failed = [r for r in results if not r.passed]
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=1))
    else:
        print(f"{'component':42s} {'tensor':13s} {'max rel error':>13s}  result")
        for r in results:
            print(f"{r.component:42s} {r.tensor:13s} {r.max_rel_error:13.2e}  "
                  f"{'pass' if r.passed else 'FAIL'}")
        parts = sorted({r.component.split(" ")[0] for r in results if r.component[0].isdigit()}, key=int)
        print(f"\n{len(results)} gradients in {len(parts)} layer parts + the whole model: "
              f"{len(results) - len(failed)} passed, {len(failed)} failed "
              f"(max relative error {max(r.max_rel_error for r in results):.1e})")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m minibert4rec",
                                 description="BERT4Rec from scratch in NumPy.")
    ap.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("gradcheck", help="finite-difference check of every layer and the model",
                       description="Check every hand-written backward against centred finite "
                                   "differences (float64, random upstream gradient); exit 1 if any fails.")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of {component, tensor, max_rel_error, passed}")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.set_defaults(func=cmd_gradcheck)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (InputError, FileNotFoundError) as e:
        if args.debug:
            raise
        msg = str(e) if isinstance(e, InputError) or not e.filename else f"{e.filename}: file not found"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:          # e.g. `... | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
