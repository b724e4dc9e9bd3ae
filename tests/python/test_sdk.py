"""Tests of the Python SDK (client/python/specprune_client) against an in-process fake server.

Run: PYTHONPATH=client/python:build/python /usr/bin/python3 -m pytest -q tests/python
"""

import json
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from specprune.grpc_health.v1 import health_pb2, health_pb2_grpc
from specprune.v1 import vla_service_pb2 as pb
from specprune.v1 import vla_service_pb2_grpc as pb_grpc
from specprune_client import PolicyClient, PolicyError

CHUNK, DIM = 2, 3


def fake_action(req, t, d):
    p0 = req.proprio[0] if req.proprio else 0.0
    return req.step * 100.0 + t * 10.0 + d + p0


def fake_response(req):
    out = pb.PredictResponse(
        robot_id=req.robot_id,
        episode_id=req.episode_id,
        step=req.step,
        chunk_size=CHUNK,
        action_dim=DIM,
        retained_vision_tokens=100,
        total_vision_tokens=512,
        controller_mode=pb.CONTROLLER_MODE_COARSE,
        episode_steps=req.step + 1,
    )
    out.actions.extend(fake_action(req, t, d) for t in range(CHUNK) for d in range(DIM))
    out.timings.total_seconds = 0.25
    out.pruning.method = req.pruning.method
    out.pruning.retained_per_layer.extend([512, 300, 100])
    out.pruning.flops_ratio = 0.4
    return out


