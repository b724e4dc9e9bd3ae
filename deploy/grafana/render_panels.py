#!/usr/bin/python3
"""Renders the Grafana dashboard's panels from real Prometheus data to PNG, one image per row.

Every panel of deploy/grafana/dashboards/specprune.json is drawn from its own queries, evaluated
through Prometheus's HTTP API (query_range for time series, an instant query at the end of the
window for stat and table panels, /api/v1/alerts for the alert list), with the panel's title,
unit and legend format. The picture is what Grafana would show for that window, drawn by
matplotlib (Debian's python3-matplotlib) instead of Grafana, which these machines do not have.

Two ways to run it:

  # against any Prometheus that scrapes SpecPrune Serve (last 10 minutes):
  deploy/grafana/render_panels.py --prometheus http://127.0.0.1:9090 --last 600 --out DIR

  # a real run from scratch: starts specprune_server, Debian's prometheus (1 s scrapes, the
  # repository's rules) and specprune_loadgen in phases (steady, mixed methods, overload with
  # session churn, cool-down; about 4 minutes), then renders that window:
  deploy/grafana/render_panels.py --run --server build/bin/specprune_server \
      --loadgen build/bin/specprune_loadgen --out docs/images/panels

docs/operations.md "The dashboard, panel by panel" shows the committed images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "dashboards", "specprune.json")


# --- Prometheus ------------------------------------------------------------------------------


class Prometheus:
    """The few HTTP API calls the renderer needs. Errors raise RuntimeError with Prometheus's."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def api(self, path: str, **params) -> dict:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            body = json.load(urllib.request.urlopen(url, timeout=30))
        except urllib.error.HTTPError as e:  # 400/422: the body says why
            body = json.load(e)
        if body.get("status") != "success":
            raise RuntimeError(f'{body.get("errorType")}: {body.get("error")} ({path} {params})')
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> List[dict]:
        data = self.api("/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                        step=f"{step:g}")
        return data["result"]

    def query(self, expr: str, at: float) -> List[dict]:
        data = self.api("/api/v1/query", query=expr, time=f"{at:.3f}")
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def ready(self) -> bool:
        try:
            urllib.request.urlopen(self.url + "/-/ready", timeout=1)
            return True
        except (OSError, urllib.error.URLError):
            return False


# --- Dashboard -------------------------------------------------------------------------------


def rows_of(dashboard: dict) -> List[Tuple[str, List[dict]]]:
    """[(row title, panels in it)] in dashboard order; panels of collapsed rows included."""
    rows: List[Tuple[str, List[dict]]] = []
    for panel in sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        if panel.get("type") == "row":
            rows.append((panel.get("title", ""), list(panel.get("panels", []))))
        elif rows:
            rows[-1][1].append(panel)
        else:
            rows.append(("", [panel]))
    return [(title, panels) for title, panels in rows if panels]


def substitute(expr: str, variables: Dict[str, str]) -> str:
    def one(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in variables:
            raise KeyError(f"unknown template variable ${name} in {expr}")
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", one, expr)


def legend(fmt: str, metric: Dict[str, str], drop_instance: bool) -> str:
    if drop_instance:
        fmt = fmt.replace("{{instance}}", "")
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt or "")
    text = " ".join(text.split())
    if not text:
        text = ", ".join(f"{k}={v}" for k, v in sorted(metric.items()) if k != "__name__")
    return text or "value"


# Grafana unit -> (scale, axis label, value formatter).
def unit_of(unit: Optional[str], values: List[float]) -> Tuple[float, str]:
    finite = [abs(v) for v in values if math.isfinite(v)]
    peak = max(finite) if finite else 0.0
    if unit == "s":
        if peak < 1e-3:
            return 1e6, "µs"
        if peak < 1.0:
            return 1e3, "ms"
        return 1.0, "s"
    if unit == "percentunit":
        return 100.0, "%"
    if unit == "bytes":
        return 1.0 / (1 << 20), "MiB"
    if unit == "reqps":
        return 1.0, "requests/s"
    if unit == "ops":
        return 1.0, "per second"
    return 1.0, ""


def format_value(value: float, unit: Optional[str]) -> str:
    if not math.isfinite(value):
        return str(value)
    if unit == "s":
        if value >= 3600:
            return f"{value / 3600:.1f} h"
        if value >= 60:
            return f"{value / 60:.1f} min"
        if value >= 1:
            return f"{value:.2f} s"
        return f"{value * 1e3:.1f} ms"
    if unit == "percentunit":
        return f"{value * 100:.1f} %"
    if unit == "bytes":
        return f"{value / (1 << 20):.0f} MiB"
    return f"{value:g}"


# --- Drawing ---------------------------------------------------------------------------------


class Renderer:
    def __init__(self, prom: Prometheus, variables: Dict[str, str], start: float, end: float,
                 step: float, single_instance: bool):
        self.prom = prom
        self.variables = variables
        self.start, self.end, self.step = start, end, step
        self.single_instance = single_instance
        self.empty_panels: List[str] = []

    def draw_row(self, plt, title: str, panels: List[dict], path: str) -> None:
        top = min(p["gridPos"]["y"] for p in panels)
        bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
        unit_h, title_h, width = 0.42, 0.5, 16.0  # inches per grid row, for the row title, figure
        height = unit_h * (bottom - top) + title_h
        fig = plt.figure(figsize=(width, height))
        # Grafana's 24-column grid; each panel's axes inset by room for its title and tick labels.
        pad_left, pad_right, pad_top, pad_bottom = 0.75, 0.15, 0.35, 0.55  # inches
        for panel in panels:
            g = panel["gridPos"]
            x0, x1 = g["x"] / 24 * width, (g["x"] + g["w"]) / 24 * width
            y1 = height - title_h - (g["y"] - top) * unit_h
            y0 = y1 - g["h"] * unit_h
            rect = [(x0 + pad_left) / width, (y0 + pad_bottom) / height,
                    (x1 - x0 - pad_left - pad_right) / width,
                    (y1 - y0 - pad_top - pad_bottom) / height]
            ax = fig.add_axes(rect)
            kind = panel.get("type")
            try:
                if kind == "timeseries":
                    self.timeseries(ax, panel)
                elif kind == "stat":
                    self.stat(ax, panel)
                elif kind == "table":
                    self.table(ax, panel)
                elif kind == "alertlist":
                    self.alertlist(ax, panel)
                else:
                    self.note(ax, panel, f"panel type {kind!r} is not rendered")
            except Exception as e:  # draw the failure: an honest picture of a broken panel
                self.empty_panels.append(f'{panel.get("title")}: {e}')
                self.note(ax, panel, f"error: {e}")
        fig.suptitle(title or "(no row)", x=0.01, ha="left", fontsize=14, fontweight="bold")
        fig.savefig(path, dpi=72)
        plt.close(fig)

    def note(self, ax, panel: dict, text: str) -> None:
        ax.set_axis_off()
        ax.set_title(panel.get("title", ""), loc="left", fontsize=11)
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, wrap=True,
                transform=ax.transAxes)

    def timeseries(self, ax, panel: dict) -> None:
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        lines = []  # (label, times, values)
        for target in panel.get("targets", []):
            expr = substitute(target["expr"], self.variables)
            for series in self.prom.query_range(expr, self.start, self.end, self.step):
                times = [float(t) - self.start for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                label = legend(target.get("legendFormat", ""), series["metric"],
                               self.single_instance)
                lines.append((label, times, values))
        all_values = [v for _, _, vs in lines for v in vs]
        scale, axis_unit = unit_of(unit, all_values)
        for label, times, values in sorted(lines, key=lambda line: line[0]):
            ax.plot([t / 60 for t in times], [v * scale for v in values], label=label,
                    linewidth=1.4)
        ax.set_title(panel.get("title", ""), loc="left", fontsize=11)
        ax.set_xlim(0, (self.end - self.start) / 60)
        ax.set_xlabel("minutes into the run", fontsize=8, labelpad=1)
        if axis_unit:
            ax.set_ylabel(axis_unit, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if not lines or not any(math.isfinite(v) for v in all_values):
            self.empty_panels.append(panel.get("title", ""))
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            return
        ax.set_ylim(bottom=min(0, min(v * scale for v in all_values if math.isfinite(v))))
        ax.legend(fontsize=7, loc="upper left", ncol=2 if len(lines) > 4 else 1, framealpha=0.7)

    def stat(self, ax, panel: dict) -> None:
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        texts = []
        for target in panel.get("targets", []):
            expr = substitute(target["expr"], self.variables)
            for series in self.prom.query(expr, self.end):
                value = format_value(float(series["value"][1]), unit)
                label = legend(target.get("legendFormat", ""), series["metric"],
                               self.single_instance)
                texts.append(value if self.single_instance else f"{label}: {value}")
        ax.set_axis_off()
        ax.set_title(panel.get("title", ""), loc="left", fontsize=11)
        if not texts:
            self.empty_panels.append(panel.get("title", ""))
        ax.text(0.5, 0.45, "\n".join(texts) or "no data", ha="center", va="center",
                fontsize=22 if len(texts) <= 1 else 12, fontweight="bold", color="#1f77b4",
                transform=ax.transAxes)

    def table(self, ax, panel: dict) -> None:
        rows = []
        for target in panel.get("targets", []):
            expr = substitute(target["expr"], self.variables)
            for series in self.prom.query(expr, self.end):
                labels = {k: v for k, v in series["metric"].items()
                          if k not in ("__name__", "job") and not
                          (self.single_instance and k == "instance")}
                rows.append(labels)
        ax.set_axis_off()
        ax.set_title(panel.get("title", ""), loc="left", fontsize=11)
        if not rows:
            self.empty_panels.append(panel.get("title", ""))
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            return
        keys = sorted({k for r in rows for k in r})
        cells = [[r.get(k, "") for k in keys] for r in rows]
        table = ax.table(cellText=cells, colLabels=keys, loc="center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(9)
        table.scale(1, 1.6)

    def alertlist(self, ax, panel: dict) -> None:
        alerts = self.prom.api("/api/v1/alerts")["alerts"]
        ax.set_axis_off()
        ax.set_title(panel.get("title", "") + " (at the end of the run)", loc="left", fontsize=11)
        if not alerts:
            ax.text(0.02, 0.85, "no alert pending or firing", va="top", fontsize=11,
                    transform=ax.transAxes)
            return
        lines = [f'{a["state"].upper():8s} {a["labels"].get("alertname", "")}  '
                 f'severity={a["labels"].get("severity", "")}' for a in alerts]
        ax.text(0.02, 0.9, "\n".join(lines[:10]), va="top", fontsize=10, family="monospace",
                transform=ax.transAxes)


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") or "panels"


def render(prom_url: str, dashboard_path: str, out_dir: str, start: float, end: float,
           step: float, rate_interval: str, instance: Optional[str]) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prom = Prometheus(prom_url)
    dashboard = json.load(open(dashboard_path))
    instances = sorted({s["metric"].get("instance", "")
                        for s in prom.query_range('up{job="specprune"}', start, end, step)})
    if not instances:
        raise RuntimeError(f"{prom_url} has no up{{job=\"specprune\"}} series in the window")
    variables = {"__rate_interval": rate_interval, "__interval": f"{step:g}s",
                 "__interval_ms": str(int(step * 1000)), "__range": f"{int(end - start)}s",
                 "__range_s": str(int(end - start)), "__range_ms": str(int((end - start) * 1000)),
                 "datasource": "prometheus",
                 "instance": re.escape(instance) if instance else ".*"}
    single = instance is not None or len(instances) == 1
    renderer = Renderer(prom, variables, start, end, step, single)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for index, (title, panels) in enumerate(rows_of(dashboard), start=1):
        path = os.path.join(out_dir, f"{index:02d}_{slug(title)}.png")
        renderer.draw_row(plt, title, panels, path)
        written.append(path)
        print(f"{path}: {', '.join(p.get('title', '') for p in panels)}")
    if renderer.empty_panels:
        print("panels without data: " + "; ".join(renderer.empty_panels), file=sys.stderr)
    return written


# --- A real run ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# (seconds, [(loadgen flags...)]): each phase runs its load generators side by side.
PHASES = [
    ("steady: 2 robots at 5 Hz, specprune", 60,
     [["--robots", "2", "--rate_hz", "5", "--method", "specprune"]]),
    ("mixed methods: specprune, none, fastv", 60,
     [["--robots", "2", "--rate_hz", "5", "--method", "specprune"],
      ["--robots", "1", "--rate_hz", "5", "--method", "none"],
      ["--robots", "1", "--rate_hz", "5", "--method", "fastv"]]),
    ("overload: 6 closed-loop robots over 48 ids + 2 flooders", 45,
     [["--robots", "6", "--robot_id_pool", "48", "--method", "specprune", "--steps", "4",
       "--flood_robots", "2", "--flood_inflight", "24"]]),
    ("cool-down: 1 robot at 2 Hz", 40,
     [["--robots", "1", "--rate_hz", "2", "--method", "specprune"]]),
]


def run_and_render(args) -> int:
    for tool in ("prometheus",):
        if not shutil.which(tool):
            print(f"SKIP: {tool} not installed (apt-get install prometheus)", file=sys.stderr)
            return 77
    work = tempfile.mkdtemp(prefix="render_panels.")
    procs: List[subprocess.Popen] = []

    def start(cmd, log):
        with open(os.path.join(work, log), "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    try:
        metrics_port, prom_port = free_port(), free_port()
        server_out = os.path.join(work, "server.log")
        server = start([args.server, "--host", "127.0.0.1", "--port", "0", "--metrics_port",
                        str(metrics_port), "--max_sessions", "16", "--max_queue_size", "16",
                        "--replica_id", "replica-0"], "server.log")
        grpc_port = None
        for _ in range(600):
            m = re.search(r"^specprune_server listening on [^ ]*:(\d+) ", open(server_out).read(),
                          re.M)
            if m:
                grpc_port = m.group(1)
                break
            if server.poll() is not None:
                break
            time.sleep(0.1)
        if not grpc_port:
            raise RuntimeError("server did not start:\n" + open(server_out).read()[-2000:])

        prom_dir = os.path.join(ROOT, "deploy", "prometheus")
        for name in ("prometheus.yml", "recording_rules.yml", "alert_rules.yml"):
            shutil.copy(os.path.join(prom_dir, name), work)
        config = open(os.path.join(work, "prometheus.yml")).read()
        config = re.sub(r"^( *- targets: ).*# SPECPRUNE_TARGETS.*$",
                        rf'\g<1>["127.0.0.1:{metrics_port}"]', config, flags=re.M)
        config = re.sub(r"^( *[a-z_]*_interval: )15s *# SPECPRUNE_INTERVAL.*$", r"\g<1>1s",
                        config, flags=re.M)
        open(os.path.join(work, "prometheus.yml"), "w").write(config)
        start(["prometheus", f"--config.file={work}/prometheus.yml",
               f"--storage.tsdb.path={work}/tsdb", f"--web.listen-address=127.0.0.1:{prom_port}",
               "--log.level=warn"], "prometheus.log")
        prom = Prometheus(f"http://127.0.0.1:{prom_port}")
        for _ in range(300):
            if prom.ready():
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("prometheus did not become ready")

        t0 = time.time()
        target = f"127.0.0.1:{grpc_port}"
        for i, (what, seconds, loads) in enumerate(PHASES):
            seconds = seconds * args.time_scale
            print(f"== phase {i + 1}/{len(PHASES)} ({seconds:.0f} s): {what}", flush=True)
            gens = []
            for j, flags in enumerate(loads):
                cmd = [args.loadgen, "--target", target, "--steps", "20", "--warmup", "0",
                       "--duration_s", f"{seconds:g}", "--deadline_ms", "5000",
                       "--run_tag", f"render{i}{j}", "--json", os.path.join(work, f"lg{i}{j}.json")]
                gens.append(start(cmd + flags, f"loadgen{i}{j}.log"))  # later flags win
            for gen in gens:
                try:
                    gen.wait(timeout=seconds + 120)
                except subprocess.TimeoutExpired:
                    gen.kill()
                if gen.returncode not in (0,):
                    print(f"   loadgen exited {gen.returncode} (overload phases may)", flush=True)
        time.sleep(5)  # the last scrapes
        t1 = time.time()
        render(prom.url, args.dashboard, args.out, t0 - 10, t1, args.step, args.rate_interval,
               None)
        print(f"window: {t1 - t0 + 10:.0f} s, phases: " + "; ".join(p[0] for p in PHASES))
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if args.keep:
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dashboard", default=DEFAULT_DASHBOARD)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "images", "panels"))
    parser.add_argument("--step", type=float, default=5.0, help="query_range step, seconds")
    parser.add_argument("--rate_interval", default="20s", help="what $__rate_interval becomes")
    parser.add_argument("--prometheus", help="render from this Prometheus (URL)")
    parser.add_argument("--last", type=float, default=600.0, help="window ending now, seconds")
    parser.add_argument("--instance", help="one replica (default: all)")
    parser.add_argument("--run", action="store_true", help="start server, prometheus, loadgen")
    parser.add_argument("--server", default=os.path.join(ROOT, "build", "bin", "specprune_server"))
    parser.add_argument("--loadgen",
                        default=os.path.join(ROOT, "build", "bin", "specprune_loadgen"))
    parser.add_argument("--time_scale", type=float, default=1.0,
                        help="multiplies every phase's duration (0.25 for a quick try)")
    parser.add_argument("--keep", action="store_true", help="keep the run's logs and TSDB")
    args = parser.parse_args()
    if args.run:
        return run_and_render(args)
    if not args.prometheus:
        parser.error("--prometheus URL or --run")
    end = time.time()
    render(args.prometheus, args.dashboard, args.out, end - args.last, end, args.step,
           args.rate_interval, args.instance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
