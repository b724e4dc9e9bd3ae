#!/usr/bin/python3
"""Checks deploy/k8s/ and deploy/compose.yaml offline (deploy/k8s/validate.sh runs it; README.md).

1. Schema: every Kubernetes object in deploy/k8s/*/*.yaml, and the output of `kubectl kustomize`
   for the cpu and gpu variants where kubectl is installed (else the ConfigMaps that common/'s
   configMapGenerator makes, built here), is validated against the Kubernetes / prometheus-operator
   schemas bundled in schema/k8s_validators.cjs (schema/README.md), strictly (unknown fields are
   errors), by node schema/validate_docs.cjs. Rendered or not, every configMap volume must name a
   generated ConfigMap.
2. One source of the numbers: the server's config file common/server.json (and the server's
   built-in defaults) against the StatefulSets, Services, probes, grace periods, the gateway's
   nginx.conf and replica list (exactly what deploy/gateway/gen_upstreams.sh writes for the
   StatefulSet's pods), the ServiceMonitor, deploy/compose.yaml, deploy/prometheus/ and the
   Dockerfile.
3. `docker-compose config` on deploy/compose.yaml (no Docker daemon needed).
4. Self-test: deliberately broken copies (a misspelt field, a wrong type, a missing required
   field, a bad quantity, a grace period shorter than the drain, a replica list one short, a
   broken compose file) must each be rejected, so the checks above cannot pass vacuously.

Exit 0 all passed, 1 something failed, 77 a tool is missing (node, docker-compose).
"""

import argparse
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

K8S = os.path.dirname(os.path.abspath(__file__))
DEPLOY = os.path.dirname(K8S)
REPO = os.path.dirname(DEPLOY)
SKIP = 77
PROMETHEUS_JOB = "specprune"  # deploy/prometheus/prometheus.yml's job_name, the rules' job


class Missing(Exception):
    """A tool the check needs is not installed (exit 77)."""


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def rel(path):
    return os.path.relpath(path, REPO)


def quantity(text, docker=False):
    """A quantity as a number: Kubernetes ("2", "500m", "1Gi") or, with docker=True, a compose
    memory size ("1g" = 1 GiB, "512m" = 512 MiB)."""
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text).strip())
    if not m:
        raise ValueError(f"not a quantity: {text!r}")
    if docker:
        units = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30,
                 "gb": 2**30}
        scale = units.get(m.group(2).lower())
    else:
        units = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10,
                 "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
        scale = units.get(m.group(2))
    if scale is None:
        raise ValueError(f"unknown unit in {text!r}")
    return float(m.group(1)) * scale


# --- loading ----------------------------------------------------------------------------------

def server_facts(server_bin):
    """The server's config keys and built-in defaults: from `server --help` when a binary is given,
    else from the sources (server/server_config.cc's key table, server_config.h's initializers)."""
    if server_bin:
        out = subprocess.run([server_bin, "--help"], capture_output=True, text=True, timeout=60)
        text = out.stdout + out.stderr
        block = text.split("Built-in defaults:", 1)[1].split("\n\n", 1)[0]
        defaults = {}
        for line in block.splitlines():
            m = re.match(r"\s+(\w+) = (.*)$", line)
            if m:
                defaults[m.group(1)] = json.loads(m.group(2))
        return set(defaults), defaults, f"{server_bin} --help"
    cc = read(os.path.join(REPO, "server/server_config.cc"))
    keys = set(re.findall(r'^\s*\{"(\w+)", SP_', cc, re.M))
    h = read(os.path.join(REPO, "server/server_config.h"))
    defaults = {
        "port": int(re.search(r"int port = (\d+);", h).group(1)),
        "metrics_port": int(re.search(r"int metrics_port = (\d+);", h).group(1)),
        "drain_timeout_seconds": float(re.search(r"drain_timeout = absl::Seconds\((\d+)\)",
                                                 h).group(1)),
    }
    m = re.search(r"max_message_bytes = (\d+) << (\d+);", h)
    defaults["max_message_bytes"] = int(m.group(1)) << int(m.group(2))
    return keys, defaults, "server/server_config.{h,cc}"


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifest_files():
    files = []
    for sub in ("common", "cpu", "gpu"):
        d = os.path.join(K8S, sub)
        for name in sorted(os.listdir(d)):
            if name.endswith(".yaml") and name != "kustomization.yaml":
                files.append(os.path.join(d, name))
    return files


