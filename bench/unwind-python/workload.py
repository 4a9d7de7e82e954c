# SPDX-License-Identifier: MIT
"""The Python load bench/unwind-python runs: a stack DEPTH Python frames deep
(<module>, main, f1 ... f(DEPTH - 3), leaf: distinct functions, each its own
code object, so that no walker cache of a recursion flatters the figure)
whose leaf does pure-Python arithmetic, either for SECONDS or for a fixed
amount of WORK (rounds of 100,000 additions).
Usage: workload.py DEPTH seconds SECONDS | workload.py DEPTH work ROUNDS"""
import sys
import time


def leaf(mode, amount):
    x = 0
    if mode == "seconds":
        deadline = time.monotonic() + amount
        while time.monotonic() < deadline:
            for i in range(100000):
                x += i
    else:
        for _ in range(int(amount)):
            for i in range(100000):
                x += i
    return x


def chain(n):
    """f1 ... fn, fk calling fk+1 and fn calling leaf; returns f1."""
    ns = {"leaf": leaf}
    for k in range(n, 0, -1):
        callee = "leaf" if k == n else f"f{k + 1}"
        exec(compile(f"def f{k}(mode, amount):\n    return {callee}(mode, amount)\n",
                     __file__, "exec"), ns)
    return ns["f1"] if n else leaf


def main():
    depth, mode, amount = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    if depth < 3 or mode not in ("seconds", "work"):
        raise SystemExit(__doc__)
    return chain(depth - 3)(mode, amount)


main()
