"""Processes and traffic of the fleet gateway test (deploy/gateway/gateway_test.py): replicas,
the nginx gateway in a temporary prefix, the robots (Python SDK) and the tallies over their
answers."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import os
import re
import signal
import socket
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    """One specprune_server process on a fixed loopback port."""

    def __init__(self, args, work: str, name: str, port: int = 0):
        self.args, self.work, self.name, self.port = args, work, name, port
        self.proc = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        base = os.path.join(self.work, f"{self.name}.{self.starts}")
        cmd = [self.args.server, "--host", "127.0.0.1", "--port", str(self.port),
               "--metrics_port", "0", "--replica_id", self.name, "--model_threads", "1",
               "--preprocess_threads", "1", "--drain_timeout_seconds", "10"]
        if self.args.model_dir:
            cmd += ["--model_dir", self.args.model_dir]
        self.out_path = base + ".out"
        self.err_path = base + ".err"
        self.proc = subprocess.Popen(cmd, stdout=open(self.out_path, "w"),
                                     stderr=open(self.err_path, "w"))

    def wait_listening(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        pattern = re.compile(r"^specprune_server listening on \S+:(\d+) ", re.M)
        while time.monotonic() < end:
            m = pattern.search(open(self.out_path).read())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"replica {self.name} did not start: {open(self.err_path).read()}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Gateway:
    """nginx with deploy/gateway/nginx.conf (only the listen port changed) in a temp prefix."""

    def __init__(self, args, work: str):
        self.args = args
        self.prefix = os.path.join(work, "nginx")
        self.conf_dir = os.path.join(self.prefix, "conf")
        for d in ("conf", "logs", "tmp"):
            os.makedirs(os.path.join(self.prefix, d), exist_ok=True)
        self.port = free_port()
        conf = open(os.path.join(HERE, "nginx.conf")).read()
        conf, n = re.subn(r"^(\s*listen )50050( http2;)$", rf"\g<1>127.0.0.1:{self.port}\g<2>",
                          conf, flags=re.M)
        if n != 1:
            raise RuntimeError("deploy/gateway/nginx.conf: expected one 'listen 50050 http2;'")
        with open(os.path.join(self.conf_dir, "nginx.conf"), "w") as f:
            f.write(conf)
        self.proc = None

    def write_upstreams(self, replicas) -> None:
        subprocess.run([os.path.join(HERE, "gen_upstreams.sh"), "--fail_timeout",
                        f"{self.args.fail_timeout_s}s", "--out",
                        os.path.join(self.conf_dir, "specprune_upstreams.conf")]
                       + [r.address for r in replicas], check=True)

    def _cmd(self):
        return [self.args.nginx, "-p", self.prefix, "-c", os.path.join(self.conf_dir, "nginx.conf"),
                "-e", os.path.join(self.prefix, "logs", "error.log")]

    def start(self) -> None:
        subprocess.run(self._cmd() + ["-t", "-q"], check=True)
        self.proc = subprocess.Popen(self._cmd() + ["-g", "daemon off;"])
        end = time.monotonic() + 10
        while time.monotonic() < end:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("nginx did not start listening: " + self.error_log())

    def workers(self):
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True).stdout
        return {int(x) for x in out.split()}

    def reload(self) -> float:
        """SIGHUP (= nginx -s reload); returns when every old worker has exited (seconds)."""
        subprocess.run(self._cmd() + ["-t", "-q"], check=True)
        old = self.workers()
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGHUP)
        while self.workers() & old or not self.workers():
            if time.monotonic() - t0 > 30:
                raise RuntimeError("nginx reload: old workers still running after 30 s")
            time.sleep(0.05)
        return time.monotonic() - t0

    def error_log(self) -> str:
        try:
            return open(os.path.join(self.prefix, "logs", "error.log")).read()[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Fleet:
    """The robots: one step per robot per round, all robots concurrently, through the SDK."""

    def __init__(self, client, robots: int, info):
        import numpy as np

        self.client = client
        self.ids = [f"gw-robot-{i:02d}" for i in range(robots)]
        self.next_step = {rid: 0 for rid in self.ids}
        rng = np.random.default_rng(26)
        self.images = {cam: rng.integers(0, 256, (info.image_height, info.image_width, 3),
                                         dtype=np.uint8) for cam in info.cameras}
        self.proprio = np.zeros(info.proprio_dim, dtype=np.float32)
        self.pool = cf.ThreadPoolExecutor(robots)
        self.rounds = []  # [(phase, {robot: record})]

    def _one(self, rid: str, step: int) -> dict:
        from specprune_client import PolicyError

        t0 = time.monotonic()
        try:
            p = self.client.predict_full(rid, self.images, "put the red cube on the plate",
                                         self.proprio, episode_id="ep", step=step)
        except PolicyError as e:
            return {"ok": False, "step": step, "code": e.code.name, "error": e.message,
                    "t0": t0, "t1": time.monotonic()}
        return {"ok": True, "step": step, "replica": p.replica,
                "restarted": p.session_restarted, "cached": p.cached,
                "mismatch": p.robot_id != rid or p.step != step or p.episode_id != "ep",
                "t0": t0, "t1": time.monotonic()}

    def round(self, phase: str, at_half=None) -> dict:
        """One step of every robot; `at_half()` runs once half of the answers are in."""
        futures = {}
        for rid in self.ids:
            futures[self.pool.submit(self._one, rid, self.next_step[rid])] = rid
            self.next_step[rid] += 1  # a step is consumed when sent, whatever the outcome
        records, done = {}, 0
        for f in cf.as_completed(futures):
            records[futures[f]] = f.result()
            done += 1
            if at_half is not None and done == len(futures) // 2:
                at_half()
        self.rounds.append((phase, records))
        return records

    def phase_records(self, phase: str):
        return [records for p, records in self.rounds if p == phase]

    def last_replica(self):
        """robot -> replica of its latest answered step."""
        out = {}
        for _, records in self.rounds:
            for rid, r in records.items():
                if r["ok"]:
                    out[rid] = r["replica"]
        return out


def probe(client_channel_target: str, keys) -> dict:
    """robot id -> replica answering a GetModelInfo sent with that x-robot-id (no model work)."""
    import grpc
    from specprune.v1 import vla_service_pb2 as pb
    from specprune.v1 import vla_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(client_channel_target) as channel:
        stub = pb_grpc.VlaServiceStub(channel)

        def one(key):
            for attempt in range(5):
                try:
                    _, call = stub.GetModelInfo.with_call(
                        pb.GetModelInfoRequest(), timeout=10, metadata=(("x-robot-id", key),))
                    return key, dict(call.initial_metadata()).get("x-specprune-replica", "")
                except grpc.RpcError:
                    if attempt == 4:
                        raise
                    time.sleep(0.1)

        with cf.ThreadPoolExecutor(16) as pool:
            return dict(pool.map(one, keys))


class Checks:
    def __init__(self):
        self.items = []

    def add(self, name: str, ok: bool, detail) -> None:
        self.items.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.items)


def tally(rounds) -> dict:
    """Counts over a list of round record dicts."""
    t = collections.Counter()
    codes = collections.Counter()
    for records in rounds:
        for r in records.values():
            t["requests"] += 1
            if not r["ok"]:
                t["failed"] += 1
                codes[r["code"]] += 1
                continue
            t["answered"] += 1
            t["mismatched"] += r["mismatch"]
            t["session_restarted"] += r["restarted"]
            t["cached"] += r["cached"]
    return {**t, "failed_codes": dict(codes)}


def restarts_by_robot(rounds) -> collections.Counter:
    c = collections.Counter()
    for records in rounds:
        for rid, r in records.items():
            if r["ok"] and r["restarted"]:
                c[rid] += 1
    return c


def replicas_by_robot(rounds) -> dict:
    out = collections.defaultdict(list)
    for records in rounds:
        for rid, r in records.items():
            if r["ok"]:
                out[rid].append(r["replica"])
    return out
