"""Integration: request ids, the JSON request log and the action-quality metrics of a real
specprune_server (--request_log json) on loopback, driven by the Python SDK.

Run by ctest as `python_integration_tests` (SPECPRUNE_SERVER_BIN points at the built server).
"""
import json
import os
import re
import tempfile
import time
import urllib.request

import grpc
import numpy as np
import pytest

from server_process import free_port, running_server
from specprune_client import PolicyClient, PolicyError, vla_service_pb2 as pb
from specprune.v1 import vla_service_pb2_grpc as pb_grpc

HEX32 = re.compile(r"[0-9a-f]{32}")
INSTRUCTION = "put the red cube on the plate"


@pytest.fixture(scope="module")
def server():
    metrics_port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    with running_server(["--metrics_port", str(metrics_port), "--request_log", "json"],
                        stderr=log) as (_, port):
        yield {"target": f"127.0.0.1:{port}", "metrics_port": metrics_port, "log": log.name}
    os.unlink(log.name)


@pytest.fixture()
def client(server):
    with PolicyClient(server["target"], timeout=20.0) as c:
        c.wait_until_serving(timeout=20)
        yield c


def _frames(info, step):
    rng = np.random.default_rng(step)
    return [rng.integers(0, 256, size=(info.image_height, info.image_width, 3), dtype=np.uint8)
            for _ in info.cameras]


def _log_line(server, request_id, timeout=10.0):
    """The parsed JSON log line of `request_id` (every request-log line must parse)."""
    end = time.monotonic() + timeout
    while True:
        with open(server["log"]) as f:
            for line in f:
                if '"event":"request"' not in line:
                    continue  # startup messages are plain text
                entry = json.loads(line)
                if entry["request_id"] == request_id:
                    return entry
        if time.monotonic() > end:
            raise AssertionError(f"no log line for request id {request_id!r}")
        time.sleep(0.05)


def _metric(server, name):
    body = urllib.request.urlopen(
        f"http://127.0.0.1:{server['metrics_port']}/metrics", timeout=5).read().decode()
    m = re.search("^" + re.escape(name) + r" (\S+)$", body, re.M)
    return float(m.group(1)) if m else None


def test_client_request_id_round_trips_and_is_logged_with_the_fields(server, client):
    info = client.model_info()
    proprio = np.zeros(info.proprio_dim, np.float32)
    pred = client.predict_full("rid-robot", _frames(info, 0), INSTRUCTION, proprio,
                               episode_id="e1", request_id="robot-7:call-0001")
    assert pred.request_id == "robot-7:call-0001"
    assert client.last_request_id == "robot-7:call-0001"
    entry = _log_line(server, "robot-7:call-0001")
    assert entry["rpc"] == "Predict"
    assert entry["robot_id"] == "rid-robot"
    assert entry["episode_id"] == "e1"
    assert entry["step"] == 0
    assert entry["code"] == "OK"
    assert entry["latency_seconds"] > 0
    assert entry["retained_vision_tokens"] == pred.retained_vision_tokens
    assert entry["total_vision_tokens"] == pred.total_vision_tokens
    assert entry["method"] == pred.pruning["method"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])
    assert INSTRUCTION not in json.dumps(entry)


def test_server_makes_an_id_when_none_or_an_invalid_one_is_sent(server, client):
    info = client.model_info()
    proprio = np.zeros(info.proprio_dim, np.float32)
    pred = client.predict_full("rid-robot-2", _frames(info, 0), INSTRUCTION, proprio,
                               episode_id="e1")
    assert HEX32.fullmatch(pred.request_id), pred.request_id
    assert _log_line(server, pred.request_id)["robot_id"] == "rid-robot-2"
    # An id the server does not accept (too long) is replaced, not echoed.
    with grpc.insecure_channel(server["target"]) as channel:
        stub = pb_grpc.VlaServiceStub(channel)
        _, call = stub.Reset.with_call(pb.ResetRequest(robot_id="rid-robot-2"),
                                       metadata=(("x-request-id", "x" * 129),), timeout=10)
        got = dict(call.initial_metadata())["x-request-id"]
        assert HEX32.fullmatch(got), got
        assert dict(call.trailing_metadata())["x-request-id"] == got
    assert _log_line(server, got)["rpc"] == "Reset"
    with pytest.raises(ValueError):
        client.predict_full("rid-robot-2", _frames(info, 1), INSTRUCTION, proprio,
                            episode_id="e1", request_id="has space")


def test_failed_call_carries_its_request_id(server, client):
    info = client.model_info()
    with pytest.raises(PolicyError) as e:
        client.predict_full("rid-robot-3", _frames(info, 0), INSTRUCTION, [1.0],
                            episode_id="e1", request_id="bad-proprio-1")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.request_id == "bad-proprio-1"
    entry = _log_line(server, "bad-proprio-1")
    assert entry["code"] == "INVALID_ARGUMENT"
    assert "proprio" in entry["error"]
    assert "retained_vision_tokens" not in entry


def test_stream_messages_are_numbered_under_the_stream_id(server, client):
    info = client.model_info()
    proprio = np.zeros(info.proprio_dim, np.float32)
    with client.open_stream(request_id="stream-a") as stream:
        first = stream.predict_full("rid-stream", _frames(info, 0), INSTRUCTION, proprio,
                                    episode_id="s1")
        second = stream.predict_full("rid-stream", _frames(info, 1), INSTRUCTION, proprio,
                                     episode_id="s1")
        assert stream.request_id == "stream-a"
    assert (first.request_id, second.request_id) == ("stream-a/1", "stream-a/2")
    entry = _log_line(server, "stream-a/2")
    assert (entry["rpc"], entry["step"], entry["code"]) == ("StreamPredict", 1, "OK")


def test_seams_and_diagnostic_deviation_are_measured(server, client):
    info = client.model_info()
    proprio = np.zeros(info.proprio_dim, np.float32)
    name = 'specprune_action_seam_position_jump_count{method="none"}'
    before = _metric(server, name)
    for step in range(3):  # steps 1 and 2 continue the episode: two seams
        client.predict_full("rid-seams", _frames(info, step), INSTRUCTION, proprio,
                            episode_id="e1", method="none")
    assert _metric(server, name) == before + 2
    dev = 'specprune_action_deviation_count{method="specprune"}'
    before_dev = _metric(server, dev)
    client.predict_full("rid-seams", _frames(info, 3), INSTRUCTION, proprio, episode_id="e1",
                        method="specprune", diagnostic=True)
    assert _metric(server, dev) == before_dev + 1
    assert _metric(server, 'specprune_action_seam_position_jump_count{method="specprune"}') >= 1
