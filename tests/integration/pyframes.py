# SPDX-License-Identifier: MIT
"""What the unwind-python tests expect of the Python fixtures
(tests/fixtures/unwind-python) and how they read Python frames out of a
profile: shared by test_unwind_python and test_unwind_python_versions."""
import os
import re

from sondetest import fail


def marks(path, pattern):
    """{mark: line} of the lines of path holding `pattern` (a regex with one
    group, the mark)."""
    out = {}
    with open(path) as f:
        for i, line in enumerate(f, 1):
            m = re.search(pattern, line)
            if m:
                out[m.group(1)] = i
    return out


# Expected Python chains, innermost first: (function, file, line or None).
def want_chain(chain_py):
    """chain.py: functions, a method, a closure; the leaf at its busy line."""
    leaf = marks(chain_py, r"# (LEAF LINE)")["LEAF LINE"]
    return [("leaf", chain_py, leaf)] + [
        (f, chain_py, None) for f in ("outer.<locals>.inner", "outer", "Walker.step", "main",
                                      "<module>")]


def want_deep(deep_py):
    """deep.py: also a generator and a recursion 10 deep, every frame at the
    line it is at (marked in the file)."""
    at = marks(deep_py, r"# AT (\S+)$")
    return ([("leaf", deep_py, at["leaf"]), ("recurse", deep_py, at["recurse-last"])] +
            [("recurse", deep_py, at["recurse"])] * 9 +
            [(f, deep_py, at[f]) for f in ("ticks", "consume", "outer.<locals>.inner", "outer",
                                           "Walker.step", "main", "<module>")])


def python_frames(profile, s):
    """(function, file, line) of sample s's Python frames, innermost first."""
    out = []
    for lid in s["locations"]:
        loc = profile.locations[lid]
        if profile.mappings.get(loc["mapping"], {}).get("file") == "[python]":
            out += loc["lines"]
    return out


def matches(frames, want):
    return len(frames) == len(want) and all(
        f == wf and fl == wfl and (wl is None or l == wl)
        for (f, fl, l), (wf, wfl, wl) in zip(frames, want))


def show(want):
    leaf = want[0]
    return f"{' <- '.join(f for f, _, _ in want)} ({os.path.basename(leaf[1])}:{leaf[2]})"


def check_chain(profile, samples, key, want, minimum):
    """Fails unless at least `minimum` of samples were taken and 95% of them
    show the Python chain want; the report line otherwise."""
    good = total = 0
    bad = []
    for s in samples:
        total += s["count"]
        frames = python_frames(profile, s)
        if matches(frames, want):
            good += s["count"]
        elif len(bad) < 5:
            bad.append(frames or [f for f, _ in profile.frames(s)][:12])
    if total < minimum or good < 0.95 * total:
        fail(f"{key}: {good} of {total} samples show {want}; others: {bad}")
    return f"{key}: {good}/{total} show {show(want)}"
