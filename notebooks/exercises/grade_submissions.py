"""Grade students' backward passes from the command line, one JSON line per submission.

    python notebooks/exercises/grade_submissions.py submissions/*.py > grades.jsonl
    python notebooks/exercises/grade_submissions.py alice.py --seeds 0 1 2 --timeout 300

A submission is a Python file that defines some of the exercises' functions under
their stub names: ``<name>_backward(dout, cache)`` for a name of
``minibert4rec.gradcheck.GRADE_NAMES`` (linear, gelu, dropout, layernorm, softmax,
...) and, if the student changed it, ``<name>_forward``. Every backward is graded
with ``gradcheck.grade`` for each seed (with the submission's forward when it has
one, as the exercise notebooks do).

Each submission runs in its own Python process, without MINIBERT4REC_SOLUTIONS,
with no input, and is stopped (its whole process group) at the time limit, so one
submission can neither stall the batch nor change another's grade. The process
runs the student's code, so it does not stop a submission from tampering with its
own grading: ``grade`` checks that gradients are right, not who derived them or
how (a file that calls the library's own backward passes). Read the code.

Output, one line per submission, in the order given:

    {"submission": path, "passed": {name: bool, ...},
     "grades": {name: [grade(...).as_dict() for each seed], ...}, "error": null or one line}
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile


def grade_here(path: str, seeds: list[int]) -> dict:
    """Import the submission in THIS process and grade every backward it defines."""
    from minibert4rec.gradcheck import GRADE_NAMES, grade

    spec = importlib.util.spec_from_file_location("submission", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    grades = {}
    for name in GRADE_NAMES:
        backward = getattr(module, f"{name}_backward", None)
        forward = getattr(module, f"{name}_forward", None)
        if callable(backward):
            forward = forward if callable(forward) else None
            grades[name] = [grade(name, backward, forward=forward, seed=s).as_dict() for s in seeds]
    return {"passed": {n: all(g["passed"] for g in gs) for n, gs in grades.items()},
            "grades": grades}


def _last_line(data: bytes) -> str:
    lines = data.decode("utf-8", errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"


def grade_in_a_process(path: str, seeds: list[int], timeout: float) -> dict:
    """Grade one submission in a fresh Python process; never raises for a bad submission."""
    result = {"submission": path, "passed": {}, "grades": {}, "error": None}
    if not path.endswith(".py") or not os.path.isfile(path):
        result["error"] = ("not a Python file (.py)" if os.path.isfile(path)
                           else "no such file")
        return result
    env = {k: v for k, v in os.environ.items() if k != "MINIBERT4REC_SOLUTIONS"}
    env["MPLBACKEND"] = "Agg"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")       # the grades travel here, not on stdout
        command = [sys.executable, os.path.abspath(__file__), "--child", out, path,
                   "--seeds", *map(str, seeds)]
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)      # the child and anything it started
            proc.communicate()
            result["error"] = f"stopped after the time limit of {timeout:g} s"
            return result
        try:
            with open(out, encoding="utf-8") as f:
                graded = json.load(f)
            passed, grades = graded["passed"], graded["grades"]
            if not (isinstance(passed, dict) and isinstance(grades, dict)):
                raise TypeError("not a result")
        except (OSError, ValueError, KeyError, TypeError):
            result["error"] = (f"the submission could not be graded (exit status "
                               f"{proc.returncode}): {_last_line(err)}")
            return result
    result["passed"], result["grades"] = passed, grades
    if not passed:
        result["error"] = "it defines none of the exercises' <name>_backward functions"
    return result


def _seed(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed is an integer >= 0, got {text}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("submissions", nargs="+", help="Python files defining <name>_backward")
    parser.add_argument("--seeds", type=_seed, nargs="+", default=[0, 1, 2],
                        help="grade with each of these seeds (default: 0 1 2)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds per submission (default: 300)")
    parser.add_argument("--child", metavar="RESULT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        graded = grade_here(args.submissions[0], args.seeds)
        with open(args.child, "w", encoding="utf-8") as f:
            json.dump(graded, f, allow_nan=False)
        return 0
    for path in args.submissions:
        print(json.dumps(grade_in_a_process(path, args.seeds, args.timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
