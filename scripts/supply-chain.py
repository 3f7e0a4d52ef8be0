#!/usr/bin/env python3
"""Supply-chain checks that work offline, run by scripts/test.sh.

  scripts/supply-chain.py              # check this tree
  scripts/supply-chain.py --self-test  # prove each check can fail

1. Dependencies, by the license, ban and source rules of deny.toml (the
   cargo-deny format, so `cargo deny check` applies the same policy where it
   is installed): every crate's SPDX expression is satisfiable by the allowed
   licenses; no crate is in two versions unless deny.toml skips it with a
   reason (and no skip is stale); no wildcard requirements; every crate comes
   from crates.io. Advisories need the RustSec database, which is a git
   repository this machine cannot reach: not checked here.
2. The Dockerfile: every base image is pinned by digest.
"""

import json
import re
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def spdx_allowed(expr, allow):
    """Whether the SPDX expression can be met with the allowed licenses."""
    tokens = re.findall(r"\(|\)|[^\s()/]+|/", expr.replace(" / ", " OR "))
    pos = 0

    def atom():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            value = disjunction()
            pos += 1  # ")"
            return value
        lic = tok
        if pos + 1 < len(tokens) and tokens[pos] == "WITH":
            lic = f"{tok} WITH {tokens[pos + 1]}"
            pos += 2
        return lic in allow

    def conjunction():
        nonlocal pos
        value = atom()
        while pos < len(tokens) and tokens[pos] == "AND":
            pos += 1
            value = atom() and value
        return value

    def disjunction():
        nonlocal pos
        value = conjunction()
        while pos < len(tokens) and tokens[pos] in ("OR", "/"):
            pos += 1
            value = conjunction() or value
        return value

    try:
        ok = disjunction()
    except IndexError:
        return False
    return ok and pos == len(tokens)


def check_dependencies(meta, policy):
    """Problems with the resolved dependency graph, as lines."""
    allow = set(policy["licenses"]["allow"])
    skips = {s["crate"]: s.get("reason", "") for s in policy["bans"].get("skip", [])}
    workspace = set(meta["workspace_members"])
    used = {n["id"] for n in meta["resolve"]["nodes"]}
    packages = [p for p in meta["packages"] if p["id"] in used]
    problems = []
    versions = defaultdict(list)
    for p in packages:
        name = f"{p['name']}@{p['version']}"
        versions[p["name"]].append(p["version"])
        if p["id"] in workspace:
            for d in p["dependencies"]:
                if d["req"].strip() == "*":
                    problems.append(f"bans: {p['name']} depends on {d['name']} = \"*\"")
            continue
        lic = p.get("license")
        if not lic:
            problems.append(f"licenses: {name} has no SPDX license expression")
        elif not spdx_allowed(lic, allow):
            problems.append(f"licenses: {name} is {lic!r}, not allowed by deny.toml")
        if p.get("source") != CRATES_IO:
            problems.append(f"sources: {name} comes from {p.get('source')}, not crates.io")
    duplicated = set()
    for crate, vs in versions.items():
        if len(vs) < 2:
            continue
        for v in sorted(vs):
            key = f"{crate}@{v}"
            duplicated.add(key)
        # One version may stay unskipped: the one most dependents use.
        unskipped = [v for v in vs if f"{crate}@{v}" not in skips]
        if len(unskipped) > 1:
            problems.append(
                f"bans: {crate} is in versions {', '.join(sorted(vs))}; "
                "remove the duplicate or add a skip with a reason to deny.toml"
            )
    for key in skips:
        if key not in duplicated:
            problems.append(f"bans: deny.toml skips {key}, which is no longer a duplicate")
    return problems


def check_dockerfile(text):
    """Base images not pinned by digest, as lines."""
    problems = []
    stages = set()
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.lower().startswith("# syntax="):
            if not DIGEST.search(s):
                problems.append(f"Dockerfile:{n}: syntax image not pinned by digest")
            continue
        words = s.split()
        if not words or words[0].upper() != "FROM":
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        image = args[0]
        if len(args) >= 3 and args[1].upper() == "AS":
            stages.add(args[2].lower())
        if image.lower() in stages or image == "scratch":
            continue
        if not DIGEST.search(image):
            problems.append(f"Dockerfile:{n}: {image} is not pinned by digest (@sha256:...)")
    return problems


def metadata():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked",
         "--filter-platform", "x86_64-unknown-linux-gnu",
         "--filter-platform", "aarch64-unknown-linux-gnu"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def self_test():
    allow = {"MIT", "Apache-2.0", "Apache-2.0 WITH LLVM-exception"}
    cases = [
        ("MIT", True), ("GPL-3.0", False), ("MIT OR GPL-3.0", True),
        ("MIT AND GPL-3.0", False), ("(MIT OR Apache-2.0) AND GPL-2.0", False),
        ("MIT/Apache-2.0", True), ("Apache-2.0 WITH LLVM-exception", True),
        ("GPL-2.0 WITH Classpath-exception-2.0", False), ("MIT AND (", False),
    ]
    for expr, want in cases:
        assert spdx_allowed(expr, allow) == want, f"{expr!r} should be {want}"

    def pkg(name, version, lic="MIT", source=CRATES_IO, deps=()):
        return {"id": f"{name} {version}", "name": name, "version": version,
                "license": lic, "source": source,
                "dependencies": [{"name": d, "req": r} for d, r in deps]}

    def meta(*packages, members=("app 0.1.0",)):
        return {"packages": list(packages), "workspace_members": list(members),
                "resolve": {"nodes": [{"id": p["id"]} for p in packages]}}

    policy = {"licenses": {"allow": ["MIT"]}, "bans": {"skip": []}}
    app = pkg("app", "0.1.0", source=None)
    assert check_dependencies(meta(app, pkg("a", "1.0.0")), policy) == []
    bad = [
        meta(app, pkg("a", "1.0.0", lic="GPL-3.0")),
        meta(app, pkg("a", "1.0.0", lic=None)),
        meta(app, pkg("a", "1.0.0", source="git+https://example.com/a")),
        meta(app, pkg("a", "1.0.0"), pkg("a", "2.0.0")),
        meta(pkg("app", "0.1.0", source=None, deps=[("a", "*")]), pkg("a", "1.0.0")),
    ]
    for m in bad:
        assert check_dependencies(m, policy), f"not caught: {m['packages'][-1]}"
    skipped = {"licenses": {"allow": ["MIT"]}, "bans": {"skip": [{"crate": "a@1.0.0"}]}}
    assert check_dependencies(meta(app, pkg("a", "1.0.0"), pkg("a", "2.0.0")), skipped) == []
    assert check_dependencies(meta(app, pkg("a", "2.0.0")), skipped), "stale skip not caught"

    pinned = "FROM rust:1@sha256:" + "a" * 64 + " AS b\nFROM b\nFROM scratch\n"
    assert check_dockerfile(pinned) == []
    assert check_dockerfile("FROM debian:12\n"), "unpinned FROM not caught"
    assert check_dockerfile("# syntax=docker/dockerfile:1\nFROM scratch\n"), "syntax not caught"
    assert check_dockerfile("FROM --platform=$B rust:1 AS x\n"), "FROM --platform not caught"
    print("supply-chain: self-test passed")


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return 0
    policy = tomllib.loads((ROOT / "deny.toml").read_text())
    problems = check_dependencies(metadata(), policy)
    problems += check_dockerfile((ROOT / "Dockerfile").read_text())
    for p in problems:
        print(f"supply-chain: {p}", file=sys.stderr)
    if problems:
        return 1
    print("supply-chain: licenses, duplicate versions, sources and base-image digests OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
