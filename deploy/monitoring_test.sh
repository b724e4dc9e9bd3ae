#!/usr/bin/env bash
# Proves the monitoring against a real Prometheus and a real server:
#   1. promtool: check config, check rules, and the rule unit tests (deploy/prometheus/tests/).
#   2. Starts specprune_server (metrics on a free port) and Debian's prometheus on a free port with
#      a temporary copy of deploy/prometheus/prometheus.yml (target and intervals rewritten: 1 s
#      scrapes), drives the server with specprune_loadgen (or specprune_cli predict calls when the
#      load generator is absent) and waits for the scrapes.
#   3. Evaluates every target expr of every panel of deploy/grafana/dashboards/specprune.json
#      through Prometheus's HTTP API (template variables replaced by concrete values; $instance
#      by what the dashboard's own variable query finds) and fails, listing the panels, when a
#      query errors or returns no data (or only NaN). Also requires every loaded recording and
#      alerting rule to evaluate without error.
# Exit 0 pass, 1 fail, 77 skip (prometheus or promtool not installed: apt-get install prometheus).
# Bounded: every wait has a deadline; the whole run takes well under 3 minutes.
# usage: deploy/monitoring_test.sh [SERVER_BINARY [LOADGEN_BINARY [CLI_BINARY]]]
#        (defaults: build/bin/specprune_server, build/bin/specprune_loadgen, build/bin/specprune_cli)
set -euo pipefail

