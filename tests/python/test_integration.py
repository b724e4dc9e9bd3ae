"""Integration: the real specprune_server on an ephemeral loopback port, driven by the Python SDK.

Run by ctest as `python_integration_tests` (SPECPRUNE_SERVER_BIN points at the built server).
"""
import time
import urllib.request

import grpc
import numpy as np
import pytest

from server_process import free_port, running_server
from specprune_client import PolicyClient, PolicyError



@pytest.fixture(scope="module")
def server():
    metrics_port = free_port()
    with running_server(["--metrics_port", str(metrics_port)]) as (proc, port):
        yield {"target": f"127.0.0.1:{port}", "metrics_port": metrics_port, "proc": proc}


@pytest.fixture()
def client(server):
    with PolicyClient(server["target"], timeout=20.0) as c:
        c.wait_until_serving(timeout=20)
        yield c


def _frames(info, seed, step):
    rng = np.random.default_rng(seed * 1000 + step)
    h, w = info.image_height, info.image_width
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for _ in info.cameras]


def test_integration_predict_returns_finite_chunk(client):
    info = client.model_info()
    actions = client.predict("py-robot", _frames(info, 1, 0), "put the red cube on the plate",
                             np.zeros(info.proprio_dim, np.float32), episode_id="e1")
    assert actions.shape == (info.chunk_size, info.action_dim)
    assert actions.dtype == np.float32
    assert np.all(np.isfinite(actions))
    second = client.predict_full("py-robot", _frames(info, 1, 1), "put the red cube on the plate",
                                 np.zeros(info.proprio_dim, np.float32), episode_id="e1")
    assert second.episode_steps == 2
    assert second.retained_vision_tokens < second.total_vision_tokens


def test_integration_stream_and_reset(client):
    info = client.model_info()
    proprio = np.zeros(info.proprio_dim, np.float32)
    with client.open_stream() as stream:
        for step in range(3):
            p = stream.predict_full("py-stream", _frames(info, 2, step), "stack the blocks",
                                    proprio, episode_id="s", step=step)
            assert p.step == step
    assert client.reset("py-stream") is True
    after = client.predict_full("py-stream", _frames(info, 2, 3), "stack the blocks", proprio,
                                episode_id="s", step=3)
    assert after.session_restarted
    assert client.health()


@pytest.mark.parametrize("name,mutate,code", [
    ("nan proprio", lambda a: a.update(proprio=np.full(8, np.nan, np.float32)),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("wrong proprio length", lambda a: a.update(proprio=np.zeros(3, np.float32)),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("corrupt png", lambda a: a.update(images=[b"\x89PNG\r\n\x1a\nbroken", a["images"][1]]),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("missing camera", lambda a: a.update(images=a["images"][:1]),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("empty instruction", lambda a: a.update(instruction=""), grpc.StatusCode.INVALID_ARGUMENT),
])
def test_integration_bad_input_gets_its_code_and_server_keeps_serving(client, name, mutate, code):
    info = client.model_info()
    args = dict(images=_frames(info, 3, 0), instruction="pick up the cube",
                proprio=np.zeros(info.proprio_dim, np.float32))
    mutate(args)
    with pytest.raises((PolicyError, ValueError)) as err:
        client.predict("py-bad", args["images"], args["instruction"], args["proprio"])
    if isinstance(err.value, PolicyError):
        assert err.value.code == code, name
    ok = client.predict("py-good", _frames(info, 4, 0), "pick up the cube",
                        np.zeros(info.proprio_dim, np.float32))
    assert np.all(np.isfinite(ok))


def test_integration_server_side_validation_of_raw_nan(client, server):
    """Bypasses SDK-side checks: the server itself rejects NaN proprio naming the field."""
    from specprune.v1 import vla_service_pb2 as pb
    from specprune.v1 import vla_service_pb2_grpc as pbg
    info = client.model_info()
    req = pb.PredictRequest(robot_id="py-raw", instruction="pick up the cube",
                            proprio=[float("nan")] * info.proprio_dim)
    for frame, cam in zip(_frames(info, 5, 0), info.cameras):
        req.images.add(camera=cam, raw=pb.RawImage(height=frame.shape[0], width=frame.shape[1],
                                                   channels=3, pixels=frame.tobytes()))
    with grpc.insecure_channel(server["target"]) as ch:
        with pytest.raises(grpc.RpcError) as err:
            pbg.VlaServiceStub(ch).Predict(req, timeout=20)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "proprio" in err.value.details()


def test_integration_metrics_scraped_over_http(client, server):
    info = client.model_info()
    client.predict("py-metrics", _frames(info, 6, 0), "pick up the cube",
                   np.zeros(info.proprio_dim, np.float32))
    time.sleep(1.5)
    body = urllib.request.urlopen(
        f"http://127.0.0.1:{server['metrics_port']}/metrics", timeout=10).read().decode()
    for name in ["specprune_requests_total", "specprune_request_duration_seconds_count",
                 "specprune_queue_duration_seconds_count",
                 "specprune_compute_duration_seconds_count", "specprune_retained_vision_tokens_count",
                 "specprune_active_sessions"]:
        values = [float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                  if line.startswith(name)]
        assert values and max(values) > 0, name


# Bytes that are not a request: a truncated varint field, and robot_id (field 1) holding bytes
# that are not UTF-8.
_UNPARSABLE = [b"\xff\xff\xff\x01garbage", b"\x0a\x03\xff\xfe\xfd"]


def _raw(channel, method, streaming=False):
    factory = channel.stream_stream if streaming else channel.unary_unary
    return factory(f"/specprune.v1.VlaService/{method}", request_serializer=lambda b: b,
                   response_deserializer=lambda b: b)


@pytest.mark.parametrize("method", ["Predict", "Reset"])
def test_integration_unparsable_request_is_invalid_argument(server, method):
    with grpc.insecure_channel(server["target"]) as channel:
        for payload in _UNPARSABLE:
            with pytest.raises(grpc.RpcError) as e:
                _raw(channel, method)(payload, timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid specprune.v1." in e.value.details()


def test_integration_unparsable_stream_message_is_answered_in_band(client, server):
    from specprune.v1 import vla_service_pb2 as pb

    info = client.model_info()
    frames = [np.zeros((info.image_height, info.image_width, 3), np.uint8) for _ in info.cameras]
    good = pb.PredictRequest(robot_id="py-raw", episode_id="e", step=0,
                             instruction="put the red cube on the plate",
                             proprio=[0.0] * info.proprio_dim)
    for cam, frame in zip(info.cameras, frames):
        image = good.images.add()
        image.camera = cam
        image.raw.height, image.raw.width = frame.shape[:2]
        image.raw.channels = 3
        image.raw.pixels = frame.tobytes()
    with grpc.insecure_channel(server["target"]) as channel:
        stream = _raw(channel, "StreamPredict", streaming=True)
        responses = list(stream(iter([_UNPARSABLE[1], good.SerializeToString()]), timeout=30))
    assert len(responses) == 2, "the stream must answer both messages"
    first, second = pb.PredictResponse.FromString(responses[0]), \
        pb.PredictResponse.FromString(responses[1])
    assert first.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "not a valid specprune.v1.PredictRequest" in first.error.message
    assert not second.HasField("error") and len(second.actions) > 0


def test_integration_replica_is_reported_and_robot_header_sent(client):
    info = client.model_info()
    frames = [np.zeros((info.image_height, info.image_width, 3), np.uint8) for _ in info.cameras]
    client.predict("py-replica", frames, "put the red cube on the plate",
                   np.zeros(info.proprio_dim, np.float32))
    assert client.last_replica  # the host name by default
