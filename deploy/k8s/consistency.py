"""One source of the numbers (validate_manifests.py check 2): the server's config file
common/server.json and the server's built-in defaults against the StatefulSets, Services, probes,
grace periods, the gateway's nginx.conf and replica list, the ServiceMonitor, deploy/compose.yaml,
deploy/prometheus/ and the Dockerfile. consistency_errors(model) is the entry point."""

import functools
import json
import os
import re
import subprocess

from manifest_common import (DEPLOY, K8S, PROMETHEUS_JOB, REPO, configmap_reference_errors,
                             generated_configmaps, quantity)


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
