#!/usr/bin/env python3
"""Canary rollout for weft: raise a canary's split weight step by step by
editing the config file (weft reloads it on change), and roll back when the
canary's recent error rate exceeds the stable cluster's by more than a
threshold. Standard library only.

How it decides: after each step it waits `--interval` seconds, then reads
`/clusters` from weft's admin server. Each cluster reports `recent`: error
rate (no response or 5xx) and p50/p90/p99 latency over the last minute (at
most 1024 attempts). The step holds when the canary has seen at least
`--min-requests` requests and

    canary.error_rate - stable.error_rate <= --threshold
    (and, with --max-p99-ratio, canary.p99_ms <= ratio * stable.p99_ms)

otherwise the script sets the canary's weight to 0 (stable 100), waits for
weft to apply it, and exits with status 1. With a sticky split (`sticky:`
next to `split:`), each step moves only the newly added share of users to
the canary; nobody flips back and forth.

The config edit is line-based: the route's split entries must be written
one per line in flow style, `- { cluster: NAME, weight: N }`, as in
examples/migration.yaml. The file is replaced atomically (write, then
rename), so weft never reads half a file; the script then checks `/config`
until weft serves the new weights (a refused reload is an error).

Example:

    python3 examples/rollout.py --config examples/migration.yaml \\
        --route web --stable web-stable --canary web-next \\
        --steps 5,25,50,100 --interval 120 --threshold 0.01
"""

import argparse
import json
import os
import re
import sys
import tempfile
import time
import urllib.request


def fetch_json(admin, path):
    with urllib.request.urlopen(admin.rstrip("/") + path, timeout=5) as response:
        return json.load(response)


def set_weights(text, route, weights):
    """Returns `text` with the split weights of `route` set to `weights`
    ({cluster: weight}); raises ValueError if an entry is not found."""
    lines = text.splitlines(keepends=True)
    start = next(
        (i for i, l in enumerate(lines) if re.match(r"\s*-?\s*name:\s*%s\s*$" % re.escape(route), l)),
        None,
    )
    if start is None:
        raise ValueError("no route named %r" % route)
    indent = len(lines[start]) - len(lines[start].lstrip(" -"))
    found = set()
    for i in range(start + 1, len(lines)):
        line = lines[i]
        stripped = line.lstrip(" ")
        # The next route (or section) at the same or lower indentation ends this one.
        if stripped.startswith("- name:") and len(line) - len(line.lstrip(" -")) <= indent:
            break
        for cluster, weight in weights.items():
            if re.search(r"cluster:\s*%s\s*," % re.escape(cluster), line) and "weight:" in line:
                lines[i] = re.sub(r"(weight:\s*)\d+", r"\g<1>%d" % weight, line)
                found.add(cluster)
    missing = set(weights) - found
    if missing:
        raise ValueError("route %r has no one-line split entry for %s" % (route, ", ".join(sorted(missing))))
    return "".join(lines)


def write_atomically(path, text):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".rollout-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, os.stat(path).st_mode)
    os.replace(tmp, path)


def served_weights(admin, route):
    for listener in fetch_json(admin, "/config").get("listeners", []):
        for r in listener.get("routes") or []:
            if r.get("name") == route and r.get("split"):
                return {s["cluster"]: s["weight"] for s in r["split"]}
    return None


def apply(args, canary_weight):
    weights = {args.canary: canary_weight, args.stable: 100 - canary_weight}
    with open(args.config) as f:
        text = f.read()
    write_atomically(args.config, set_weights(text, args.route, weights))
    deadline = time.time() + args.reload_timeout
    while time.time() < deadline:
        served = served_weights(args.admin, args.route) or {}
        if all(served.get(c) == w for c, w in weights.items()):
            print("weights now %s" % weights, flush=True)
            return
        time.sleep(0.5)
    raise RuntimeError("weft did not apply %s within %ss (see its log: reload refused?)" % (weights, args.reload_timeout))


def recent(admin, cluster):
    for c in fetch_json(admin, "/clusters"):
        if c["name"] == cluster:
            return c["recent"]
    raise RuntimeError("no cluster named %r on /clusters" % cluster)


def verdict(args, stable, canary):
    """None if the canary is healthy enough, else the reason it is not."""
    if canary["requests"] < args.min_requests:
        return None
    excess = canary["error_rate"] - stable["error_rate"]
    if excess > args.threshold:
        return "canary error rate %.4f exceeds stable %.4f by more than %.4f" % (
            canary["error_rate"], stable["error_rate"], args.threshold)
    if args.max_p99_ratio and stable.get("p99_ms") and canary.get("p99_ms"):
        if canary["p99_ms"] > args.max_p99_ratio * stable["p99_ms"]:
            return "canary p99 %.1f ms is over %.1fx stable's %.1f ms" % (
                canary["p99_ms"], args.max_p99_ratio, stable["p99_ms"])
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the weft config file to edit")
    p.add_argument("--route", required=True, help="name of the route with the split")
    p.add_argument("--stable", required=True, help="stable cluster name")
    p.add_argument("--canary", required=True, help="canary cluster name")
    p.add_argument("--admin", default="http://127.0.0.1:9901", help="weft admin URL")
    p.add_argument("--steps", default="1,5,10,25,50,100", help="canary weights in percent, in order")
    p.add_argument("--interval", type=float, default=60, help="seconds to watch each step")
    p.add_argument("--threshold", type=float, default=0.01, help="allowed error-rate excess of the canary")
    p.add_argument("--min-requests", type=int, default=20, help="canary requests needed to judge a step")
    p.add_argument("--max-p99-ratio", type=float, default=0, help="also roll back if canary p99 > ratio x stable p99")
    p.add_argument("--reload-timeout", type=float, default=10, help="seconds to wait for weft to apply an edit")
    args = p.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    if any(not 0 <= s <= 100 for s in steps):
        p.error("steps are percentages between 0 and 100")

    for step in steps:
        apply(args, step)
        time.sleep(args.interval)
        stable, canary = recent(args.admin, args.stable), recent(args.admin, args.canary)
        print("step %d%%: stable %s, canary %s" % (step, json.dumps(stable), json.dumps(canary)), flush=True)
        reason = verdict(args, stable, canary)
        if reason:
            print("rolling back: " + reason, flush=True)
            apply(args, 0)
            return 1
    print("rollout complete: %s at %d%%" % (args.canary, steps[-1] if steps else 0), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, RuntimeError, OSError) as e:
        print("rollout: %s" % e, file=sys.stderr)
        sys.exit(2)
