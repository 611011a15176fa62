#!/usr/bin/env python3
"""Checks the deployment files of a crate made by `trellis new`, with parsers
that owe nothing to trellis:

- the Dockerfile with BuildKit's parser (the `dockerfile` package): its
  stages, non-root user, EXPOSE and HEALTHCHECK;
- deploy/kubernetes.yaml against the official Kubernetes Python models, every
  field checked against the model's schema (an unknown or misspelt field
  fails), then deserialized into the models; the probes and the grace period
  are checked against config.toml;
- compose.yaml and .github/workflows/ci.yml parsed as YAML, for their
  services, jobs and steps.

Usage: check_deploy.py CRATE_DIR. Prints one line per check; exit status 1
with every failure listed. Needs: pip install -r requirements.txt
"""

import math
import os
import re
import sys
import tomllib
from pathlib import Path

try:
    import dockerfile
    import yaml
    from kubernetes import client
except ImportError as err:
    sys.exit(f"check_deploy.py: {err}; install with: pip install -r codegen/cli/tests/requirements.txt")

failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


def seconds(duration):
    """A humantime duration such as 1s, 500ms, 1m30s, in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration.replace(" ", ""):
        raise ValueError(f"not a duration: {duration!r}")
    return sum(float(n) * units[u] for n, u in parts)


# --- the config the deployment files must agree with --------------------------

crate = Path(sys.argv[1])
# `--member`: a crate of a workspace, whose repository's CI builds it, so it
# has no workflow of its own (the order services in examples/).
member = "--member" in sys.argv[2:]
config = tomllib.loads((crate / "config.toml").read_text())
name = tomllib.loads((crate / "Cargo.toml").read_text())["package"]["name"]
port = int(config["listen"].rsplit(":", 1)[1])
shutdown = config.get("shutdown", {})
shutdown_s = seconds(shutdown.get("propagation_delay", "1s")) + seconds(shutdown.get("drain_timeout", "10s"))
proto_services = []
# Walked with links followed: a workspace member may link its protos in.
protos = sorted(Path(d) / f for d, _, files in os.walk(crate / "proto", followlinks=True) for f in files if f.endswith(".proto"))
for proto in protos:
    text = proto.read_text()
    package = re.search(r"^package\s+([\w.]+);", text, re.M).group(1)
    if not package.startswith("grpc."):
        proto_services += [f"{package}.{s}" for s in re.findall(r"^service\s+(\w+)", text, re.M)]
print(f"config: port {port}, shutdown {shutdown_s}s, services {proto_services}")

# --- Dockerfile ---------------------------------------------------------------

commands = dockerfile.parse_file(str(crate / "Dockerfile"))
froms = [c for c in commands if c.cmd == "FROM"]
check(len(froms) == 2, f"Dockerfile: two stages ({[c.value for c in froms]})")
check(len(froms) == 2 and froms[0].value[1:] == ("AS", "build"), "Dockerfile: the first stage is `build`")
runtime = [c for c in commands if c.start_line > froms[-1].start_line]
check(all("rust" not in c.value[0] for c in froms[1:]), "Dockerfile: the runtime stage is not the Rust toolchain image")
check(any(c.cmd == "COPY" and "--from=build" in c.flags for c in runtime), "Dockerfile: the runtime copies the binary from build")
users = [c for c in runtime if c.cmd == "USER"]
check(bool(users) and users[-1].value[0].split(":")[0] not in ("root", "0"), f"Dockerfile: runs as non-root ({users and users[-1].value})")
exposes = [v for c in runtime if c.cmd == "EXPOSE" for v in c.value]
check(str(port) in exposes, f"Dockerfile: EXPOSE {port} (config listen)")
health = [c for c in runtime if c.cmd == "HEALTHCHECK"]
check(len(health) == 1 and health[0].json and health[0].value[0] == "CMD", "Dockerfile: one exec-form HEALTHCHECK")
if health:
    argv = health[0].value[1:]
    check(argv[0] == f"/usr/local/bin/{name}" and argv[1] == "health", f"Dockerfile: HEALTHCHECK runs `{name} health` ({argv})")
    check(f"127.0.0.1:{port}" in argv, f"Dockerfile: HEALTHCHECK asks port {port}")
    check(not any(tool in " ".join(argv) for tool in ("curl", "wget", "grpc_health_probe")), "Dockerfile: no downloaded probe tool")
entry = [c for c in runtime if c.cmd == "ENTRYPOINT"]
check(bool(entry) and entry[-1].value[0] == f"/usr/local/bin/{name}", "Dockerfile: the entrypoint is the service binary")

# --- Kubernetes ---------------------------------------------------------------

MODELS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
}
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float)}


def strict(value, kind, where):
    """Checks `value` against the model type `kind` ("V1Deployment",
    "list[V1Container]", "dict(str, str)", "int", ...): every key known,
    every value of the right type."""
    # Type names are `List[X]` and `Dict[str, X]` (older clients: `list[X]`, `dict(str, X)`).
    if kind.lower().startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [e for i, v in enumerate(value) for e in strict(v, kind[5:-1], f"{where}[{i}]")]
    if kind.lower().startswith(("dict[", "dict(")):
        inner = kind[5:-1].split(", ", 1)[1]
        if not isinstance(value, dict):
            return [f"{where}: expected a map"]
        return [e for k, v in value.items() for e in strict(v, inner, f"{where}.{k}")]
    if kind == "object":
        return []  # IntOrString and free-form fields
    if kind in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[kind]) and not (kind == "int" and isinstance(value, bool))
        return [] if ok else [f"{where}: expected {kind}, got {value!r}"]
    model = getattr(client, kind)
    if not isinstance(value, dict):
        return [f"{where}: expected a {kind} object"]
    by_json = {json_key: attr for attr, json_key in model.attribute_map.items()}
    errors = []
    for key, v in value.items():
        if key not in by_json:
            errors.append(f"{where}.{key}: not a field of {kind}")
        else:
            errors += strict(v, model.openapi_types[by_json[key]], f"{where}.{key}")
    return errors


docs = [d for d in yaml.safe_load_all((crate / "deploy/kubernetes.yaml").read_text()) if d]
objects = {}
api = client.ApiClient()
for doc in docs:
    key = (doc.get("apiVersion"), doc.get("kind"))
    model = MODELS.get(key)
    check(model is not None, f"kubernetes: {key} is an expected object")
    if model is None:
        continue
    errors = strict(doc, model, doc["kind"])
    check(not errors, f"kubernetes: {doc['kind']} matches the {model} schema {errors or ''}")
    try:
        objects[doc["kind"]] = api._ApiClient__deserialize(doc, model)
        check(True, f"kubernetes: {doc['kind']} deserializes into {model}")
    except (ValueError, TypeError) as err:
        check(False, f"kubernetes: {doc['kind']} does not deserialize into {model}: {err}")
check(set(objects) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"}, f"kubernetes: all four objects ({sorted(objects)})")

deployment = objects.get("Deployment")
if deployment:
    pod = deployment.spec.template.spec
    grace = pod.termination_grace_period_seconds
    check(grace is not None and grace >= math.ceil(shutdown_s) + 1,
          f"kubernetes: terminationGracePeriodSeconds {grace} > propagation_delay + drain_timeout = {shutdown_s}s")
    check(pod.security_context.run_as_non_root is True, "kubernetes: runAsNonRoot")
    container = pod.containers[0]
    check([p.container_port for p in container.ports] == [port], f"kubernetes: containerPort {port}")
    for probe_name in ("startup_probe", "readiness_probe", "liveness_probe"):
        probe = getattr(container, probe_name)
        check(probe is not None and probe.grpc is not None and probe.grpc.port == port, f"kubernetes: {probe_name} is gRPC on port {port}")
    check(container.readiness_probe.grpc.service in proto_services,
          f"kubernetes: readiness asks for the service {container.readiness_probe.grpc.service!r}")
    check(container.liveness_probe.grpc.service == "", "kubernetes: liveness asks for the whole server (\"\")")
    requests = container.resources.requests or {}
    check("cpu" in requests and "memory" in requests, f"kubernetes: resource requests {requests}")
    env = {e.name: e.value for e in container.env or []}
    check(env.get("TRELLIS_REGISTRY", "").startswith("dns://"), f"kubernetes: dns:// discovery ({env})")
    mounts = {m.name for m in container.volume_mounts}
    volumes = {v.name: v for v in pod.volumes}
    check(all(m in volumes for m in mounts), "kubernetes: every mount has a volume")
    configmap = objects.get("ConfigMap")
    check(configmap is not None and volumes["config"].config_map.name == configmap.metadata.name, "kubernetes: the config volume is the ConfigMap")
    check(configmap is not None and tomllib.loads(configmap.data["config.toml"]) == config, "kubernetes: the ConfigMap holds config.toml")
service = objects.get("Service")
if service:
    check(service.spec.cluster_ip == "None", "kubernetes: the Service is headless")
    check([p.port for p in service.spec.ports] == [port], f"kubernetes: the Service port is {port}")
    check(service.metadata.name in [s.lower().replace(".", "-").replace("_", "-") for s in proto_services],
          f"kubernetes: the Service is named for dns://{{service}} ({service.metadata.name})")
    check(deployment is not None and service.spec.selector == deployment.spec.selector.match_labels, "kubernetes: the Service selects the pods")
hpa = objects.get("HorizontalPodAutoscaler")
if hpa:
    check(hpa.spec.scale_target_ref.kind == "Deployment" and hpa.spec.scale_target_ref.name == name, "kubernetes: the HPA scales the Deployment")
    check(hpa.spec.min_replicas >= 2 and hpa.spec.max_replicas > hpa.spec.min_replicas, "kubernetes: HPA replica bounds")

# --- compose.yaml --------------------------------------------------------------

compose = yaml.safe_load((crate / "compose.yaml").read_text())
services = compose.get("services", {})
check({"etcd", name} <= set(services), f"compose: services etcd and {name} ({sorted(services)})")
if name in services:
    svc = services[name]
    check(svc.get("deploy", {}).get("replicas", 1) >= 2, "compose: several instances")
    check("etcd://etcd:2379" in " ".join(svc.get("command", [])), "compose: the instances register in etcd")
    check(svc.get("depends_on", {}).get("etcd", {}).get("condition") == "service_healthy", "compose: waits for etcd")
    check(seconds(svc.get("stop_grace_period", "10s")) > shutdown_s, "compose: stop_grace_period outlasts the drain")
    check(any(v.startswith("./config.toml:") for v in svc.get("volumes", [])), "compose: mounts config.toml")

# --- .github/workflows/ci.yml -------------------------------------------------

if member:
    print("skip  workflow: a workspace member; the repository's CI builds it")
else:
    workflow_text = (crate / ".github/workflows/ci.yml").read_text()
    workflow = yaml.safe_load(workflow_text)
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    check(triggers is not None and triggers["push"]["branches"] == ["main"] and "pull_request" in triggers, "workflow: runs on pushes to main and pull requests")
    jobs = workflow.get("jobs", {})
    check(set(jobs) == {"check", "image", "deploy"}, f"workflow: jobs check, image, deploy ({sorted(jobs)})")


    def runs(job):
        return " ".join(step.get("run", "") for step in jobs.get(job, {}).get("steps", []))


    def uses(job):
        return [step.get("uses", "").split("@")[0] for step in jobs.get(job, {}).get("steps", [])]


    check(all(cmd in runs("check") for cmd in ("cargo fmt --check", "cargo clippy --all-targets -- -D warnings", "cargo test")), "workflow: formatting, lints, tests")
    check("docker/build-push-action" in uses("image") and jobs["image"].get("needs") == "check", "workflow: the image is built after the checks")
    check(jobs["deploy"].get("if") == "github.ref == 'refs/heads/main'" and jobs["deploy"].get("needs") == "image", "workflow: deploys from main after the image")
    check("kubectl apply" in runs("deploy") and "deploy/kubernetes.yaml" in runs("deploy"), "workflow: applies the manifests")
    secrets = set(re.findall(r"secrets\.(\w+)", workflow_text))
    header = workflow_text.split("\nname:", 1)[0]
    check(secrets == {"REGISTRY", "REGISTRY_USERNAME", "REGISTRY_PASSWORD", "KUBE_CONFIG"}, f"workflow: secrets {sorted(secrets)}")
    check(all(s in header for s in secrets), "workflow: every secret is documented at the top")

if failures:
    print(f"\n{len(failures)} check(s) failed", file=sys.stderr)
    sys.exit(1)
print("\nall deployment checks passed")
