#!/usr/bin/env python3
"""Evaluates the pod-write-guard ValidatingAdmissionPolicy on sample requests.

  .tools/venv/bin/python scripts/test-pod-write-guard.py

The policy (daemonset/components/pod-write-guard/policy.yaml) is evaluated
with cel-python, as the API server would: match conditions, then variables,
then validations, on the old and new pod of an UPDATE. The gate's own
release patches come from tests/fixtures/pod-write-guard/ (a Rust unit test
keeps them equal to what the coordinator sends); the attacks are what a
compromised coordinator could try with `patch pods`. cel-python is not the
API server's CEL (no Kubernetes extension libraries, which the policy does
not use): this proves the expressions' logic, not their admission by a real
server.
"""

import copy
import json
import sys
from pathlib import Path

import celpy
import yaml

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "daemonset/components/pod-write-guard/policy.yaml"
FIXTURES = ROOT / "tests/fixtures/pod-write-guard"
COORDINATOR = "system:serviceaccount:prewarm-system:prewarm-coordinator"


def pointer(doc, path):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
    for p in parts[:-1]:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    return doc, parts[-1]


def json_patch(doc, ops):
    """RFC 6902 add/remove/replace/test, enough for the gate's patches."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parent, key = pointer(doc, op["path"])
        if isinstance(parent, list):
            index = len(parent) if key == "-" else int(key)
            if op["op"] == "add":
                parent.insert(index, op["value"])
            elif op["op"] == "remove":
                parent.pop(index)
            elif op["op"] == "replace":
                parent[index] = op["value"]
            elif op["op"] == "test" and parent[index] != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
        else:
            if op["op"] in ("add", "replace"):
                parent[key] = op["value"]
            elif op["op"] == "remove":
                del parent[key]
            elif op["op"] == "test" and parent.get(key) != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
    return doc


def merge_patch(doc, patch):
    """RFC 7386, as the leader label is written."""
    if not isinstance(patch, dict):
        return patch
    out = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class Policy:
    def __init__(self, spec):
        self.env = celpy.Environment()
        self.spec = spec

    def run(self, expr, activation):
        program = self.env.program(self.env.compile(expr))
        return program.evaluate(activation)

    def admit(self, user, namespace, old, new):
        """None when admitted, else the message of the failing validation."""
        base = {
            "request": celpy.json_to_cel(
                {"userInfo": {"username": user}, "namespace": namespace, "operation": "UPDATE"}
            ),
            "object": celpy.json_to_cel(new),
            "oldObject": celpy.json_to_cel(old),
        }
        for cond in self.spec.get("matchConditions", []):
            if not bool(self.run(cond["expression"], base)):
                return None
        variables = {}
        for var in self.spec.get("variables", []):
            act = dict(base, variables=celpy.celtypes.MapType(variables))
            variables[celpy.celtypes.StringType(var["name"])] = self.run(var["expression"], act)
        act = dict(base, variables=celpy.celtypes.MapType(variables))
        for v in self.spec["validations"]:
            result = self.run(v["expression"], act)
            if isinstance(result, celpy.CELEvalError) or not bool(result):
                return " ".join(v.get("message", v["expression"]).split())
        return None


def cases():
    pod = json.loads((FIXTURES / "gated-pod.json").read_text())
    patch = {f: json.loads((FIXTURES / f).read_text()) for f in ("release.json", "avoid.json", "ungate.json")}
    released = json_patch(pod, patch["release.json"])
    ns = pod["metadata"]["namespace"]

    def edit(doc, fn):
        doc = copy.deepcopy(doc)
        fn(doc)
        return doc

    replica = {
        "metadata": {"name": "prewarm-coordinator-0", "namespace": "prewarm-system",
                     "labels": {"app.kubernetes.io/component": "coordinator"}},
        "spec": {"containers": [{"name": "coordinator", "image": "ghcr.io/prewarm/prewarm:0.1.0"}]},
    }
    lead = merge_patch(replica, {"metadata": {"labels": {"prewarm.dev/leader": "true"}}})
    yield "release onto warm nodes", COORDINATOR, ns, pod, released, True
    yield "release avoiding cold nodes", COORDINATOR, ns, pod, json_patch(pod, patch["avoid.json"]), True
    yield "release without narrowing", COORDINATOR, ns, pod, json_patch(pod, patch["ungate.json"]), True
    yield "leader label set", COORDINATOR, "prewarm-system", replica, lead, True
    yield "leader label removed", COORDINATOR, "prewarm-system", lead, replica, True
    yield "another user changes an image", "kubernetes-admin", ns, pod, edit(
        pod, lambda p: p["spec"]["containers"][0].update(image="evil.example/x:1")), True

    yield "container image changed", COORDINATOR, ns, pod, edit(
        released, lambda p: p["spec"]["containers"][0].update(image="evil.example/x:1")), False
    yield "init container image changed", COORDINATOR, ns, pod, edit(
        pod, lambda p: p["spec"]["initContainers"][0].update(image="evil.example/x:1")), False
    yield "toleration added", COORDINATOR, ns, pod, edit(
        released, lambda p: p["spec"]["tolerations"].append({"operator": "Exists"})), False
    yield "activeDeadlineSeconds set", COORDINATOR, ns, pod, edit(
        pod, lambda p: p["spec"].update(activeDeadlineSeconds=1)), False
    yield "another gate removed", COORDINATOR, ns, pod, edit(
        released, lambda p: p["spec"].update(schedulingGates=[])), False
    yield "a gate added", COORDINATOR, ns, pod, edit(
        pod, lambda p: p["spec"]["schedulingGates"].append({"name": "x.example/hold"})), False
    yield "affinity of an ungated pod changed", COORDINATOR, ns, released, edit(
        released, lambda p: p["spec"].pop("affinity")), False
    yield "nodeSelector of an ungated pod set", COORDINATOR, ns, released, edit(
        released, lambda p: p["spec"].update(nodeSelector={"k": "v"})), False
    yield "a workload label changed", COORDINATOR, ns, pod, edit(
        released, lambda p: p["metadata"]["labels"].update(app="other")), False
    yield "a workload label removed", COORDINATOR, ns, pod, edit(
        released, lambda p: p["metadata"]["labels"].pop("app")), False
    yield "an annotation added", COORDINATOR, ns, pod, edit(
        released, lambda p: p["metadata"]["annotations"].update(x="y")), False
    yield "leader label outside prewarm-system", COORDINATOR, ns, pod, edit(
        released, lambda p: p["metadata"]["labels"].update({"prewarm.dev/leader": "true"})), False


def main():
    docs = list(yaml.safe_load_all(POLICY.read_text()))
    policy = Policy(next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy")["spec"])
    failed = 0
    for name, user, ns, old, new, allowed in cases():
        refused = policy.admit(user, ns, old, new)
        ok = (refused is None) == allowed
        verdict = "admitted" if refused is None else f"refused: {refused}"
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {verdict}")
        failed += not ok
    if failed:
        print(f"pod-write-guard: {failed} case(s) wrong", file=sys.stderr)
        return 1
    print("pod-write-guard: every case as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