def load_model(server_bin):
    keys, defaults, source = server_facts(server_bin)
    model = {
        "server_keys": keys, "defaults": defaults, "defaults_source": source,
        "server_json": json.loads(read(os.path.join(K8S, "common/server.json"))),
        "k8s": {rel(p): load_yaml_docs(p) for p in manifest_files()},
        "kustomizations": {sub: yaml.safe_load(read(os.path.join(K8S, sub, "kustomization.yaml")))
                           for sub in ("common", "cpu", "gpu")},
        "nginx_conf": read(os.path.join(DEPLOY, "gateway/nginx.conf")),
        "nginx_conf_k8s": read(os.path.join(K8S, "common/gateway/nginx.conf")),
        "upstreams_k8s": read(os.path.join(K8S, "common/gateway/specprune_upstreams.conf")),
        "compose": yaml.safe_load(read(os.path.join(DEPLOY, "compose.yaml"))),
        "prometheus": yaml.safe_load(read(os.path.join(DEPLOY, "prometheus/prometheus.yml"))),
        "alert_rules": read(os.path.join(DEPLOY, "prometheus/alert_rules.yml")),
        "dockerfile": read(os.path.join(REPO, "Dockerfile")),
    }
    return model


# --- schema validation --------------------------------------------------------------------------

