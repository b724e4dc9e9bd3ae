#!/usr/bin/python3
"""Static checks of the gateway configs (no Envoy here: Envoy is not in Debian).

- envoy.yaml parses as YAML and routes like nginx.conf: ring hash on the x-robot-id header, the
  same listen port, buffer limits equal to nginx's client_max_body_size, gRPC health checks and
  outlier detection present, HTTP/2 to the replicas, no route timeout (client deadlines rule).
- nginx.conf: consistent hash on $http_x_robot_id, client_max_body_size = the server's default
  max_message_bytes + 5 (read from server/server_config.h), and, when nginx is installed,
  `nginx -t` accepts it with the shipped replica list.

Exit 0 when all hold, 1 otherwise (each failure printed).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GRPC_FRAME_HEADER = 5


def server_max_message_bytes() -> int:
    text = open(os.path.join(ROOT, "server", "server_config.h")).read()
    m = re.search(r"int64_t max_message_bytes = (\d+) << (\d+);", text)
    if not m:
        raise SystemExit("server/server_config.h: max_message_bytes default not found")
    return int(m.group(1)) << int(m.group(2))


def main() -> int:
    failures = []

    def check(ok, what):
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    nginx = open(os.path.join(HERE, "nginx.conf")).read()
    body = re.findall(r"^\s*client_max_body_size (\d+);", nginx, re.M)
    limit = server_max_message_bytes() + GRPC_FRAME_HEADER
    check(body == [str(limit), "0"], f"nginx client_max_body_size {body}: max_message_bytes + 5 "
          f"({limit}) for unary calls, 0 (no total) for StreamPredict")
    check(re.search(r"^\s*hash \$http_x_robot_id consistent;", nginx, re.M) is not None,
          "nginx: hash $http_x_robot_id consistent")
    port = re.search(r"^\s*listen (\d+) http2;", nginx, re.M)
    check(port is not None, "nginx: one cleartext HTTP/2 listen port")

    envoy = yaml.safe_load(open(os.path.join(HERE, "envoy.yaml")))
    listener = envoy["static_resources"]["listeners"][0]
    cluster = envoy["static_resources"]["clusters"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    check(port is not None and listener["address"]["socket_address"]["port_value"]
          == int(port.group(1)), "envoy listens on the nginx gateway port")
    check(route["hash_policy"] == [{"header": {"header_name": "x-robot-id"}}],
          "envoy route hashes on the x-robot-id header")
    check(cluster["lb_policy"] == "RING_HASH" and route["cluster"] == cluster["name"],
          "envoy cluster is RING_HASH and the route uses it")
    check(listener["per_connection_buffer_limit_bytes"] == limit
          and cluster["per_connection_buffer_limit_bytes"] == limit,
          "envoy buffer limits == max_message_bytes + 5")
    check(route["timeout"] in ("0s", 0) and "grpc_timeout_header_max" in route[
        "max_stream_duration"], "envoy: no route timeout, grpc-timeout honoured")
    hc = cluster["health_checks"][0]
    check("grpc_health_check" in hc and "outlier_detection" in cluster,
          "envoy: gRPC health checks and outlier detection")
    opts = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    check("http2_protocol_options" in opts["explicit_http_config"], "envoy: HTTP/2 upstream")
    check(cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"]["port_value"] == 50051, "envoy: replicas on the server port 50051")

    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    if os.access(nginx_bin, os.X_OK):
        with tempfile.TemporaryDirectory() as prefix:
            for d in ("logs", "tmp"):
                os.makedirs(os.path.join(prefix, d))
            r = subprocess.run([nginx_bin, "-t", "-q", "-p", prefix, "-c",
                                os.path.join(HERE, "nginx.conf"), "-e", "stderr"],
                               capture_output=True, text=True)
            check(r.returncode == 0, f"nginx -t accepts nginx.conf {r.stderr.strip()}")
    else:
        print("skip nginx -t (nginx not installed)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
