#!/usr/bin/env python3
"""Validates the Kubernetes manifests of deploy/k8s offline. Run it through validate.sh,
which installs what it imports (kubernetes-validate, cloudcoil.models.prometheus_operator).

1. Every built-in resource against the Kubernetes OpenAPI JSON schemas that
   kubernetes-validate ships, strictly (unknown fields are errors), for the oldest Kubernetes
   the manifests support (1.30: preStop `sleep`) and the newest bundled schema. A kind without
   a schema is an error, not a warning, so a typo in apiVersion or kind cannot slip through.
2. The ServiceMonitor (a CRD) against the prometheus-operator models generated from its CRD
   (types, required fields and enums), plus a check that it has no field the model lacks.
3. Consistency between the files: selectors and labels, ports, the HPA's metric and the
   adapter rule, maxReplicas and the per-pod Services and bootstrap peers, the config and
   routes TOML, the kustomization's resource list.
4. Negative controls: broken copies (unknown field, wrong type, bad enum, unknown CRD field)
   must be rejected, so the checks above cannot pass vacuously.

Prints one line per check and ends with "N passed, N failed"; exits 1 on any failure.
"""

import copy
import pathlib
import sys
import tomllib

import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

HERE = pathlib.Path(__file__).resolve().parent
VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]
NOT_RESOURCES = {"kustomization.yaml", "prometheus-adapter-values.yaml"}

passed = 0
failed = 0


def ok(message):
    global passed
    passed += 1
    print(f"PASS {message}")


def fail(message):
    global failed
    failed += 1
    print(f"FAIL {message}")


def check(condition, message):
    (ok if condition else fail)(message)
    return condition


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


# ---- schemas ---------------------------------------------------------------------------------


def k8s_errors(doc, version):
    """None if `doc` is valid for `version`, else the error; raises SchemaNotFoundError."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
        return None
    except ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "(top)"
        return f"{path}: {e.message}"


def unknown_fields(given, dumped, path=""):
    """Paths present in `given` but absent from the model's dump (fields the model dropped)."""
    out = []
    if isinstance(given, dict):
        for key, value in given.items():
            if not isinstance(dumped, dict) or key not in dumped:
                out.append(f"{path}.{key}".lstrip("."))
            else:
                out.extend(unknown_fields(value, dumped[key], f"{path}.{key}"))
    elif isinstance(given, list) and isinstance(dumped, list):
        for i, (a, b) in enumerate(zip(given, dumped)):
            out.extend(unknown_fields(a, b, f"{path}[{i}]"))
    return out


def servicemonitor_errors(doc):
    from cloudcoil.models.prometheus_operator import v1 as monitoring_v1  # noqa: PLC0415

    try:
        model = monitoring_v1.ServiceMonitor.model_validate(doc)
    except Exception as e:  # pydantic.ValidationError
        return str(e).replace("\n", " ")
    extra = unknown_fields(doc, model.model_dump(by_alias=True, exclude_none=True, mode="json"))
    return f"fields unknown to the ServiceMonitor CRD: {', '.join(extra)}" if extra else None


def validate_doc(doc, where):
    """Returns a list of error strings for one resource, across VERSIONS."""
    errors = []
    if doc.get("kind") == "ServiceMonitor" and doc.get("apiVersion") == "monitoring.coreos.com/v1":
        error = servicemonitor_errors(doc)
        if error:
            errors.append(f"{where}: {error}")
        return errors
    for version in VERSIONS:
        try:
            error = k8s_errors(doc, version)
        except SchemaNotFoundError as e:
            errors.append(f"{where}: {e.message}")
            break
        if error:
            errors.append(f"{where} (Kubernetes {version}): {error}")
    return errors


# ---- load ------------------------------------------------------------------------------------

files = sorted(p for p in HERE.glob("*.yaml") if p.name not in NOT_RESOURCES)
docs = []  # (file name, doc)
for path in files:
    try:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    except yaml.YAMLError as e:
        fail(f"{path.name}: not valid YAML: {e}")

print(f"validating {len(docs)} resources in {len(files)} files against Kubernetes {', '.join(VERSIONS)} "
      f"(kubernetes-validate {kubernetes_validate.__version__})")