class FakeVlaService(pb_grpc.VlaServiceServicer):
    """Records requests; scripted failures, delays and bad responses on demand."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.resets = []
        self.failures = []  # (grpc.StatusCode, message), consumed one per Predict
        self.delay = 0.0
        self.wrong_robot = ""
        self.drop_action = False
        self.replica = ""  # sent as "x-specprune-replica" initial metadata when set
        self.robot_headers = []  # the "x-robot-id" metadata of each Predict

    def steps(self):
        with self.lock:
            return [r.step for r in self.requests]

    def Predict(self, request, context):
        with self.lock:
            self.requests.append(request)
            self.robot_headers.append(dict(context.invocation_metadata()).get("x-robot-id"))
            failure = self.failures.pop(0) if self.failures else None
            delay = self.delay
            replica = self.replica
        if replica:
            context.send_initial_metadata((("x-specprune-replica", replica),))
        time.sleep(delay)
        if failure is not None:
            context.abort(*failure)
        resp = fake_response(request)
        if self.wrong_robot:
            resp.robot_id = self.wrong_robot
        if self.drop_action:
            del resp.actions[-1]
        return resp

    def StreamPredict(self, request_iterator, context):
        for request in request_iterator:
            with self.lock:
                self.requests.append(request)
                delay = self.delay
            time.sleep(delay)
            if not request.instruction:
                resp = pb.PredictResponse()
                resp.error.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                resp.error.message = "instruction is empty"
                yield resp
            else:
                yield fake_response(request)

    def Reset(self, request, context):
        with self.lock:
            self.resets.append(request.robot_id)
            existed = any(r.robot_id == request.robot_id for r in self.requests)
        return pb.ResetResponse(existed=existed)

    def GetModelInfo(self, request, context):
        info = pb.ModelInfo(
            config_name="fake",
            image_height=32,
            image_width=48,
            action_dim=DIM,
            chunk_size=CHUNK,
            proprio_dim=8,
            parameter_count=12345678901,
        )
        info.cameras.extend(["main", "wrist"])
        return info


class FakeHealth(health_pb2_grpc.HealthServicer):
    def __init__(self):
        self.status = health_pb2.HealthCheckResponse.SERVING

    def Check(self, request, context):
        return health_pb2.HealthCheckResponse(status=self.status)


@pytest.fixture
def server():
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    service, health = FakeVlaService(), FakeHealth()
    pb_grpc.add_VlaServiceServicer_to_server(service, srv)
    health_pb2_grpc.add_HealthServicer_to_server(health, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    srv.service, srv.health, srv.target = service, health, f"127.0.0.1:{port}"
    yield srv
    srv.stop(grace=0.5).wait()


def make_client(server, **kw):
    kw.setdefault("initial_backoff", 0.005)
    kw.setdefault("max_backoff", 0.02)
    return PolicyClient(server.target, **kw)


def frames():
    rng = np.random.default_rng(0)
    main = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    return main, b"\x89PNG-not-really"


PROPRIO = np.array([0.5, 1, 2, 3, 4, 5, 6, 7], dtype=np.float32)


def test_predict_maps_every_field_and_returns_the_chunk(server):
    main, wrist = frames()
    with make_client(server) as client:
        actions = client.predict(
            "robot-7", {"main": main, "wrist": wrist}, "put the red block on the plate",
            proprio=PROPRIO, episode_id="ep-1", method="fastv", alpha=0.75, keep_ratio=0.5,
            diagnostic=True, unnorm_key="bridge",
        )
    req = server.service.requests[0]
    assert (req.robot_id, req.episode_id, req.step) == ("robot-7", "ep-1", 0)
    assert req.instruction == "put the red block on the plate"
    assert list(req.proprio) == PROPRIO.tolist()
    assert req.unnorm_key == "bridge"
    assert [im.camera for im in req.images] == ["main", "wrist"]
    raw = req.images[0].raw
    assert (raw.height, raw.width, raw.channels) == (4, 5, 3)
    assert raw.pixels == main.tobytes()
    assert req.images[1].WhichOneof("data") == "encoded"
    assert req.images[1].encoded == wrist
    assert req.pruning.method == pb.PRUNING_METHOD_FASTV
    assert req.pruning.alpha == pytest.approx(0.75)
    assert req.pruning.keep_ratio == pytest.approx(0.5)
    assert req.pruning.HasField("diagnostic") and req.pruning.diagnostic
    assert actions.dtype == np.float32 and actions.shape == (CHUNK, DIM)
    expected = [[fake_action(req, t, d) for d in range(DIM)] for t in range(CHUNK)]
    np.testing.assert_allclose(actions, expected)


def test_pruning_config_is_sent_as_config_json(server):
    main, _ = frames()
    with make_client(server) as client:
        client.predict("r", [main, main], "go", proprio=PROPRIO,
                       pruning_config={"specprune": {"executed_rows": 4}})
        client.predict("r", [main, main], "go", proprio=PROPRIO)
        with pytest.raises(ValueError, match="pruning_config must be a dict"):
            client.predict("r", [main, main], "go", proprio=PROPRIO, pruning_config="x")
    first, second = server.service.requests[:2]
    assert json.loads(first.pruning.config_json) == {"specprune": {"executed_rows": 4}}
    assert not second.HasField("pruning")


def test_predict_full_reports_telemetry(server):
    main, _ = frames()
    with make_client(server) as client:
        p = client.predict_full("r", [main, main[::-1]], "go", proprio=PROPRIO, method="specprune")
    assert (p.robot_id, p.step, p.chunk_size, p.action_dim) == ("r", 0, CHUNK, DIM)
    assert (p.retained_vision_tokens, p.total_vision_tokens) == (100, 512)
    assert p.controller_mode == "coarse"
    assert p.timings["total"] == pytest.approx(0.25)
    assert p.pruning["method"] == "specprune"
    assert p.pruning["retained_per_layer"] == [512, 300, 100]
    assert p.pruning["action_deviation"] is None
    # A non-contiguous view is sent as its logical pixels, unnamed images keep their order.
    req = server.service.requests[0]
    assert [im.camera for im in req.images] == ["", ""]
    assert req.images[1].raw.pixels == np.ascontiguousarray(main[::-1]).tobytes()


def test_each_prediction_names_its_replica_and_every_call_sends_the_robot_header(server):
    main, _ = frames()
    server.service.replica = "replica-7"
    with make_client(server) as client:
        p = client.predict_full("robot-a", [main], "go", proprio=PROPRIO)
        server.service.replica = "replica-8"
        q = client.predict_full("robot-b", [main], "go", proprio=PROPRIO)
        assert (p.replica, q.replica, client.last_replica) == ("replica-7", "replica-8",
                                                               "replica-8")
        server.service.replica = ""
        assert client.predict_full("robot-a", [main], "go", proprio=PROPRIO).replica == ""
    assert server.service.robot_headers == ["robot-a", "robot-b", "robot-a"]


def test_predict_without_overrides_sends_no_pruning_message(server):
    main, _ = frames()
    with make_client(server) as client:
        client.predict("r", [main], "go", proprio=PROPRIO)
    assert not server.service.requests[0].HasField("pruning")


def test_auto_step_increments_per_robot_and_episode(server):
    main, _ = frames()
    with make_client(server) as client:
        def call(robot, episode, step=None):
            client.predict(robot, [main], "go", proprio=PROPRIO, episode_id=episode, step=step)

        for _ in range(3):
            call("r1", "a")
        call("r2", "a")
        call("r1", "b")
        call("r1", "b")
        call("r1", "b", step=10)
        call("r1", "b")
        assert client.reset("r1") is True
        call("r1", "b")
    assert server.service.steps() == [0, 1, 2, 0, 0, 1, 10, 11, 0]


def test_retries_unavailable_with_the_same_step_and_succeeds(server):
    main, _ = frames()
    with make_client(server) as client:
        client.predict("r1", [main], "go", proprio=PROPRIO)
        server.service.failures += [(grpc.StatusCode.UNAVAILABLE, "overloaded")] * 2
        p = client.predict_full("r1", [main], "go", proprio=PROPRIO)
        assert p.step == 1
        client.predict("r1", [main], "go", proprio=PROPRIO)
    assert server.service.steps() == [0, 1, 1, 1, 2]


def test_gives_up_after_max_attempts_and_consumes_the_step(server):
    main, _ = frames()
    server.service.failures += [(grpc.StatusCode.UNAVAILABLE, "draining")] * 2
    with make_client(server, max_attempts=2) as client:
        with pytest.raises(PolicyError) as err:
            client.predict("r1", [main], "go", proprio=PROPRIO)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert err.value.message == "draining"
        client.predict("r1", [main], "go", proprio=PROPRIO)
    assert server.service.steps() == [0, 0, 1]


def test_invalid_argument_is_not_retried_and_keeps_code_and_message(server):
    main, _ = frames()
    server.service.failures.append((grpc.StatusCode.INVALID_ARGUMENT, "proprio: expected 8 values"))
    with make_client(server) as client:
        with pytest.raises(PolicyError) as err:
            client.predict("r1", [main], "go", proprio=PROPRIO)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.message == "proprio: expected 8 values"
    assert "INVALID_ARGUMENT" in str(err.value)
    assert len(server.service.requests) == 1


def test_deadline_is_honoured(server):
    main, _ = frames()
    server.service.delay = 0.6
    with make_client(server, timeout=0.1) as client:
        start = time.monotonic()
        with pytest.raises(PolicyError) as err:
            client.predict("r1", [main], "go", proprio=PROPRIO)
        assert time.monotonic() - start < 0.45
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(server.service.requests) == 1


def test_deadline_bounds_retries_and_backoff(server):
    main, _ = frames()
    server.service.failures += [(grpc.StatusCode.UNAVAILABLE, "down")] * 1000
    with make_client(server, timeout=0.15, max_attempts=100) as client:
        start = time.monotonic()
        with pytest.raises(PolicyError) as err:
            client.predict("r1", [main], "go", proprio=PROPRIO)
        assert time.monotonic() - start < 0.5
    assert err.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert 2 < len(server.service.requests) < 100


@pytest.mark.parametrize(
    "images, instruction, proprio, match",
    [
        ([np.zeros((4, 5, 3), np.float32)], "go", PROPRIO, r"images\[0\]: dtype must be uint8"),
        ([np.zeros((4, 5), np.uint8)], "go", PROPRIO, r"images\[0\]: shape must be HxWx3"),
        ([np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5, 4), np.uint8)], "go", PROPRIO,
         r"images\[1\]: shape"),
        ([[1, 2, 3]], "go", PROPRIO, r"images\[0\]: expected a uint8 HxWx3"),
        (np.zeros((4, 5, 3), np.uint8), "go", PROPRIO, "not a single image"),
        ([b""], "go", PROPRIO, r"images\[0\]: encoded image is empty"),
        ([b"x"], "go", np.zeros((2, 4), np.float32), "proprio must be 1-D"),
        ([b"x"], 7, PROPRIO, "instruction must be a str"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(server, images, instruction, proprio,
                                                          match):
    with make_client(server) as client:
        with pytest.raises(ValueError, match=match):
            client.predict("r1", images, instruction, proprio=proprio)
        with pytest.raises(ValueError, match="method must be one of"):
            client.predict("r1", [b"x"], "go", proprio=PROPRIO, method="fast")
        with pytest.raises(ValueError, match="robot_id"):
            client.predict("", [b"x"], "go", proprio=PROPRIO)
    assert server.service.requests == []


def test_constructor_rejects_bad_options():
    with pytest.raises(ValueError, match="target"):
        PolicyClient("")
    with pytest.raises(ValueError, match="timeout"):
        PolicyClient("127.0.0.1:1", timeout=0)
    with pytest.raises(ValueError, match="max_attempts"):
        PolicyClient("127.0.0.1:1", max_attempts=0)


def test_mismatched_or_malformed_response_is_an_error(server):
    main, _ = frames()
    with make_client(server) as client:
        server.service.wrong_robot = "someone-else"
        with pytest.raises(PolicyError) as err:
            client.predict("r1", [main], "go", proprio=PROPRIO)
        assert err.value.code == grpc.StatusCode.INTERNAL
        server.service.wrong_robot = ""
        server.service.drop_action = True
        with pytest.raises(PolicyError, match="malformed"):
            client.predict("r1", [main], "go", proprio=PROPRIO)


def test_reset_reports_whether_a_session_existed(server):
    main, _ = frames()
    with make_client(server) as client:
        assert client.reset("ghost") is False
        client.predict("r1", [main], "go", proprio=PROPRIO)
        assert client.reset("r1") is True
    assert server.service.resets == ["ghost", "r1"]


def test_model_info_returns_the_servers_description(server):
    with make_client(server) as client:
        info = client.model_info()
    assert info.config_name == "fake"
    assert list(info.cameras) == ["main", "wrist"]
    assert info.proprio_dim == 8 and info.parameter_count == 12345678901


def test_health_follows_the_serving_status(server):
    with make_client(server) as client:
        assert client.health() is True
        client.wait_until_serving(timeout=1.0)
        server.health.status = health_pb2.HealthCheckResponse.NOT_SERVING
        assert client.health() is False
        with pytest.raises(TimeoutError):
            client.wait_until_serving(timeout=0.2, poll=0.05)


def test_unreachable_server_is_unavailable(server):
    target = server.target
    server.stop(grace=None).wait()
    with PolicyClient(target, timeout=2.0, initial_backoff=0.01, max_backoff=0.05) as client:
        with pytest.raises(PolicyError) as err:
            client.health()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_stream_answers_in_order_and_survives_error_responses(server):
    main, _ = frames()
    with make_client(server) as client:
        with client.open_stream() as stream:
            a0 = stream.predict_full("r1", [main], "go", proprio=PROPRIO, episode_id="s")
            with pytest.raises(PolicyError) as err:
                stream.predict("r1", [main], "", proprio=PROPRIO, episode_id="s")
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.message == "instruction is empty"
            a2 = stream.predict_full("r1", [main], "go", proprio=PROPRIO, episode_id="s")
            # Streams and unary calls share the robot's step counter.
            client.predict("r1", [main], "go", proprio=PROPRIO, episode_id="s")
        assert (a0.step, a2.step) == (0, 2)
        np.testing.assert_allclose(
            a2.actions[1, 2], fake_action(server.service.requests[2], 1, 2))
        with pytest.raises(PolicyError) as err:
            stream.predict("r1", [main], "go", proprio=PROPRIO, episode_id="s")
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert server.service.steps() == [0, 1, 2, 3]


def test_stalled_stream_is_cancelled_after_the_deadline(server):
    main, _ = frames()
    server.service.delay = 0.7
    with make_client(server, timeout=0.15) as client:
        stream = client.open_stream()
        start = time.monotonic()
        with pytest.raises(PolicyError) as err:
            stream.predict("r1", [main], "go", proprio=PROPRIO)
        assert time.monotonic() - start < 0.6
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(PolicyError) as again:
            stream.predict("r1", [main], "go", proprio=PROPRIO)
        assert again.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        stream.close()
    assert len(server.service.requests) == 1
