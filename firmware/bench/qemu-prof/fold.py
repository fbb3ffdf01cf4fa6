#!/usr/bin/env python3
"""Folds tbprof.c output into executed instructions per function, per inference.

usage: fold.py EXE BASE ONE.log MANY.log RUNS_IN_MANY [TOP]
Instructions per inference = (MANY - ONE) / (RUNS_IN_MANY - 1); blocks outside EXE's
symbols (libc, the loader) are summed per 1 MiB region.
"""
import bisect
import collections
import subprocess
import sys


def symbols(exe):
    out = subprocess.run(
        ["aarch64-linux-gnu-nm", "-C", "--defined-only", "-S", exe],
        check=True, capture_output=True, text=True).stdout
    spans = []
    for line in out.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and len(parts[2]) == 1 and parts[2] in "tTwW":
            spans.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
        elif len(parts) >= 3 and len(parts[1]) == 1 and parts[1] in "tTwW":
            # No size (assembly): `addr type name`.
            spans.append((int(parts[0], 16), 0, " ".join(parts[2:])))
    spans.sort()
    # Assembly kernels often have no size: let them run to the next symbol.
    for i, (start, size, name) in enumerate(spans):
        if size == 0 and i + 1 < len(spans):
            spans[i] = (start, spans[i + 1][0] - start, name)
    return spans


def fold(log, spans, starts, base):
    per = collections.Counter()
    for line in open(log):
        if not line.startswith("TB "):
            continue
        _, vaddr, insns = line.split()
        addr = int(vaddr, 16) - base
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and addr < spans[i][0] + max(spans[i][1], 1):
            per[spans[i][2]] += int(insns)
        else:
            per["[outside the binary @ %x]" % ((int(vaddr, 16) >> 20) << 20)] += int(insns)
    return per


def short(name):
    """`<edgedx_engine::epilogue::Requantize as tract_core::ops::EvalOp>::eval` becomes
    `Requantize::eval`; generic arguments are dropped so instances add up."""
    if name.startswith("<") and " as " in name:
        depth = 0
        for i, ch in enumerate(name):
            depth += ch == "<"
            depth -= ch == ">"
            if depth == 0:
                inner, rest = name[1:i], name[i + 1:]
                break
        else:
            inner, rest = name, ""
        own = inner.split(" as ")[0]
        return short(own).split("::")[-1] + rest
    depth, out = 0, []
    for ch in name:
        if ch == "<":
            depth += 1
            continue
        if ch == ">":
            depth -= 1
            continue
        if depth == 0:
            out.append(ch)
    return "".join(out)


def main():
    exe, base, one, many, runs = sys.argv[1:6]
    top = int(sys.argv[6]) if len(sys.argv) > 6 else 25
    spans = symbols(exe)
    starts = [s[0] for s in spans]
    base = int(base, 16)
    a = fold(one, spans, starts, base)
    b = fold(many, spans, starts, base)
    n = int(runs) - 1
    per = collections.Counter()
    for name in set(a) | set(b):
        per[short(name)] += (b[name] - a[name]) / n
    total = sum(per.values())
    print("| instructions / inference | share | function |")
    print("|---|---|---|")
    for name, count in per.most_common(top):
        print("| %.0f | %.1f %% | `%s` |" % (count, 100 * count / total, name[:150]))
    print("| %.0f | 100 %% | total |" % total)


main()