def node_validate(items):
    """Runs validate_docs.cjs on [(source, doc)]; returns (sources that failed, output)."""
    node = shutil.which("node") or shutil.which("nodejs")
    if not node:
        raise Missing("node (Debian package nodejs; deploy/setup.sh installs it)")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([{"source": s, "doc": d} for s, d in items], f)
        path = f.name
    try:
        out = subprocess.run([node, os.path.join(K8S, "schema/validate_docs.cjs"), path],
                             capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(path)
    if out.returncode not in (0, 1):
        raise RuntimeError(f"validate_docs.cjs failed ({out.returncode}): {out.stderr}")
    failed = {line.split()[1] for line in out.stdout.splitlines() if line.startswith("FAIL ")}
    return failed, out.stdout


def generated_configmaps(model):
    """The ConfigMaps common/kustomization.yaml's configMapGenerator makes, as kustomize would
    (less the content hash it appends to the name): each file's base name (or "key=") is a key."""
    k = model["kustomizations"]["common"]
    out = []
    for gen in k.get("configMapGenerator", []):
        data = {}
        for f in gen.get("files", []):
            key, _, path = f.rpartition("=")
            data[key or os.path.basename(path)] = read(os.path.join(K8S, "common", path))
        out.append({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": gen["name"], "namespace": k["namespace"]},
                    "data": data})
    return out


def configmap_reference_errors(docs, where):
    """Every configMap volume of a workload in docs names a ConfigMap in docs (after kustomize's
    name rewriting, the hashed name), and each ConfigMap fits the API's 1 MiB limit."""
    errors = []
    maps = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
    for d in docs:
        if d.get("kind") not in ("StatefulSet", "Deployment"):
            continue
        for v in d["spec"]["template"]["spec"].get("volumes", []):
            name = v.get("configMap", {}).get("name")
            if name is not None and name not in maps:
                errors.append(f"{where}: {d['kind']} {d['metadata']['name']} mounts ConfigMap "
                              f"{name}, which is not generated (have {sorted(maps)})")
    for name, m in maps.items():
        size = sum(len(k) + len(v.encode()) for k, v in m.get("data", {}).items())
        if size > 1 << 20:
            errors.append(f"{where}: ConfigMap {name} holds {size} bytes (> 1 MiB)")
    return errors


def kustomize_render(sub):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return None
    out = subprocess.run([kubectl, "kustomize", os.path.join(K8S, sub)], capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {sub}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


# --- consistency ----------------------------------------------------------------------------------

def find(model, kind, name=None, path_part=None):
    hits = []
    for path, docs in model["k8s"].items():
        for d in docs:
            if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name) \
                    and (path_part is None or path_part in path):
                hits.append((path, d))
    return hits


def container(workload):
    return workload["spec"]["template"]["spec"]["containers"][0]


def prestop_seconds(c):
    pre = c.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return int(pre["sleep"]["seconds"])
    cmd = pre.get("exec", {}).get("command", [])
    if len(cmd) == 2 and cmd[0].endswith("/sleep"):
        return int(cmd[1])
    return 0


def port_of(c, name):
    return next((p["containerPort"] for p in c.get("ports", []) if p.get("name") == name), None)


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def check_server_side(model, errors):
    cfg, defaults = model["server_json"], model["defaults"]
    for key in cfg:
        if key not in model["server_keys"]:
            errors.append(f"common/server.json: {key!r} is not a server config key "
                          f"({model['defaults_source']})")
    # The image's HEALTHCHECK and EXPOSE, a flag-less `docker run` and the standalone gateway
    # (deploy/gateway/) assume the built-in values of these: the config file must not move them.
    for key in ("port", "metrics_port", "max_message_bytes"):
        if key in defaults and cfg.get(key) != defaults[key]:
            errors.append(f"common/server.json: {key} = {cfg.get(key)}, but the server's built-in "
                          f"default is {defaults[key]} ({model['defaults_source']})")
    port, metrics = cfg["port"], cfg["metrics_port"]
    if not re.search(rf"^EXPOSE {port} {metrics}$", model["dockerfile"], re.M):
        errors.append(f"Dockerfile: no `EXPOSE {port} {metrics}`")
    if f"127.0.0.1:{port}" not in model["dockerfile"]:
        errors.append(f"Dockerfile: the HEALTHCHECK does not target 127.0.0.1:{port}")
    m = re.search(r"0\.8 \* (\d+)", model["alert_rules"])
    if not m or int(m.group(1)) != cfg.get("max_queue_size", 256):
        errors.append("deploy/prometheus/alert_rules.yml: SpecPruneQueueNearFull's bound "
                      f"{m and m.group(1)} != max_queue_size {cfg.get('max_queue_size', 256)}")


def check_statefulset(model, path, sts, service, upstream_servers, errors):
    cfg = model["server_json"]
    port, metrics = cfg["port"], cfg["metrics_port"]
    drain = cfg.get("drain_timeout_seconds", model["defaults"].get("drain_timeout_seconds", 10))
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    c = container(sts)
    where = f"{path}: {sts['metadata']['name']}"
    if port_of(c, "grpc") != port or port_of(c, "metrics") != metrics:
        errors.append(f"{where}: container ports grpc/metrics {port_of(c, 'grpc')}/"
                      f"{port_of(c, 'metrics')} != server.json {port}/{metrics}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        got = c.get(probe, {}).get("grpc", {}).get("port")
        if got != port:
            errors.append(f"{where}: {probe} is not a gRPC probe on port {port} (got {got})")
    grace, pre = pod.get("terminationGracePeriodSeconds", 30), prestop_seconds(c)
    if pre <= 0:
        errors.append(f"{where}: no preStop delay")
    if grace < pre + drain + 5:
        errors.append(f"{where}: terminationGracePeriodSeconds {grace} < preStop {pre} s + "
                      f"drain_timeout_seconds {drain} s + 5 s margin")
    args = c.get("args", [])
    config_path = args[args.index("--config") + 1] if "--config" in args[:-1] else None
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    cm_volume = next((v["name"] for v in pod.get("volumes", [])
                      if v.get("configMap", {}).get("name", "").startswith(
                          "specprune-server-config")), None)
    if config_path != f"{mounts.get(cm_volume)}/server.json":
        errors.append(f"{where}: --config {config_path} is not server.json in the mounted "
                      f"specprune-server-config ({mounts.get(cm_volume)})")
    if spec["serviceName"] != service["metadata"]["name"]:
        errors.append(f"{where}: serviceName {spec['serviceName']} is not the headless Service")
    if not selects({"matchLabels": service["spec"]["selector"]},
                   spec["template"]["metadata"]["labels"]):
        errors.append(f"{where}: the headless Service's selector does not match the pods")
    ns = model["kustomizations"]["common"]["namespace"]
    want = [f"{sts['metadata']['name']}-{i}.{service['metadata']['name']}.{ns}.svc.cluster.local:"
            f"{port}" for i in range(spec["replicas"])]
    if upstream_servers != want:
        errors.append(f"{where}: common/gateway/specprune_upstreams.conf lists {upstream_servers}, "
                      f"the StatefulSet's {spec['replicas']} pods are {want}")
    else:
        problem = upstreams_not_generated(model["upstreams_k8s"], tuple(want))
        if problem:
            errors.append(f"common/gateway/specprune_upstreams.conf: {problem}")


@functools.lru_cache(maxsize=None)
def upstreams_not_generated(text, servers):
    """Why the replica list `text` is not what deploy/gateway/gen_upstreams.sh --resolver writes for
    `servers` (None when it is): Kubernetes pods change IPs, so every name must be re-resolved."""
    resolver = re.search(r"^resolver (.+);$", text, re.M)
    if not resolver:
        return ("no `resolver` line: without it nginx resolves the pod names only at start, and a "
                "restarted pod's new IP is never picked up (gen_upstreams.sh --resolver)")
    first = re.search(r"^server \S+ .*max_fails=(\d+) fail_timeout=(\S+);$", text, re.M)
    if not first:
        return "no `server ... max_fails=N fail_timeout=T;` line"
    cmd = ["bash", os.path.join(DEPLOY, "gateway/gen_upstreams.sh"), "--resolver",
           resolver.group(1), "--max_fails", first.group(1), "--fail_timeout", first.group(2),
           *servers]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return f"gen_upstreams.sh failed: {out.stderr.strip()}"
    lines = lambda t: [x for x in t.splitlines() if x.strip() and not x.startswith("#")]  # noqa
    if lines(text) != lines(out.stdout):
        return ("its non-comment lines are not what gen_upstreams.sh writes (deploy/gateway/"
                f"gen_upstreams.sh --resolver '{resolver.group(1)}' ...):\n    "
                + "\n    ".join(lines(out.stdout)))
    return None


def check_k8s(model, errors):
    cfg = model["server_json"]
    services = {d["metadata"]["name"]: d for _, d in find(model, "Service")}
    headless = [d for d in services.values() if d["spec"].get("clusterIP") == "None"]
    if len(headless) != 1:
        errors.append(f"deploy/k8s: want exactly one headless Service, found {len(headless)}")
        return
    svc = headless[0]
    svc_ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    if svc_ports != {"grpc": cfg["port"], "metrics": cfg["metrics_port"]}:
        errors.append(f"headless Service ports {svc_ports} != server.json's")
    upstream_servers = re.findall(r"^server (\S+) ", model["upstreams_k8s"], re.M)
    stss = find(model, "StatefulSet")
    if sorted(p.split("/")[-2] for p, _ in stss) != ["cpu", "gpu"]:
        errors.append("deploy/k8s: want one server StatefulSet in cpu/ and one in gpu/")
        return
    for path, sts in stss:
        check_statefulset(model, path, sts, svc, upstream_servers, errors)
    (_, cpu), (_, gpu) = sorted(stss, key=lambda x: x[0])
    same = lambda f: f(cpu) == f(gpu)  # noqa: E731
    for label, f in [
        ("name", lambda s: s["metadata"]["name"]), ("replicas", lambda s: s["spec"]["replicas"]),
        ("pod labels", lambda s: s["spec"]["template"]["metadata"]["labels"]),
        ("grace period", lambda s: s["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]),
        ("preStop", lambda s: prestop_seconds(container(s))),
        ("ports", lambda s: container(s)["ports"]),
        ("security context", lambda s: container(s)["securityContext"])]:
        if not same(f):
            errors.append(f"cpu/ and gpu/ StatefulSets differ in {label}")
    gpu_c = container(gpu)
    if quantity(gpu_c["resources"].get("limits", {}).get("nvidia.com/gpu", 0)) < 1:
        errors.append("gpu/server-statefulset.yaml: no nvidia.com/gpu limit")
    if "cuda" not in " ".join(gpu_c.get("args", [])):
        errors.append("gpu/server-statefulset.yaml: args do not select --device cuda")
    for path, pdb in find(model, "PodDisruptionBudget"):
        target = find(model, "Deployment", pdb["metadata"]["name"]) or [(None, cpu)]
        if not selects(pdb["spec"]["selector"], target[0][1]["spec"]["template"]["metadata"]
                       ["labels"]):
            errors.append(f"{path}: selector matches no pod of {pdb['metadata']['name']}")
    for path, sm in find(model, "ServiceMonitor"):
        spec = sm["spec"]
        if not selects(spec["selector"], svc["metadata"]["labels"]):
            errors.append(f"{path}: selector does not match the headless Service")
        if svc["metadata"]["labels"].get(spec.get("jobLabel")) != PROMETHEUS_JOB:
            errors.append(f"{path}: jobLabel does not make job=\"{PROMETHEUS_JOB}\"")
        interval = model["prometheus"]["global"]["scrape_interval"]
        for ep in spec["endpoints"]:
            if ep["port"] not in svc_ports or ep.get("interval") != interval:
                errors.append(f"{path}: endpoint {ep['port']}/{ep.get('interval')} is not a port "
                              f"of the Service scraped every {interval} (prometheus.yml)")
        if spec.get("namespaceSelector", {}).get("matchNames") != [
                model["kustomizations"]["common"]["namespace"]]:
            errors.append(f"{path}: namespaceSelector is not the kustomization's namespace")
    namespaces = [d["metadata"]["name"] for _, d in find(model, "Namespace")]
    kns = {k["namespace"] for k in model["kustomizations"].values()}
    if namespaces != sorted(kns) or len(kns) != 1:
        errors.append(f"namespace.yaml {namespaces} != kustomizations' namespace {sorted(kns)}")


def check_gateway(model, errors):
    cfg = model["server_json"]
    if model["nginx_conf_k8s"] != model["nginx_conf"]:
        errors.append("common/gateway/nginx.conf differs from deploy/gateway/nginx.conf "
                      "(run deploy/k8s/validate.sh --fix to copy it)")
    conf = model["nginx_conf"]
    listen = re.search(r"^\s*listen\s+(?:\S+:)?(\d+)", conf, re.M)
    listen = int(listen.group(1)) if listen else None
    sizes = [int(x) for x in re.findall(r"client_max_body_size (\d+);", conf) if x != "0"]
    if sizes != [cfg["max_message_bytes"] + 5]:
        errors.append(f"deploy/gateway/nginx.conf: client_max_body_size {sizes} != "
                      f"max_message_bytes {cfg['max_message_bytes']} + 5 (gRPC frame header)")
    gws = find(model, "Deployment", "specprune-gateway")
    if not gws:
        errors.append("deploy/k8s: no specprune-gateway Deployment")
        return
    path, gw = gws[0]
    c = container(gw)
    if port_of(c, "grpc") != listen:
        errors.append(f"{path}: containerPort {port_of(c, 'grpc')} != nginx.conf listen {listen}")
    for _, svc in find(model, "Service", "specprune-gateway"):
        if svc["spec"]["ports"][0]["port"] != listen:
            errors.append(f"specprune-gateway Service port != nginx.conf listen {listen}")
    cmd = c.get("command", [])
    conf_path = cmd[cmd.index("-c") + 1] if "-c" in cmd[:-1] else ""
    mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
    if os.path.dirname(conf_path) not in mounts:
        errors.append(f"{path}: nginx -c {conf_path} is not in a mounted volume")
    compose_gw = model["compose"]["services"].get("gateway", {})
    if compose_image(compose_gw) != c["image"]:
        errors.append(f"compose gateway image {compose_image(compose_gw)} != k8s {c['image']}")
    if not any(str(p).endswith(f":{listen}") for p in compose_gw.get("ports", [])):
        errors.append(f"compose gateway does not publish the nginx.conf listen port {listen}")


def compose_image(service):
    image = service.get("image", "")
    m = re.fullmatch(r"\$\{\w+:-(.+)\}", image)
    return m.group(1) if m else image


def check_compose(model, errors):
    cfg, compose = model["server_json"], model["compose"]
    (_, cpu), = [x for x in find(model, "StatefulSet") if "/cpu/" in x[0]] or [(None, None)]
    if cpu is None:
        return
    c = container(cpu)
    image = c["image"]
    servers = {n: s for n, s in compose["services"].items() if compose_image(s) == image}
    replicas = cpu["spec"]["replicas"]
    if sorted(servers) != [f"server-{i}" for i in range(replicas)]:
        errors.append(f"compose: server services {sorted(servers)} != {replicas} replicas "
                      f"server-0..{replicas - 1} of image {image}")
    grace = cpu["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    limits = c["resources"]["limits"]
    for name, s in servers.items():
        if s.get("stop_grace_period") != f"{grace}s":
            errors.append(f"compose {name}: stop_grace_period {s.get('stop_grace_period')} != "
                          f"the StatefulSet's {grace}s")
        if quantity(s.get("cpus", 0)) != quantity(limits["cpu"]) or \
                quantity(s.get("mem_limit", 0), docker=True) != quantity(limits["memory"]):
            errors.append(f"compose {name}: cpus/mem_limit {s.get('cpus')}/{s.get('mem_limit')} "
                          f"!= the StatefulSet's limits {limits['cpu']}/{limits['memory']}")
        command = s.get("command", [])
        config_path = command[command.index("--config") + 1] if "--config" in command else None
        if f"./k8s/common/server.json:{config_path}:ro" not in s.get("volumes", []):
            errors.append(f"compose {name}: --config {config_path} is not common/server.json")
    gw_text = json.dumps(compose["services"].get("gateway", {}).get("entrypoint", ""))
    prom_text = json.dumps(compose["services"].get("prometheus", {}).get("entrypoint", ""))
    for name in servers:
        if f"{name}:{cfg['port']}" not in gw_text:
            errors.append(f"compose gateway: replica list lacks {name}:{cfg['port']}")
        if f"{name}:{cfg['metrics_port']}" not in prom_text:
            errors.append(f"compose prometheus: targets lack {name}:{cfg['metrics_port']}")


def check_kustomizations(model, errors):
    listed = set()
    for sub, k in model["kustomizations"].items():
        for r in k.get("resources", []):
            p = os.path.normpath(os.path.join(K8S, sub, r))
            if not os.path.exists(p):
                errors.append(f"{sub}/kustomization.yaml: resource {r} does not exist")
            listed.add(p)
        for gen in k.get("configMapGenerator", []):
            for f in gen.get("files", []):
                if not os.path.isfile(os.path.join(K8S, sub, f.split("=")[-1])):
                    errors.append(f"{sub}/kustomization.yaml: file {f} does not exist")
    for path in model["k8s"]:
        if os.path.join(REPO, path) not in listed:
            errors.append(f"{path}: not listed in any kustomization.yaml")
    docs = [d for ds in model["k8s"].values() for d in ds] + generated_configmaps(model)
    errors += configmap_reference_errors(docs, "deploy/k8s")


def consistency_errors(model):
    errors = []
    for check in (check_server_side, check_kustomizations, check_k8s, check_gateway,
                  check_compose):
        try:
            check(model, errors)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            errors.append(f"{check.__name__}: malformed input: {type(e).__name__}: {e}")
    return list(dict.fromkeys(errors))  # the cpu/ and gpu/ StatefulSets can report the same


# --- compose ---------------------------------------------------------------------------------------

def compose_config(path):
    exe = shutil.which("docker-compose")
    if not exe:
        raise Missing("docker-compose (Debian package docker-compose; deploy/setup.sh installs it)")
    out = subprocess.run([exe, "-f", path, "config", "-q"], capture_output=True, text=True,
                         timeout=120, cwd=os.path.dirname(path))
    return out.returncode, (out.stdout + out.stderr).strip()


# --- self-test ----------------------------------------------------------------------------------

def broken_schema_copies(model):
    """(source, doc) pairs the schema check must reject, made from the CPU StatefulSet."""
    (_, sts), = [x for x in find(model, "StatefulSet") if "/cpu/" in x[0]]
    cases = []

    def case(name, mutate):
        doc = copy.deepcopy(sts)
        mutate(doc, container(doc))
        cases.append((f"selftest:{name}", doc))

    case("misspelt-field", lambda d, c: c.update(livenesProbe=c.pop("livenessProbe")))
    case("wrong-type", lambda d, c: d["spec"].update(replicas="three"))
    case("missing-required", lambda d, c: d["spec"].pop("selector"))
    case("bad-quantity", lambda d, c: c["resources"]["limits"].update(cpu="2 cores"))
    case("removed-api", lambda d, c: d.update(apiVersion="apps/v1beta1"))
    return cases


def broken_models(model):
    """(name, expected error text, model) the consistency check must reject."""
    out = []

    def case(name, expect, mutate):
        m = copy.deepcopy(model)
        mutate(m)
        out.append((name, expect, m))

    def cpu(m):
        return [d for p, d in find(m, "StatefulSet") if "/cpu/" in p][0]

    case("grace-below-drain", "terminationGracePeriodSeconds",
         lambda m: cpu(m)["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=12))
    case("replica-list-one-short", "specprune_upstreams.conf",
         lambda m: m.update(upstreams_k8s=m["upstreams_k8s"].rstrip("\n").rsplit("\n", 1)[0]))
    case("compose-memory-differs", "mem_limit",
         lambda m: m["compose"]["services"]["server-1"].update(mem_limit="2g"))
    case("nginx-body-size", "client_max_body_size",
         lambda m: m.update(nginx_conf=m["nginx_conf"].replace("client_max_body_size 16777221;",
                                                               "client_max_body_size 4194309;")))
    case("unknown-server-key", "not a server config key",
         lambda m: m["server_json"].update(max_batch=4))
    case("probe-port", "gRPC probe",
         lambda m: container(cpu(m))["livenessProbe"]["grpc"].update(port=50052))
    case("replica-list-without-resolve", "gen_upstreams.sh writes",
         lambda m: m.update(upstreams_k8s=m["upstreams_k8s"].replace(" resolve ", " ")))
    case("replica-list-without-resolver", "no `resolver` line",
         lambda m: m.update(upstreams_k8s=re.sub(r"^resolver .*\n", "", m["upstreams_k8s"],
                                                 flags=re.M)))
    case("configmap-volume-unknown", "is not generated",
         lambda m: cpu(m)["spec"]["template"]["spec"]["volumes"][0]["configMap"].update(
             name="specprune-server-cfg"))
    return out


def broken_compose(path):
    """A copy of compose.yaml with a misspelt service key, which `docker-compose config` must
    reject."""
    text = read(path).replace("    restart: unless-stopped\n", "    restrat: unless-stopped\n", 1)
    d = tempfile.mkdtemp(prefix="specprune-compose-selftest.")
    broken = os.path.join(d, "compose.yaml")
    with open(broken, "w", encoding="utf-8") as f:
        f.write(text)
    return broken


# --- main ---------------------------------------------------------------------------------------

class Report:
    def __init__(self):
        self.failures = 0

    def result(self, ok, what, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {what}" + (f"\n{detail}" if detail and not ok else ""))
        self.failures += 0 if ok else 1


def run_k8s(model, report):
    items = [(f"{p}#{i}", d) for p, docs in model["k8s"].items() for i, d in enumerate(docs)]
    render_errors = []
    if shutil.which("kubectl"):
        for sub in ("cpu", "gpu"):
            rendered = kustomize_render(sub)
            items += [(f"kustomize:{sub}#{i}", d) for i, d in enumerate(rendered)]
            render_errors += configmap_reference_errors(rendered, f"kubectl kustomize {sub}")
        what = "+ `kubectl kustomize` of cpu/ and gpu/"
    else:
        print("note: kubectl not installed: the kustomize renders are not validated; the "
              "configMapGenerator's ConfigMaps are built here instead (without the name hash)")
        items += [(f"configMapGenerator:{d['metadata']['name']}", d)
                  for d in generated_configmaps(model)]
        what = "+ the generated ConfigMaps"
    failed, out = node_validate(items)
    report.result(not failed, f"schema: {len(items)} objects, strict "
                  f"({len(model['k8s'])} files {what})", out)
    if render_errors or shutil.which("kubectl"):
        report.result(not render_errors, "kustomize renders: configMap volumes name the generated "
                      "(hashed) ConfigMaps", "\n".join(f"  {e}" for e in render_errors))
    errors = consistency_errors(model)
    report.result(not errors, "consistency: server.json, defaults, k8s, gateway, compose, "
                  "prometheus, Dockerfile", "\n".join(f"  {e}" for e in errors))
    cases = broken_schema_copies(model)
    failed, out = node_validate(cases)
    missed = [s for s, _ in cases if s not in failed]
    report.result(not missed, f"self-test: {len(cases)} broken objects rejected by the schema "
                  "check", f"  accepted: {missed}\n{out}")
    missed = []
    for name, expect, broken in broken_models(model):
        errs = consistency_errors(broken)
        if not any(expect in e for e in errs):
            missed.append(f"{name} (errors: {errs})")
    report.result(not missed, f"self-test: {len(broken_models(model))} broken copies rejected "
                  "by the consistency check", "\n".join(f"  accepted: {m}" for m in missed))


def run_compose(report):
    path = os.path.join(DEPLOY, "compose.yaml")
    rc, out = compose_config(path)
    report.result(rc == 0, "docker-compose config deploy/compose.yaml", out)
    broken = broken_compose(path)
    try:
        rc, out = compose_config(broken)
    finally:
        shutil.rmtree(os.path.dirname(broken))
    report.result(rc != 0, "self-test: docker-compose config rejects a misspelt key",
                  f"  accepted: {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", help="specprune_server binary: read its config keys and "
                    "defaults from --help (default: from the sources)")
    ap.add_argument("--only", choices=("k8s", "compose", "all"), default="all")
    ap.add_argument("--fix", action="store_true",
                    help="first copy deploy/gateway/nginx.conf to common/gateway/nginx.conf")
    args = ap.parse_args()
    if args.fix:
        shutil.copyfile(os.path.join(DEPLOY, "gateway/nginx.conf"),
                        os.path.join(K8S, "common/gateway/nginx.conf"))
        print("fixed: copied deploy/gateway/nginx.conf to deploy/k8s/common/gateway/nginx.conf")
    report = Report()
    try:
        if args.only in ("k8s", "all"):
            run_k8s(load_model(args.server), report)
        if args.only in ("compose", "all"):
            run_compose(report)
    except Missing as e:
        print(f"SKIP: not installed: {e}")
        return SKIP
    print("validate: all checks passed" if report.failures == 0
          else f"validate: {report.failures} check(s) failed")
    return 0 if report.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
