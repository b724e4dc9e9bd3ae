"""What the offline checks of deploy/k8s/ share (validate_manifests.py, consistency.py): the
paths, reading files, Kubernetes/compose quantities, and the ConfigMaps kustomize generates."""

import os
import re

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
