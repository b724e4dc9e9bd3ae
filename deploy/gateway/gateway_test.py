#!/usr/bin/python3
"""Fleet gateway test: real nginx (deploy/gateway/nginx.conf) in front of real replicas.

On loopback: N replicas of specprune_server (the embedded model, distinct ports and replica_id),
nginx as a non-root-style process in a temporary prefix (own pid, logs and temp paths), and the
Python SDK (client/python, with its retries) driving 64 robots through the gateway in rounds
(every robot sends one step per round, all robots concurrently). Phases:

  sticky    3 replicas: every robot is answered by exactly one replica.
  kill      kill -9 one replica while a round is in flight: every request is answered exactly once
            (0 lost, 0 mismatched robot/step); only that replica's robots see session_restarted
            (once each) and move; the other robots keep their replica and are never restarted.
  return    the killed replica is started again (same address): its robots go back to it; the
            other robots are untouched.
  drain     SIGTERM one replica while a round is in flight, then start it again (a rolling
            restart): 0 failed requests; the replica exits 0 after answering its in-flight calls.
  scale     a fourth replica joins (new replica list + nginx reload): the fraction of robots (and
            of 1024 probe keys) that move is reported, must be at most ~1/4 (<= max_move), and
            every key that moves, moves to the new replica.

Exit 0 when every check passed, 1 otherwise, 77 when nginx is not installed (ctest SKIP).
--json FILE writes the run's numbers and checks.

  PYTHONPATH=client/python:build/python /usr/bin/python3 deploy/gateway/gateway_test.py \\
      --server build/bin/specprune_server --json /tmp/gateway.json
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import os
import shutil
import signal
import sys
import tempfile
import time

from gateway_fleet import (Checks, Fleet, Gateway, Replica, probe, replicas_by_robot,
                           restarts_by_robot, tally)

SKIP = 77


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", required=True, help="specprune_server binary")
    p.add_argument("--model_dir", default="", help="model directory (default: the server's)")
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--json", default="", help="write the result here")
    p.add_argument("--robots", type=int, default=64)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--probe_keys", type=int, default=1024,
                   help="robot ids probed (GetModelInfo) to measure how many move on scale-out")
    p.add_argument("--max_move", type=float, default=0.33,
                   help="largest fraction of probe keys that may move when one replica joins N")
    p.add_argument("--fail_timeout_s", type=int, default=2,
                   help="nginx fail_timeout of each replica in this test (production: 10s)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p.parse_args()


def phase_sticky(fleet, checks, rounds: int = 4) -> dict:
    for _ in range(rounds):
        fleet.round("sticky")
    recs = fleet.phase_records("sticky")
    per_robot = replicas_by_robot(recs)
    sticky = sum(1 for rid in fleet.ids if len(set(per_robot[rid])) == 1)
    t = tally(recs)
    spread = collections.Counter(v[0] for v in per_robot.values() if v)
    checks.add("sticky: every robot on exactly one replica", sticky == len(fleet.ids),
               f"{sticky}/{len(fleet.ids)} robots on one replica, spread {dict(spread)}")
    checks.add("sticky: every request answered, none restarted",
               t.get("failed", 0) == 0 and t.get("mismatched", 0) == 0
               and t.get("session_restarted", 0) == 0, t)
    return {"rounds": rounds, "tally": t, "spread": dict(spread), "sticky_robots": sticky}


def phase_kill(fleet, checks, replicas, victim, rounds: int = 3) -> dict:
    before = fleet.last_replica()
    moved_set = {rid for rid in fleet.ids if before[rid] == victim.name}
    killed_at = {}

    def kill():
        killed_at["t"] = time.monotonic()
        victim.signal(signal.SIGKILL)

    fleet.round("kill", at_half=kill)
    victim.wait_exit()
    for _ in range(rounds - 1):
        fleet.round("kill")
    recs = fleet.phase_records("kill")
    t = tally(recs)
    restarts = restarts_by_robot(recs)
    per_robot = replicas_by_robot(recs)
    in_flight = sum(1 for r in recs[0].values() if r["t0"] <= killed_at["t"] <= r["t1"])
    checks.add("kill -9: every request answered exactly once (0 lost, 0 mismatched)",
               t.get("failed", 0) == 0 and t.get("mismatched", 0) == 0
               and t.get("answered", 0) == t["requests"],
               f"{t}, {in_flight} calls in flight at the kill")
    victims_ok = all(restarts[rid] == 1 and victim.name not in set(per_robot[rid][-1:])
                     and len(set(per_robot[rid][1:])) <= 1 for rid in moved_set)
    checks.add("kill -9: the killed replica's robots restart once each and move",
               victims_ok and len(moved_set) > 0,
               {"robots": len(moved_set),
                "restarts": sorted(collections.Counter(restarts[r] for r in moved_set).items()),
                "new_replicas": dict(collections.Counter(per_robot[r][-1] for r in moved_set))})
    others = [rid for rid in fleet.ids if rid not in moved_set]
    untouched = [rid for rid in others
                 if restarts[rid] == 0 and set(per_robot[rid]) == {before[rid]}]
    checks.add("kill -9: the other robots are untouched (same replica, no restart)",
               len(untouched) == len(others), f"{len(untouched)}/{len(others)}")
    return {"victim": victim.name, "victim_robots": len(moved_set), "in_flight_at_kill": in_flight,
            "tally": t}


def phase_return(fleet, checks, victim, fail_timeout_s: int) -> dict:
    before = fleet.last_replica()
    victim.start()
    victim.wait_listening()
    time.sleep(fail_timeout_s + 0.5)  # nginx tries a failed replica again after fail_timeout
    for _ in range(2):
        fleet.round("return")
    recs = fleet.phase_records("return")
    t = tally(recs)
    final = {rid: replicas_by_robot(recs)[rid][-1] for rid in fleet.ids}
    returned = [rid for rid in fleet.ids if final[rid] == victim.name]
    restarts = restarts_by_robot(recs)
    others_ok = all(restarts[rid] == 0 and final[rid] == before[rid]
                    for rid in fleet.ids if rid not in returned)
    checks.add("return: the restarted replica takes robots back, others untouched",
               t.get("failed", 0) == 0 and len(returned) > 0 and others_ok,
               {"returned": len(returned), "tally": t})
    return {"returned_robots": len(returned), "tally": t}


def phase_drain(fleet, checks, replica, fail_timeout_s: int, max_rounds: int = 12) -> dict:
    before = fleet.last_replica()
    own = {rid for rid in fleet.ids if before[rid] == replica.name}
    state = {}

    def sigterm():
        state["t"] = time.monotonic()
        replica.signal(signal.SIGTERM)

    fleet.round("drain", at_half=sigterm)
    # Rolling restart: wait for the old process to finish draining, start the new one, while
    # the robots keep stepping.
    restart = cf.ThreadPoolExecutor(1)

    def roll():
        rc = replica.wait_exit()
        state["exit_code"] = rc
        state["drain_s"] = time.monotonic() - state["t"]
        replica.start()
        replica.wait_listening()
        state["back"] = time.monotonic()
        return rc

    job = restart.submit(roll)
    for _ in range(max_rounds):
        fleet.round("drain")
        if "back" in state and time.monotonic() - state["back"] > fail_timeout_s + 0.5:
            break
    job.result()
    # Robots back on the restarted replica. A request that failed while it restarted marks it
    # failed for fail_timeout from that moment; on a loaded machine that can end after the wait
    # above, so step on (bounded) until the replica's robots are back or the bound passes.
    deadline = time.monotonic() + 3 * (fail_timeout_s + 0.5)
    while True:
        fleet.round("drain")
        if all(fleet.last_replica()[rid] == replica.name for rid in own) \
                or time.monotonic() > deadline:
            break
    recs = fleet.phase_records("drain")
    t = tally(recs)
    drained = sum(1 for r in recs[0].values()
                  if r["ok"] and r["replica"] == replica.name and r["t1"] > state["t"])
    checks.add("SIGTERM (rolling restart): 0 failed requests",
               t.get("failed", 0) == 0 and t.get("mismatched", 0) == 0, t)
    checks.add("SIGTERM: the replica drains and exits 0", state.get("exit_code") == 0,
               {"exit_code": state.get("exit_code"), "drain_s": round(state["drain_s"], 3),
                "answered_by_it_after_sigterm": drained})
    final = fleet.last_replica()
    restarts = restarts_by_robot(recs)
    others = [rid for rid in fleet.ids if rid not in own]
    untouched = [rid for rid in others if restarts[rid] == 0 and final[rid] == before[rid]]
    checks.add("SIGTERM: only the drained replica's robots move; they come back",
               len(untouched) == len(others)
               and all(final[rid] == replica.name for rid in own),
               {"own_robots": len(own), "untouched_others": f"{len(untouched)}/{len(others)}",
                "rounds": len(recs)})
    return {"replica": replica.name, "own_robots": len(own), "exit_code": state.get("exit_code"),
            "drain_seconds": state.get("drain_s"), "answered_after_sigterm": drained,
            "rounds": len(recs), "tally": t}


def phase_scale(fleet, checks, gateway, replicas, newcomer, probe_keys: int,
                max_move: float) -> dict:
    target = f"127.0.0.1:{gateway.port}"
    keys = [f"probe-{i:04d}" for i in range(probe_keys)]
    before_keys = probe(target, keys)
    before = fleet.last_replica()
    newcomer.start()
    newcomer.wait_listening()
    gateway.write_upstreams(replicas + [newcomer])
    reload_s = gateway.reload()
    after_keys = probe(target, keys)
    for _ in range(2):
        fleet.round("scale")
    recs = fleet.phase_records("scale")
    t = tally(recs)
    per_robot = replicas_by_robot(recs)
    moved = [rid for rid in fleet.ids if per_robot[rid][-1] != before[rid]]
    moved_keys = [k for k in keys if after_keys[k] != before_keys[k]]
    key_fraction = len(moved_keys) / len(keys)
    robot_fraction = len(moved) / len(fleet.ids)
    restarts = restarts_by_robot(recs)
    checks.add(f"scale-out 3->4: at most ~1/4 of the keys move (<= {max_move})",
               key_fraction <= max_move and robot_fraction <= max_move + 0.1,
               {"probe_keys_moved": f"{len(moved_keys)}/{len(keys)} = {key_fraction:.3f}",
                "robots_moved": f"{len(moved)}/{len(fleet.ids)} = {robot_fraction:.3f}"})
    only_to_new = all(after_keys[k] == newcomer.name for k in moved_keys) and all(
        per_robot[rid][-1] == newcomer.name for rid in moved)
    checks.add("scale-out: every moved key went to the new replica; moved robots restart once",
               only_to_new and len(moved_keys) > 0 and t.get("failed", 0) == 0
               and all(restarts[rid] == (1 if rid in moved else 0) for rid in fleet.ids),
               {"tally": t, "new_replica_share": round(
                   sum(1 for k in keys if after_keys[k] == newcomer.name) / len(keys), 3)})
    return {"reload_seconds": round(reload_s, 3), "probe_keys": len(keys),
            "probe_keys_moved": len(moved_keys), "probe_key_fraction_moved": key_fraction,
            "robots_moved": len(moved), "robot_fraction_moved": robot_fraction,
            "spread_after": dict(collections.Counter(after_keys.values())), "tally": t}


def check_message_limit(target: str, checks, max_message_bytes: int = 16 << 20) -> dict:
    """A Predict of exactly max_message_bytes reaches a replica (which answers about its
    content); one byte more is stopped by the gateway (client_max_body_size) as
    RESOURCE_EXHAUSTED."""
    import grpc
    from specprune.v1 import vla_service_pb2 as pb
    from specprune.v1 import vla_service_pb2_grpc as pb_grpc

    out = {}
    options = [("grpc.max_send_message_length", 2 * max_message_bytes)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.VlaServiceStub(channel)
        for size in (max_message_bytes, max_message_bytes + 1):
            req = pb.PredictRequest(robot_id="gw-limit", instruction="x")
            image = req.images.add()
            image.encoded = b"x"
            image.encoded = b"x" * (1 + size - req.ByteSize())  # length prefix may grow by one
            if req.ByteSize() > size:
                image.encoded = image.encoded[: size - req.ByteSize()]
            assert req.ByteSize() == size
            try:
                stub.Predict(req, timeout=30, metadata=(("x-robot-id", "gw-limit"),))
                out[size] = "OK"
            except grpc.RpcError as e:
                out[size] = f"{e.code().name}: {e.details()}"
    at, over = out[max_message_bytes], out[max_message_bytes + 1]
    checks.add("max message size: the gateway passes max_message_bytes, stops one byte more",
               "gateway" not in at and at.startswith("INVALID_ARGUMENT")
               and over.startswith("RESOURCE_EXHAUSTED") and "gateway" in over,
               {"at_limit": at, "over_limit": over})
    return {str(k): v for k, v in out.items()}


def nginx_log_counts(gateway) -> dict:
    log = gateway.error_log()
    return {"connect_refused": log.count("(111: Connection refused)"),
            "upstream_reset_or_closed":
                log.count("prematurely closed") + log.count("reset by peer"),
            "no_live_upstreams": log.count("no live upstreams")}


def main() -> int:
    args = parse_args()
    if not (args.nginx and os.access(args.nginx, os.X_OK)):
        print("SKIP: nginx is not installed (apt-get install nginx-light)")
        return SKIP
    from specprune_client import PolicyClient

    work = tempfile.mkdtemp(prefix="specprune-gateway-")
    replicas = [Replica(args, work, f"replica-{i}") for i in range(args.replicas)]
    newcomer = Replica(args, work, f"replica-{args.replicas}")
    gateway = None
    checks = Checks()
    result = {"robots": args.robots, "replicas": args.replicas, "work": work}
    t_start = time.monotonic()
    try:
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_listening()
        gateway = Gateway(args, work)
        gateway.write_upstreams(replicas)
        gateway.start()
        result["gateway_port"] = gateway.port
        # The SDK's default retry policy (max_attempts 3, backoff 0.05..1 s); a long deadline
        # because 64 robots share a few loaded cores here.
        client = PolicyClient(f"127.0.0.1:{gateway.port}", timeout=20.0)
        result["client"] = {"timeout_s": client.timeout, "max_attempts": client.max_attempts}
        client.wait_until_serving(30)
        result["message_limit"] = check_message_limit(f"127.0.0.1:{gateway.port}", checks)
        fleet = Fleet(client, args.robots, client.model_info())
        result["sticky"] = phase_sticky(fleet, checks)
        counts = collections.Counter(fleet.last_replica().values())
        by_name = {r.name: r for r in replicas}
        victim = by_name[counts.most_common()[0][0]]
        result["kill"] = phase_kill(fleet, checks, replicas, victim)
        result["return"] = phase_return(fleet, checks, victim, args.fail_timeout_s)
        counts = collections.Counter(fleet.last_replica().values())
        drained = by_name[[n for n, _ in counts.most_common() if n != victim.name][0]]
        result["drain"] = phase_drain(fleet, checks, drained, args.fail_timeout_s)
        result["scale"] = phase_scale(fleet, checks, gateway, replicas, newcomer,
                                      args.probe_keys, args.max_move)
        everything = tally([records for _, records in fleet.rounds])
        result["total"] = everything
        checks.add("whole run: 0 lost, 0 mismatched",
                   everything.get("failed", 0) == 0 and everything.get("mismatched", 0) == 0,
                   everything)
        client.close()
    except Exception as e:  # noqa: BLE001 - reported as a failed check with the logs
        checks.add("run completed", False, f"{type(e).__name__}: {e}")
        if gateway is not None:
            print(gateway.error_log(), file=sys.stderr)
    finally:
        if gateway is not None:
            result["nginx_log"] = nginx_log_counts(gateway)
            gateway.stop()
        for r in replicas + [newcomer]:
            r.stop()
    result["seconds"] = round(time.monotonic() - t_start, 2)
    result["checks"] = checks.items
    result["passed"] = checks.ok
    print(f"gateway test {'PASSED' if checks.ok else 'FAILED'} in {result['seconds']} s "
          f"({result.get('total', {}).get('requests', 0)} requests)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
    if args.keep or not checks.ok:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if checks.ok else 1


if __name__ == "__main__":
    sys.exit(main())
