#!/usr/bin/env python3
"""Checks the Grafana dashboard without Grafana: the JSON is a dashboard Grafana can load
(title, uid, panels with Prometheus targets, no overlapping panels), every PromQL expression has
balanced brackets, and every metric it queries is one the node exports.

What the node exports is read from its source (every `"routemq_..."` name constant in
node/src), or, with --metrics-url, also listed against a running node's /metrics (its TYPE lines).
Histogram series (_bucket, _sum, _count) count as their histogram.

    deploy/grafana/check.py                                   # offline, as CI runs it
    deploy/grafana/check.py --metrics-url http://127.0.0.1:7201/metrics

Exit 0 when everything holds; 1 with one line per problem otherwise.
"""
import argparse
import json
import pathlib
import re
import sys
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\b(routemq_[a-z0-9_]+)")
SUFFIXES = ("_bucket", "_sum", "_count")


def exported_from_source(src: pathlib.Path) -> set:
    names = set()
    for path in src.rglob("*.rs"):
        names.update(re.findall(r'"(routemq_[a-z0-9_]+)"', path.read_text()))
    return names


def exported_from_url(url: str) -> set:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return set(re.findall(r"^# TYPE (routemq_[a-z0-9_]+) ", text, re.M))


def base_name(name: str, known: set) -> str:
    if name in known:
        return name
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in known:
            return name[: -len(suffix)]
    return name


def balanced(expr: str) -> bool:
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    in_string = False
    for ch in expr:
        if ch == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack and not in_string


def check(dashboard: dict, exported: set) -> list:
    problems = []
    for field in ("title", "uid", "panels", "schemaVersion"):
        if field not in dashboard:
            problems.append(f"dashboard has no {field!r}")
    cells = set()
    queried = 0
    for panel in dashboard.get("panels", []):
        title = panel.get("title", "?")
        pos = panel.get("gridPos", {})
        try:
            x, y, w, h = pos["x"], pos["y"], pos["w"], pos["h"]
        except KeyError:
            problems.append(f"panel {title!r}: gridPos needs x, y, w, h")
            continue
        if x + w > 24:
            problems.append(f"panel {title!r}: wider than the 24-column grid")
        for cx in range(x, x + w):
            for cy in range(y, y + h):
                if (cx, cy) in cells:
                    problems.append(f"panel {title!r} overlaps another at column {cx}, row {cy}")
                    break
                cells.add((cx, cy))
            else:
                continue
            break
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"panel {title!r} has no query")
        for target in targets:
            expr = target.get("expr", "")
            if not expr.strip():
                problems.append(f"panel {title!r}: empty expression")
                continue
            if not balanced(expr):
                problems.append(f"panel {title!r}: unbalanced brackets or quotes in {expr!r}")
            names = METRIC.findall(expr)
            if not names:
                problems.append(f"panel {title!r}: {expr!r} queries no routemq metric")
            for name in names:
                queried += 1
                if base_name(name, exported) not in exported:
                    problems.append(f"panel {title!r}: {name} is not a metric the node exports")
    if queried == 0:
        problems.append("the dashboard queries no metric at all")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dashboard", default=str(ROOT / "deploy/grafana/routemq-dashboard.json"))
    parser.add_argument("--source", default=str(ROOT / "node/src"))
    parser.add_argument("--metrics-url", help="also list the queried metrics a running node has not recorded yet")
    args = parser.parse_args()
    try:
        dashboard = json.loads(pathlib.Path(args.dashboard).read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"{args.dashboard}: {e}")
        return 1
    exported = exported_from_source(pathlib.Path(args.source))
    if not exported:
        print(f"no metric names found under {args.source}")
        return 1
    problems = check(dashboard, exported)
    if args.metrics_url:
        # A metric shows on /metrics only once something recorded it (no failover yet, no
        # failover counter): names not seen live are listed, not counted as problems.
        live = exported_from_url(args.metrics_url)
        unseen = sorted({n for n in METRIC.findall(json.dumps(dashboard)) if base_name(n, live) not in live})
        print(f"{args.metrics_url}: {len(live)} routemq metrics; not recorded there yet: {', '.join(unseen) or 'none'}")
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{args.dashboard}: {len(dashboard['panels'])} panels, every queried metric is exported")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
