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
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

from consistency import consistency_errors, container, find
from manifest_common import (DEPLOY, K8S, REPO, SKIP, Missing, configmap_reference_errors,
                             generated_configmaps, read, rel)


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


def kustomize_render(sub):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return None
    out = subprocess.run([kubectl, "kustomize", os.path.join(K8S, sub)], capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {sub}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


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