# ---- 1 and 2: schemas ------------------------------------------------------------------------

for file, doc in docs:
    errors = validate_doc(doc, f"{file} {name_of(doc)}")
    if errors:
        for error in errors:
            fail(error)
    else:
        how = ("ServiceMonitor CRD model (prometheus-operator)" if doc.get("kind") == "ServiceMonitor"
               else "schemas, strict")
        ok(f"{file} {name_of(doc)}: valid ({how})")

# ---- 3: consistency --------------------------------------------------------------------------


def one(kind, name=None):
    found = [d for _, d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        fail(f"expected exactly one {kind}{' ' + name if name else ''}, found {len(found)}")
        return None
    return found[0]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


sts = one("StatefulSet", "routemq")
hpa = one("HorizontalPodAutoscaler")
pdb = one("PodDisruptionBudget")
monitor = one("ServiceMonitor")
config = one("ConfigMap", "routemq-config")
routes = one("ConfigMap", "routemq-routes")
services = [d for _, d in docs if d.get("kind") == "Service"]
adapter = yaml.safe_load((HERE / "prometheus-adapter-values.yaml").read_text())
kustomization = yaml.safe_load((HERE / "kustomization.yaml").read_text())

if sts:
    pod = sts["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    main = next(c for c in spec["containers"] if c["name"] == "routemq")
    ports = {p["name"]: p for p in main["ports"]}
    check(matches(sts["spec"]["selector"]["matchLabels"], pod_labels), "StatefulSet selector matches its pod labels")
    headless = next((s for s in services if s["metadata"]["name"] == sts["spec"]["serviceName"]), None)
    check(headless is not None and headless["spec"].get("clusterIP") == "None"
          and headless["spec"].get("publishNotReadyAddresses") is True,
          f"serviceName {sts['spec']['serviceName']} is a headless Service publishing not-ready pods")
    for svc in services:
        sel = svc["spec"].get("selector", {})
        n = svc["metadata"]["name"]
        if "statefulset.kubernetes.io/pod-name" in sel:
            continue
        check(matches(sel, pod_labels), f"Service {n} selects the RouteMQ pods")
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort")
            check(target in ports and ports[target]["containerPort"] == p["port"]
                  and ports[target].get("protocol", "TCP") == p.get("protocol", "TCP"),
                  f"Service {n} port {p['name']} -> container port {target} ({p.get('protocol', 'TCP')})")
    if pdb:
        check(matches(pdb["spec"]["selector"]["matchLabels"], pod_labels), "PodDisruptionBudget selects the RouteMQ pods")
    probes = {k: main[k]["httpGet"]["path"] for k in ("livenessProbe", "readinessProbe") if k in main}
    check(probes == {"livenessProbe": "/health", "readinessProbe": "/ready"}, f"probes: {probes}")
    env = {e["name"]: e for e in main["env"]}
    check(env.get("ROUTEMQ_NODE_ID", {}).get("value") == "$(POD_NAME)"
          and env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
          "node id = pod name (downward API)")
    check("ROUTEMQ_BOOTSTRAP" not in env, "no ROUTEMQ_BOOTSTRAP on the pods (the init container decides)")
    check(main.get("args", [])[:1] == ["start"] and "/run/routemq/routemq.toml" in main.get("args", []),
          "the node reads the config the init container writes")

    if hpa:
        max_replicas = hpa["spec"]["maxReplicas"]
        check(hpa["spec"]["scaleTargetRef"]["name"] == sts["metadata"]["name"]
              and hpa["spec"]["scaleTargetRef"]["kind"] == "StatefulSet", "HPA scales the StatefulSet")
        check(hpa["spec"]["minReplicas"] >= 3, "HPA keeps at least 3 nodes (a Raft majority survives one loss)")
        pod_services = sorted(s["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] for s in services
                              if "statefulset.kubernetes.io/pod-name" in s["spec"].get("selector", {}))
        want = sorted(f"routemq-{i}" for i in range(max_replicas))
        check(pod_services == want and all(
            s["spec"].get("publishNotReadyAddresses") is True for s in services
            if s["metadata"]["name"] in want), f"a per-pod Service for each of the {max_replicas} possible pods")
        init = next(c for c in spec["initContainers"] if c["name"] == "decide-bootstrap")
        cmd = init["command"]
        peers = cmd[cmd.index("--peers") + 1].split(",")
        want_peers = [f"routemq-{i}.{sts['spec']['serviceName']}:{ports['http']['containerPort']}"
                      for i in range(1, max_replicas)]
        check(peers == want_peers, f"the bootstrap decision asks every possible peer ({len(want_peers)})")
        metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
        rule = adapter["rules"]["custom"][0]
        check(rule["name"]["as"] == metric, f"prometheus-adapter serves the HPA's metric {metric}")
        check(rule["seriesQuery"].startswith("routemq_messages_received_total"),
              "the adapter rule reads routemq_messages_received_total")
    seeds = env["ROUTEMQ_SEEDS"]["value"].split(",")
    check(all(s.endswith(f".{sts['spec']['serviceName']}:{ports['gossip']['containerPort']}") for s in seeds),
          f"seeds are pods' gossip addresses by headless DNS ({len(seeds)})")

    if monitor:
        selected = [s for s in services if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
        check([s["metadata"]["name"] for s in selected] == [sts["spec"]["serviceName"]],
              f"ServiceMonitor selects only the headless Service (got {[s['metadata']['name'] for s in selected]})")
        check(all(any(p["name"] == e["port"] for p in selected[0]["spec"]["ports"]) for e in monitor["spec"]["endpoints"])
              if selected else False, "ServiceMonitor endpoints name a port of that Service")

    if config and routes:
        try:
            settings = tomllib.loads(config["data"]["routemq.toml"])
            ok(f"routemq.toml parses ({len(settings)} keys)")
            per_pod = {"node_id", "advertise_host", "seeds", "bootstrap"} & settings.keys()
            check(not per_pod, f"routemq.toml leaves per-pod settings to the pod ({sorted(per_pod) or 'none set'})")
            mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
            routes_dir = str(pathlib.PurePosixPath(settings.get("routes", "/missing")).parent)
            check(mounts.get(routes_dir) == "routes", f"the routes file {settings.get('routes')} is the routes ConfigMap")
            check(settings.get("data_dir") in mounts and mounts[settings["data_dir"]] == "data",
                  "data_dir is the persistent volume")
        except tomllib.TOMLDecodeError as e:
            fail(f"routemq.toml: {e}")
        try:
            tomllib.loads(routes["data"]["routes.toml"])
            ok("routes.toml parses")
        except tomllib.TOMLDecodeError as e:
            fail(f"routes.toml: {e}")

listed = set(kustomization.get("resources", []))
check(listed == {p.name for p in files}, f"kustomization.yaml lists every manifest ({len(listed)})")

# ---- 4: negative controls --------------------------------------------------------------------


def must_fail(label, doc):
    errors = validate_doc(doc, label)
    check(bool(errors), f"negative control rejected: {label}" + (f" ({errors[0][:90]}...)" if errors else " (ACCEPTED!)"))


if sts:
    bad = copy.deepcopy(sts)
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/health"
    must_fail("StatefulSet with an unknown probe field", bad)
    bad = copy.deepcopy(sts)
    bad["spec"]["replicas"] = "three"
    must_fail("StatefulSet with replicas as a string", bad)
if hpa:
    bad = copy.deepcopy(hpa)
    bad["spec"]["metrics"][0]["pods"]["target"]["type"] = 7
    must_fail("HPA with a wrong target type", bad)
    bad = copy.deepcopy(hpa)
    bad["apiVersion"] = "autoscaling/v9"
    must_fail("HPA with an unknown apiVersion", bad)
if monitor:
    bad = copy.deepcopy(monitor)
    bad["spec"]["endpoints"][0]["intervall"] = "15s"
    must_fail("ServiceMonitor with an unknown endpoint field", bad)
    bad = copy.deepcopy(monitor)
    bad["spec"]["endpoints"][0]["scheme"] = "gopher"
    must_fail("ServiceMonitor with a bad scheme", bad)

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
