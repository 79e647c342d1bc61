"""Grade students' backward passes from the command line, one JSON line per submission.

    python notebooks/exercises/grade_submissions.py submissions/*.py > grades.jsonl
    python notebooks/exercises/grade_submissions.py alice.py --seeds 0 1 2 --timeout 300

A submission is a Python file that defines some of the exercises' functions under
their stub names, ``<name>_backward(dout, cache)`` for a name of
``minibert4rec.gradcheck.GRADE_NAMES`` (linear, gelu, dropout, layernorm, softmax,
...). Every such function is graded with ``gradcheck.grade`` for each seed.

Each submission runs in its own Python process, with a time limit and without
MINIBERT4REC_SOLUTIONS: its code runs on import, and a separate process keeps it
from changing the grader or another student's result. Output per submission:

    {"submission": path, "passed": {name: bool}, "grades": {name: [grade(...).as_dict(), ...]},
     "uses_minibert4rec": bool, "error": null or one line}

``uses_minibert4rec`` is true when the file's text names the library: ``grade``
checks that gradients are right, not who derived them, so a submission that calls
the library's own backward (or its finite differences) passes; look at those.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys


def grade_here(path: str, seeds: list[int]) -> dict:
    """Import the submission in THIS process and grade every backward it defines."""
    from minibert4rec.gradcheck import GRADE_NAMES, grade

    spec = importlib.util.spec_from_file_location("submission", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    grades = {}
    for name in GRADE_NAMES:
        backward = getattr(module, f"{name}_backward", None)
        if callable(backward):
            grades[name] = [grade(name, backward, seed=s).as_dict() for s in seeds]
    return {"passed": {n: all(g["passed"] for g in gs) for n, gs in grades.items()},
            "grades": grades}


def grade_in_a_process(path: str, seeds: list[int], timeout: float) -> dict:
    """Grade one submission in a fresh Python process; never raises for a bad submission."""
    with open(path, encoding="utf-8", errors="replace") as f:
        uses_library = "minibert4rec" in f.read()
    result = {"submission": path, "passed": {}, "grades": {}, "uses_minibert4rec": uses_library,
              "error": None}
    env = {k: v for k, v in os.environ.items() if k != "MINIBERT4REC_SOLUTIONS"}
    env["MPLBACKEND"] = "Agg"
    command = [sys.executable, os.path.abspath(__file__), "--child", path,
               "--seeds", *map(str, seeds)]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        result["error"] = f"stopped after the time limit of {timeout:g} s"
        return result
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        result["error"] = f"the submission could not be graded: {last}"
        return result
    result.update(json.loads(lines[-1]))       # the child's last line; the rest is its prints
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("submissions", nargs="+", help="Python files defining <name>_backward")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="grade with each of these seeds (default: 0 1 2)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds per submission (default: 300)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(grade_here(args.submissions[0], args.seeds), allow_nan=False))
        return 0
    for path in args.submissions:
        print(json.dumps(grade_in_a_process(path, args.seeds, args.timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
