"""The messages of the Python SDK: request ids, PolicyError, Prediction, and the conversions
between numpy/bytes inputs and specprune.v1 protobufs (client.py does the calls)."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import grpc
import numpy as np

from specprune.v1 import vla_service_pb2 as pb

ImageLike = Union[np.ndarray, bytes, bytearray, memoryview]
Images = Union[Sequence[ImageLike], Mapping[str, ImageLike]]

_METHODS = {
    "unspecified": pb.PRUNING_METHOD_UNSPECIFIED,
    "none": pb.PRUNING_METHOD_NONE,
    "specprune": pb.PRUNING_METHOD_SPECPRUNE,
    "fastv": pb.PRUNING_METHOD_FASTV,
    "random": pb.PRUNING_METHOD_RANDOM,
}


class PolicyError(Exception):
    """A failed call: ``code`` is a ``grpc.StatusCode``, ``message`` the server's message,
    ``request_id`` the server's request id of the call ("" when none came back)."""

    def __init__(self, code: grpc.StatusCode, message: str, request_id: str = ""):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


_REQUEST_ID_KEY = "x-request-id"


def _check_request_id(request_id: Optional[str]) -> None:
    """What the server accepts (server/request_log.h); gRPC refuses some other values."""
    if request_id is None:
        return
    if (not isinstance(request_id, str) or not 1 <= len(request_id) <= 128
            or any(not 0x21 <= ord(c) <= 0x7e for c in request_id)):
        raise ValueError(
            "request_id: 1..128 printable ASCII characters without spaces, got "
            f"{request_id!r}")


def _metadata_value(key: str, *metadata) -> str:
    """The first value of `key` in the given metadata sequences (None ones skipped), or ""."""
    for md in metadata:
        for k, v in md or ():
            if k == key:
                return v
    return ""


def _status_code_from_number(number: int) -> grpc.StatusCode:
    """google.rpc.Code number -> grpc.StatusCode; OK or an unknown number reads as UNKNOWN."""
    for code in grpc.StatusCode:
        if code.value[0] == number and code != grpc.StatusCode.OK:
            return code
    return grpc.StatusCode.UNKNOWN


def _enum_suffix(enum_type, value: int, prefix: str) -> str:
    try:
        return enum_type.Name(value)[len(prefix):].lower()
    except ValueError:
        return str(value)


@dataclasses.dataclass
class Prediction:
    """One action chunk plus what the server reports about it."""

    actions: np.ndarray  # (chunk_size, action_dim) float32, un-normalized
    robot_id: str
    episode_id: str
    step: int
    retained_vision_tokens: int
    total_vision_tokens: int
    controller_mode: str  # "coarse" | "fine" | "unspecified"
    episode_steps: int
    session_restarted: bool
    cached: bool
    timings: Dict[str, float]  # preprocess/queue/vision/llm/action_head/total, seconds
    pruning: Dict[str, Any]  # method, retained_after_static, retained_per_layer, flops_ratio, ...
    raw: Any  # the specprune.v1.PredictResponse
    # The replica that answered (server metadata "x-specprune-replica"; "" if not sent). Unlike
    # PolicyClient.last_replica it belongs to this call, so it is exact with concurrent calls.
    replica: str = ""
    # The server's request id of this call (metadata "x-request-id"; "<stream id>/<n>" on a
    # stream); "" when the server sent none.
    request_id: str = ""

    @property
    def chunk_size(self) -> int:
        return int(self.actions.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])


def _to_prediction(request, response, replica: str = "", request_id: str = "") -> Prediction:
    mismatch = response.robot_id != request.robot_id or response.step != request.step
    if response.robot_id and mismatch:
        raise PolicyError(
            grpc.StatusCode.INTERNAL,
            f"response is for robot {response.robot_id!r} step {response.step} but the request "
            f"was robot {request.robot_id!r} step {request.step}",
        )
    n = response.chunk_size * response.action_dim
    if len(response.actions) != n:
        raise PolicyError(
            grpc.StatusCode.INTERNAL,
            f"malformed response: {len(response.actions)} actions for chunk_size "
            f"{response.chunk_size} x action_dim {response.action_dim}",
        )
    actions = np.asarray(response.actions, dtype=np.float32).reshape(
        response.chunk_size, response.action_dim
    )
    t = response.timings
    p = response.pruning
    return Prediction(
        actions=actions,
        robot_id=response.robot_id,
        episode_id=response.episode_id,
        step=response.step,
        retained_vision_tokens=response.retained_vision_tokens,
        total_vision_tokens=response.total_vision_tokens,
        controller_mode=_enum_suffix(
            pb.ControllerMode, response.controller_mode, "CONTROLLER_MODE_"
        ),
        episode_steps=response.episode_steps,
        session_restarted=response.session_restarted,
        cached=response.cached,
        timings={
            "preprocess": t.preprocess_seconds,
            "queue": t.queue_seconds,
            "vision": t.vision_seconds,
            "llm": t.llm_seconds,
            "action_head": t.action_head_seconds,
            "total": t.total_seconds,
        },
        pruning={
            "method": _enum_suffix(pb.PruningMethod, p.method, "PRUNING_METHOD_"),
            "total_vision_tokens": p.total_vision_tokens,
            "retained_after_static": p.retained_after_static,
            "retained_per_layer": list(p.retained_per_layer),
            "flops_ratio": p.flops_ratio,
            "action_deviation": p.action_deviation if p.HasField("action_deviation") else None,
            "global_recall": p.global_recall if p.HasField("global_recall") else None,
            "used_fallback": p.used_fallback,
            "refreshed_prior": p.refreshed_prior,
        },
        raw=response,
        replica=replica,
        request_id=request_id,
    )


def _image_message(index: int, camera: str, image: ImageLike):
    msg = pb.Image(camera=camera)
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise ValueError(f"images[{index}]: encoded image is empty")
        msg.encoded = data
        return msg
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"images[{index}]: expected a uint8 HxWx3 numpy array or encoded JPEG/PNG bytes, "
            f"got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise ValueError(f"images[{index}]: dtype must be uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"images[{index}]: shape must be HxWx3 (RGB), got {image.shape}")
    msg.raw.height, msg.raw.width, msg.raw.channels = image.shape
    msg.raw.pixels = np.ascontiguousarray(image).tobytes()
    return msg


def _method_value(method: Union[None, str, int]) -> int:
    if method is None:
        return pb.PRUNING_METHOD_UNSPECIFIED
    if isinstance(method, str):
        key = method.lower()
        if key.startswith("pruning_method_"):
            key = key[len("pruning_method_"):]
        if key not in _METHODS:
            raise ValueError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
        return _METHODS[key]
    if int(method) not in _METHODS.values():
        raise ValueError(f"method: unknown PruningMethod value {method}")
    return int(method)
