"""What the load generators (gen-load.py, rerank-load.py, embed-mix-load.py) share: the
percentile they report and a server's peak RSS. Standard library only; imported from the
scripts' own directory, which Python puts first on the module path."""


def percentile(values, q):
    """The nearest-rank q-th percentile of `values` (NaN when there are none)."""
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(q / 100 * (len(values) - 1)))))
    return values[k]


def peak_rss_mb(pid):
    """The peak resident set (VmHWM) of process `pid` in MiB, NaN when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
