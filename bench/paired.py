"""Paired rounds for the lumen-vs-eager benchmarks (bench/README.md, "Paired rounds").

On a machine shared with other jobs the load drifts over minutes, so timing all of lumen's
repetitions and then all of eager's compares two different machines. Here the eager side is this
Python process and lumen is a child process serving one measurement per request: each round times
lumen's measurement and eager's seconds apart, alternating which goes first, and the result of a
workload is the median of the per-round ratios with their min-max range.

The child reads one JSON request per line on stdin and answers each with one line on stdout that
starts with REPLY (bench/serve.h); other stdout lines are passed through to stderr. It prints a
first REPLY line, {"ready": ...}, when its set-up is done.
"""
import json
import random
import statistics
import subprocess
import sys
import time

REPLY = "@@ "
SETTLE_S = 0.1  # between the two sides: lets the other process's BLAS threads stop spinning


class Server:
    """A lumen bench process (bench_sae serve, bench_engine serve)."""

    def __init__(self, argv, env=None):
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self.ready = self._reply()

    def _reply(self):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                code = self.proc.wait()
                raise RuntimeError(f"{self.argv[0]} exited ({code}) before answering")
            if line.startswith(REPLY):
                r = json.loads(line[len(REPLY):])
                if "error" in r:
                    raise RuntimeError(f"{self.argv[0]}: {r['error']}")
                return r
            sys.stderr.write(line)

    def call(self, op, **args):
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait()


def rounds(n, lumen, eager, settle=SETTLE_S):
    """n rounds of (lumen(r), eager(r)), lumen first in even rounds and eager first in odd ones.
    Returns the two lists of what the calls returned, in round order (eager's is empty when eager
    is None: lumen alone)."""
    lu, ea = [], []
    if eager is None:
        return [lumen(r) for r in range(n)], ea
    for r in range(n):
        first, second = (lumen, eager) if r % 2 == 0 else (eager, lumen)
        a = first(r)
        time.sleep(settle)
        b = second(r)
        time.sleep(settle)
        lu.append(a if r % 2 == 0 else b)
        ea.append(b if r % 2 == 0 else a)
    return lu, ea


def median_ci(xs, level=0.95, resamples=4000, seed=0):
    """Percentile bootstrap interval of the median of xs (seeded, so a report reproduces)."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(resamples))
    lo = meds[int((1 - level) / 2 * resamples)]
    hi = meds[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


def summary(lumen, eager):
    """Per-round rates (higher is faster) of both sides -> medians and the per-round ratios
    lumen/eager: their median, min-max range and, from 5 rounds on, a 95% bootstrap interval of
    the median: how far the noise of this run leaves the median uncertain."""
    ratios = [a / b for a, b in zip(lumen, eager) if a and b]
    out = {"lumen": lumen, "eager": eager, "lumen_median": statistics.median(lumen) if lumen else None,
           "eager_median": statistics.median(eager) if eager else None, "ratios": ratios}
    if ratios:
        out.update(ratio_median=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))
    if len(ratios) >= 5:
        out["ratio_ci"] = median_ci(ratios)
    return out


def fmt_ratio(s):
    """'1.23× (1.10–1.31)' from a summary, with '; CI 1.15–1.28' when it has the median's
    interval; '—' without ratios."""
    if not s or s.get("ratio_median") is None:
        return "—"
    ci = s.get("ratio_ci")
    tail = f"; CI {ci[0]:.2f}–{ci[1]:.2f}" if ci else ""
    return f"{s['ratio_median']:.2f}× ({s['ratio_min']:.2f}–{s['ratio_max']:.2f}{tail})"


def load_now():
    """The 1-minute load average, for the report's header."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None
