#!/usr/bin/env bash
# Checks the monitoring component (daemonset/components/monitoring):
# - the PrometheusRule's spec, extracted (it is the only copy), with
#   `promtool check rules`, and its alerts with `promtool test rules` on
#   tests/prometheus/*.test.yaml;
# - that every alert has a firing and a not-firing case there, and a
#   runbook in the README (a "#### <AlertName>" heading);
# - that the dashboard JSON parses, asks for its data source as the
#   ${datasource} variable, and every panel has a query and a description.
# promtool comes from scripts/setup.sh (.tools/promtool-trixie); PyYAML from
# .tools/venv (installed on first use).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PREWARM_VENV:-$ROOT/.tools/venv}"
PROMTOOL="${PROMTOOL:-$ROOT/.tools/promtool-trixie/usr/bin/promtool}"
COMPONENT="$ROOT/daemonset/components/monitoring"
[ -x "$PROMTOOL" ] || { echo "test-monitoring: no promtool at $PROMTOOL; run scripts/setup.sh" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import yaml' 2>/dev/null || "$VENV/bin/pip" install -q --disable-pip-version-check "PyYAML==6.0.2"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$ROOT"/tests/prometheus/*.test.yaml "$work/"
"$VENV/bin/python" - "$COMPONENT/prometheusrule.yaml" "$work/rules.yaml" "$ROOT/README.md" "$work" \
  "$COMPONENT/dashboards/prewarm.json" <<'PY'
import glob, json, os, re, sys, yaml
rule_file, out, readme, work, dashboard = sys.argv[1:]
rule = yaml.safe_load(open(rule_file))
assert rule["kind"] == "PrometheusRule", f"{rule_file}: kind {rule['kind']}"
yaml.safe_dump({"groups": rule["spec"]["groups"]}, open(out, "w"), sort_keys=False)
alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
firing, quiet = set(), set()
for f in glob.glob(os.path.join(work, "*.test.yaml")):
    for t in yaml.safe_load(open(f))["tests"]:
        for case in t.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
text = open(readme).read()
errors = []
for a in alerts:
    if a not in firing:
        errors.append(f"{a}: no promtool case where it fires")
    if a not in quiet:
        errors.append(f"{a}: no promtool case where it stays quiet")
    if not re.search(rf"^#### {a}$", text, re.M):
        errors.append(f"{a}: no runbook heading '#### {a}' in README.md")
for a in firing | quiet:
    if a not in alerts:
        errors.append(f"tests name {a}, which the PrometheusRule does not have")
d = json.load(open(dashboard))
names = [v["name"] for v in d["templating"]["list"]]
if "datasource" not in names or next(v for v in d["templating"]["list"] if v["name"] == "datasource")["query"] != "prometheus":
    errors.append("dashboard: no datasource variable of type prometheus")
for p in d["panels"]:
    if not p.get("description"):
        errors.append(f"dashboard: panel {p['title']!r} has no description")
    if p["type"] == "row":
        continue
    if p.get("datasource", {}).get("uid") != "${datasource}":
        errors.append(f"dashboard: panel {p['title']!r} does not use ${{datasource}}")
    if not p.get("targets") or not all(t.get("expr") for t in p["targets"]):
        errors.append(f"dashboard: panel {p['title']!r} has no query")
for e in errors:
    print(f"test-monitoring: {e}", file=sys.stderr)
print(f"test-monitoring: {len(alerts)} alerts, {sum(p['type'] != 'row' for p in d['panels'])} panels")
sys.exit(1 if errors else 0)
PY
"$PROMTOOL" check rules "$work/rules.yaml"
(cd "$work" && "$PROMTOOL" test rules ./*.test.yaml)
echo "test-monitoring: OK"