script_dir=${BASH_SOURCE[0]%/*}
[[ $script_dir != "${BASH_SOURCE[0]}" ]] || script_dir=.
root=$(cd "$script_dir/.." && pwd)
server_bin=${1:-$root/build/bin/specprune_server}
loadgen_bin=${2:-$root/build/bin/specprune_loadgen}
cli_bin=${3:-$root/build/bin/specprune_cli}
prom_dir=$root/deploy/prometheus
dashboard=$root/deploy/grafana/dashboards/specprune.json
python=/usr/bin/python3

for tool in prometheus promtool; do
  if ! command -v "$tool" > /dev/null; then
    echo "SKIP: $tool not installed (apt-get install prometheus)"
    exit 77
  fi
done
if [[ ! -x $server_bin ]]; then
  echo "FAIL: server binary $server_bin not found (build specprune_server)" >&2
  exit 1
fi

work=$(mktemp -d)
pids=()
failed=1
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2> /dev/null; then
      kill -TERM "$pid" 2> /dev/null || true
    fi
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2> /dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2> /dev/null || true
    wait "$pid" 2> /dev/null || true
  done
  if ((failed)); then
    for log in server.err prometheus.log loadgen.err; do
      if [[ -s $work/$log ]]; then
        echo "--- tail of $log" >&2
        tail -n 20 "$work/$log" >&2
      fi
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- 1. promtool ----------------------------------------------------------------------------------
echo "== promtool check config / check rules / test rules"
promtool check config "$prom_dir/prometheus.yml" || fail "promtool check config"
promtool check rules "$prom_dir/recording_rules.yml" "$prom_dir/alert_rules.yml" ||
  fail "promtool check rules"
promtool test rules "$prom_dir"/tests/*.yml || fail "promtool test rules"

# Every alert has a runbook_url, and its anchor is a heading of docs/operations.md.
"$python" - "$prom_dir/alert_rules.yml" "$root/docs/operations.md" << 'EOF' || fail "runbook links"
import re, sys
rules, doc = open(sys.argv[1]).read(), open(sys.argv[2]).read()
alerts = re.findall(r"^\s*- alert:\s*(\S+)", rules, re.M)
urls = re.findall(r'^\s*runbook_url:\s*"?docs/operations\.md#([\w-]+)"?', rules, re.M)
anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
           for h in re.findall(r"^#+\s+(.*)$", doc, re.M)}
bad = [u for u in urls if u not in anchors]
if len(urls) != len(alerts) or bad or [a.lower() for a in alerts] != urls:
    sys.exit(f"alerts {alerts}: runbook anchors {urls}; missing from docs/operations.md: {bad}")
print(f"runbook links: {len(alerts)} alerts, each with a section in docs/operations.md")
EOF

# --- 2. server, prometheus, load -----------------------------------------------------------------
metrics_port=$(free_port)
prom_port=$(free_port)
[[ $metrics_port != "$prom_port" ]] || prom_port=$(free_port)

echo "== starting specprune_server (metrics on $metrics_port)"
"$server_bin" --host 127.0.0.1 --port 0 --metrics_port "$metrics_port" \
  > "$work/server.out" 2> "$work/server.err" &
server_pid=$!
pids+=("$server_pid")
grpc_port=""
for _ in $(seq 1 300); do  # 30 s for the model to load
  grpc_port=$(sed -n 's/^specprune_server listening on [^ ]*:\([0-9]*\) .*/\1/p' "$work/server.out")
  [[ -z $grpc_port ]] || break
  kill -0 "$server_pid" 2> /dev/null || break
  sleep 0.1
done
[[ -n $grpc_port ]] || fail "server did not report its port"

# The repository's config, with the replica list and the intervals rewritten on their marked lines.
cp "$prom_dir/prometheus.yml" "$prom_dir/recording_rules.yml" "$prom_dir/alert_rules.yml" "$work/"
sed -i -e "s|^\( *- targets: \).*# SPECPRUNE_TARGETS.*|\1[\"127.0.0.1:$metrics_port\"]|" \
  -e "s|^\( *[a-z_]*_interval: \)15s *# SPECPRUNE_INTERVAL.*|\11s|" "$work/prometheus.yml"
grep -q "127.0.0.1:$metrics_port" "$work/prometheus.yml" || fail "could not rewrite the target"
[[ $(grep -c '_interval: 1s$' "$work/prometheus.yml") == 2 ]] ||
  fail "could not rewrite the intervals"
promtool check config "$work/prometheus.yml" > /dev/null || fail "rewritten config is invalid"

echo "== starting prometheus on 127.0.0.1:$prom_port"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn > "$work/prometheus.log" 2>&1 &
prom_pid=$!
pids+=("$prom_pid")
prom_url="http://127.0.0.1:$prom_port"
ready=0
for _ in $(seq 1 300); do  # 30 s
  if "$python" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
    "$prom_url/-/ready" 2> /dev/null; then
    ready=1
    break
  fi
  kill -0 "$prom_pid" 2> /dev/null || break
  sleep 0.1
done
((ready)) || fail "prometheus did not become ready"

# query EXPR: prints the first sample's value of an instant query ("" when empty).
query() {
  "$python" - "$prom_url" "$1" << 'EOF'
import json, sys, urllib.parse, urllib.request
url = sys.argv[1] + "/api/v1/query?" + urllib.parse.urlencode({"query": sys.argv[2]})
res = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
print(res[0]["value"][1] if res else "")
EOF
}

up=""
for _ in $(seq 1 60); do  # 30 s
  up=$(query 'up{job="specprune"}')
  [[ $up != 1 ]] || break
  sleep 0.5
done
[[ $up == 1 ]] || fail "prometheus does not scrape the server (up=\"$up\")"

requests=0
if [[ -x $loadgen_bin ]]; then
  # Only flags whose spelling is the same with dashes or underscores.
  echo "== specprune_loadgen: 4 robots x 30 steps, method specprune"
  timeout 90 "$loadgen_bin" --target "127.0.0.1:$grpc_port" --robots 4 --steps 30 --warmup 1 \
    --method specprune --json "$work/loadgen.json" > "$work/loadgen.out" 2> "$work/loadgen.err" ||
    fail "specprune_loadgen exited $?"
  requests=120
elif [[ -x $cli_bin ]]; then
  echo "== specprune_loadgen not found; 20 specprune_cli predict calls"
  for step in $(seq 0 19); do
    timeout 20 "$cli_bin" predict --target "127.0.0.1:$grpc_port" --robot monitoring-test \
      --episode monitoring-test --step "$step" --instruction "put the red block on the plate" \
      --synthetic --method specprune > /dev/null 2>> "$work/loadgen.err" ||
      fail "specprune_cli predict exited $?"
  done
  requests=20
else
  fail "neither $loadgen_bin nor $cli_bin exists"
fi
# The action-quality panels compare pruning with unpruned robots and show diagnostic requests:
# one unpruned episode (3 steps, 2 seams) and one diagnostic SpecPrune episode (3 steps).
if [[ -x $cli_bin ]]; then
  echo "== specprune_cli: an unpruned episode and a diagnostic episode (action-quality panels)"
  for args in "--method none" "--method specprune --diagnostic"; do
    for step in 0 1 2; do
      # shellcheck disable=SC2086  # $args is two flags
      timeout 20 "$cli_bin" predict --target "127.0.0.1:$grpc_port" --robot "quality-${args// /}" \
        --episode quality --step "$step" --instruction "put the red block on the plate" \
        --synthetic $args > /dev/null 2>> "$work/loadgen.err" || fail "specprune_cli predict exited $?"
      requests=$((requests + 1))
    done
  done
fi

# Wait until a scrape has seen the whole load, then a few more scrapes.
at_least() {  # VALUE MIN: VALUE is a number >= MIN
  [[ -n $1 ]] && "$python" -c "import sys; sys.exit(float(sys.argv[1]) < float(sys.argv[2]))" "$1" "$2"
}
seen=""
for _ in $(seq 1 60); do  # 30 s
  seen=$(query 'sum(specprune_forward_passes_total{job="specprune"})')
  ! at_least "$seen" "$requests" || break
  sleep 0.5
done
at_least "$seen" "$requests" || fail "prometheus saw ${seen:-no} forward passes, expected $requests"
sleep 3

# --- 3. every dashboard query, every rule ------------------------------------------------------
echo "== evaluating every panel query of $(basename "$dashboard")"
"$python" - "$prom_url" "$dashboard" "127.0.0.1:$metrics_port" "$root/deploy/grafana" << 'EOF'
import json, math, re, sys, time, urllib.error, urllib.parse, urllib.request

prom, dashboard_path, want_instance, grafana_dir = sys.argv[1:5]
sys.path.insert(0, grafana_dir)
from render_panels import substitute as substitute_variables  # Grafana's $var / ${var} / [[var]]


def api(path, **params):
    url = prom + path + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        body = json.load(urllib.request.urlopen(url, timeout=10))
    except urllib.error.HTTPError as e:  # 400/422: a bad query; the body says why
        body = json.load(e)
    if body.get("status") != "success":
        raise RuntimeError(f'{body.get("errorType")}: {body.get("error")}')
    return body["data"]


dash = json.load(open(dashboard_path))
problems = []

# Structure: what Grafana needs to load the JSON.
for key in ("title", "uid", "schemaVersion", "panels", "templating"):
    if key not in dash:
        problems.append(f"dashboard: no {key!r}")
panels = []
for p in dash.get("panels", []):
    panels.append(p)
    panels.extend(p.get("panels", []))  # panels of collapsed rows
ids = [p.get("id") for p in panels]
if len(ids) != len(set(ids)):
    problems.append(f"dashboard: duplicate panel ids {sorted(i for i in ids if ids.count(i) > 1)}")
for p in panels:
    g = p.get("gridPos", {})
    if not all(isinstance(g.get(k), int) for k in ("h", "w", "x", "y")) or g["x"] + g["w"] > 24:
        problems.append(f'panel "{p.get("title")}": bad gridPos {g}')
    if p.get("type") not in ("row", "alertlist", "text") and not p.get("targets"):
        problems.append(f'panel "{p.get("title")}": no targets')

# Template variables: $instance from the variable's own label_values() query.
variables = {"__rate_interval": "1m", "__interval": "15s", "__interval_ms": "15000",
             "__range": "5m", "__range_s": "300", "__range_ms": "300000"}
for var in dash.get("templating", {}).get("list", []):
    name = var["name"]
    if var["type"] == "datasource":
        variables[name] = var.get("current", {}).get("value", "")
        continue
    q = var.get("query")
    q = q.get("query", "") if isinstance(q, dict) else (q or var.get("definition", ""))
    m = re.fullmatch(r"\s*label_values\((?:(.*),\s*)?(\w+)\)\s*", q)
    if var["type"] != "query" or not m:
        problems.append(f"variable ${name}: cannot evaluate {q!r}")
        continue
    try:
        if m.group(1):
            values = {s["metric"].get(m.group(2)) for s in api("/api/v1/query", query=m.group(1))["result"]}
        else:
            values = set(api(f"/api/v1/label/{m.group(2)}/values"))
    except Exception as e:
        problems.append(f"variable ${name}: {q}: {e}")
        continue
    values.discard(None)
    print(f"variable ${name} = {sorted(values)}  ({q})")
    if name == "instance" and want_instance not in values:
        problems.append(f"variable $instance: {want_instance} not among {sorted(values)}")
    variables[name] = want_instance if name == "instance" else (sorted(values) or [""])[0]


def substitute(expr):
    return substitute_variables(expr, variables)


def check(label, expr):
    """Returns None when expr gives data, else why not."""
    try:
        data = api("/api/v1/query", query=substitute(expr), time=f"{time.time():.3f}")
    except Exception as e:
        return f"error: {e}"
    result = data["result"]
    if data["resultType"] == "scalar":
        result = [{"value": result}]
    if not result:
        return "no data"
    if all(math.isnan(float(s["value"][1])) for s in result):
        return "only NaN"
    return None


# The checker must see an empty result as a failure.
assert check("self-test", 'specprune_no_such_metric{job="specprune"}') == "no data"

checked = 0
failing_panels = []
for p in panels:
    for t in p.get("targets", []):
        if "expr" not in t:
            problems.append(f'panel "{p["title"]}" target {t.get("refId")}: no expr')
            continue
        checked += 1
        why = check(p["title"], t["expr"])
        n = "" if why else f' ({len(api("/api/v1/query", query=substitute(t["expr"]))["result"])} series)'
        print(f'{"ok  " if not why else "FAIL"} {p["title"]} [{t.get("refId")}]{n}' + (f": {why}" if why else ""))
        if why:
            problems.append(f'panel "{p["title"]}" target {t.get("refId")}: {why}: {substitute(t["expr"])}')
            failing_panels.append(p["title"])

# Every rule loaded and evaluated without error.
groups = api("/api/v1/rules")["groups"]
rules = [r for g in groups for r in g["rules"]]
if len(rules) == 0:
    problems.append("prometheus loaded no rules")
for r in rules:
    if r.get("health") not in ("ok",):
        problems.append(f'rule {r.get("name")}: health {r.get("health")!r} {r.get("lastError", "")}')
firing = sorted({a["labels"]["alertname"] + "(" + a["state"] + ")" for r in rules for a in r.get("alerts", [])})
print(f"rules: {len(rules)} evaluated in {len(groups)} groups; active alerts: {', '.join(firing) or 'none'}")

print(f"{checked} panel queries checked")
if problems:
    print(f"\n{len(problems)} problem(s); failing panels: {sorted(set(failing_panels)) or 'none'}",
          file=sys.stderr)
    for p in problems:
        print("  " + p, file=sys.stderr)
    sys.exit(1)
EOF

failed=0
echo "PASS: monitoring (promtool checks and rule tests; every dashboard query returns data)"
