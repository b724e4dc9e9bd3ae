"""Python SDK for specprune.v1.VlaService (SpecPrune Serve).

Semantics (identical to the C++ SDK in client/cpp/client.h):

* Errors are raised as :class:`PolicyError` carrying the ``grpc.StatusCode`` and the server's
  message. Bad arguments are caught client-side with :class:`ValueError` naming the argument.
* ``timeout`` bounds a whole call, retries and backoff included.
* Only UNAVAILABLE is retried (``max_attempts`` attempts, exponential backoff with jitter).
  ``predict`` is safe to retry because a retry repeats the same (robot_id, episode_id, step); the
  server answers a repeated step from its cache. The step never changes on retry.
* Auto step: when ``step`` is None the client numbers steps 0, 1, 2, ... per robot and episode. A
  step number is consumed when it is sent, whatever the outcome (a failed step is skipped, never
  reused). A new ``episode_id`` or a successful :meth:`PolicyClient.reset` restarts at 0; an
  explicit step ``s`` makes the next auto step ``s + 1``.

* Request ids: ``request_id=`` sends the metadata ``x-request-id`` (1..128 printable ASCII
  characters without spaces; every retry of the call sends the same id); without it the server
  makes one. The server's id is ``Prediction.request_id``, ``PolicyError.request_id`` and
  ``PolicyClient.last_request_id``; it names the call in the server's request log. On a stream,
  message n (1-based) has the id ``"<stream id>/<n>"`` (``PredictStream.request_id``).

``PolicyClient`` is thread-safe; calls of one robot should be made sequentially.
``PredictStream`` is not thread-safe.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import grpc
import numpy as np

try:
    from specprune.grpc_health.v1 import health_pb2, health_pb2_grpc
    from specprune.v1 import vla_service_pb2 as pb
    from specprune.v1 import vla_service_pb2_grpc as pb_grpc
except ImportError as e:  # pragma: no cover - environment problem, not a code path
    raise ImportError(
        "specprune_client needs the generated stubs: build the 'specprune_python_stubs' target "
        "and put <build>/python on PYTHONPATH (PYTHONPATH=client/python:build/python)"
    ) from e

from specprune_client.messages import (  # noqa: E402 (after the stubs check above)
    Images,
    PolicyError,
    _REQUEST_ID_KEY,
    _check_request_id,
    _metadata_value,
    _status_code_from_number,
    Prediction,
    _to_prediction,
    _image_message,
    _method_value,
)


def _tls_credentials(ca_file: str, cert_file: Optional[str], key_file: Optional[str]):
    """grpc.ssl_channel_credentials from PEM files; a client certificate needs both files."""
    if bool(cert_file) != bool(key_file):
        raise ValueError("tls_cert_file and tls_key_file must be given together")

    def read(path: Optional[str], field: str) -> Optional[bytes]:
        if not path:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise ValueError(f"{field}: {path!r} cannot be read: {e.strerror}") from None

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca_file, "tls_ca_file"),
        private_key=read(key_file, "tls_key_file"),
        certificate_chain=read(cert_file, "tls_cert_file"),
    )


class PolicyClient:
    """Client of a SpecPrune Serve server.

    Args:
        target: server address ("host:port" or a gRPC target URI).
        timeout: seconds one call may take, retries included (> 0).
        max_attempts: attempts per call, only UNAVAILABLE is retried (>= 1).
        initial_backoff, max_backoff: seconds; retry n sleeps
            min(max_backoff, initial_backoff * 2**(n-1)) * uniform(0.5, 1).
        credentials: grpc.ChannelCredentials for TLS; None = built from the tls_* files below,
            or insecure without them.
        max_message_bytes: largest message sent or received.
        token: bearer token sent on every call as ``authorization: Bearer <token>``; None = the
            environment variable SPECPRUNE_TOKEN, if set. Never logged or shown in repr().
        tls_ca_file: PEM CA bundle verifying the server; turns TLS on (env SPECPRUNE_TLS_CA_FILE).
        tls_cert_file, tls_key_file: client certificate and key for mTLS
            (env SPECPRUNE_TLS_CERT_FILE, SPECPRUNE_TLS_KEY_FILE).
        tls_server_name: name checked against the server certificate (env
            SPECPRUNE_TLS_SERVER_NAME), e.g. when the target is an IP address.
    """

    def __init__(
        self,
        target: str,
        timeout: float = 5.0,
        max_attempts: int = 3,
        *,
        initial_backoff: float = 0.05,
        max_backoff: float = 1.0,
        credentials: Optional[grpc.ChannelCredentials] = None,
        max_message_bytes: int = 64 << 20,
        token: Optional[str] = None,
        tls_ca_file: Optional[str] = None,
        tls_cert_file: Optional[str] = None,
        tls_key_file: Optional[str] = None,
        tls_server_name: Optional[str] = None,
    ):
        if not target:
            raise ValueError("target is empty")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if int(max_attempts) < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if not 0 <= initial_backoff <= max_backoff:
            raise ValueError("backoff must satisfy 0 <= initial_backoff <= max_backoff")
        self.target = target
        self.timeout = float(timeout)
        self.max_attempts = int(max_attempts)
        self._initial_backoff = float(initial_backoff)
        self._max_backoff = float(max_backoff)
        options = [
            ("grpc.max_send_message_length", int(max_message_bytes)),
            ("grpc.max_receive_message_length", int(max_message_bytes)),
        ]
        env = os.environ.get
        token = token if token is not None else env("SPECPRUNE_TOKEN")
        tls_ca_file = tls_ca_file or env("SPECPRUNE_TLS_CA_FILE")
        tls_cert_file = tls_cert_file or env("SPECPRUNE_TLS_CERT_FILE")
        tls_key_file = tls_key_file or env("SPECPRUNE_TLS_KEY_FILE")
        tls_server_name = tls_server_name or env("SPECPRUNE_TLS_SERVER_NAME")
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if credentials is None and tls_ca_file:
            credentials = _tls_credentials(tls_ca_file, tls_cert_file, tls_key_file)
        elif credentials is None and (tls_cert_file or tls_key_file or tls_server_name):
            raise ValueError("tls_ca_file is required with a client certificate or server name")
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.VlaServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._lock = threading.Lock()
        # The replica that answered the last call (server metadata "x-specprune-replica").
        self.last_replica = ""
        # The server's request id of the last finished call (metadata "x-request-id"; "" if none).
        self.last_request_id = ""
        self._steps: Dict[str, Tuple[str, int]] = {}  # robot -> (episode_id, next step)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "PolicyClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- calls -------------------------------------------------------------------------------

    def predict(
        self, robot_id: str, images: Images, instruction: str, proprio=None, **kwargs
    ) -> np.ndarray:
        """Returns the next action chunk, shape (chunk_size, action_dim), float32.

        ``images``: one per camera in ModelInfo.cameras order, or a dict {camera: image}. A uint8
        HxWx3 RGB array is sent raw; bytes are sent as an encoded JPEG/PNG. Keyword arguments are
        those of :meth:`predict_full`.
        """
        return self.predict_full(robot_id, images, instruction, proprio, **kwargs).actions

    def predict_full(
        self,
        robot_id: str,
        images: Images,
        instruction: str,
        proprio=None,
        episode_id: str = "",
        step: Optional[int] = None,
        method: Union[None, str, int] = None,
        alpha: Optional[float] = None,
        keep_ratio: Optional[float] = None,
        diagnostic: bool = False,
        unnorm_key: str = "",
        pruning_config: Optional[Mapping[str, Any]] = None,
        request_id: Optional[str] = None,
    ) -> Prediction:
        """Like :meth:`predict` but returns the actions together with the server's telemetry.

        ``pruning_config``: any other pruning knob for this request, a dict with the keys of the
        server config's "pruning" section (sent as PruningOverride.config_json), e.g.
        ``{"specprune": {"executed_rows": 4}}`` for a robot that executes 4 rows of each chunk.
        ``request_id``: sent as "x-request-id" (default: the server makes one).
        """
        _check_request_id(request_id)
        request = self._build_request(
            robot_id, images, instruction, proprio, episode_id, step, method, alpha, keep_ratio,
            diagnostic, unnorm_key, pruning_config,
        )
        response, replica, server_id = self._call_with_replica(
            self._stub.Predict, request, robot_id=request.robot_id, request_id=request_id)
        return _to_prediction(request, response, replica, server_id)

    def reset(self, robot_id: str, request_id: Optional[str] = None) -> bool:
        """Ends the robot's episode; returns whether the server had a session for it."""
        if not robot_id:
            raise ValueError("robot_id is empty")
        response = self._call(self._stub.Reset, pb.ResetRequest(robot_id=robot_id),
                              robot_id=robot_id, request_id=request_id)
        with self._lock:
            self._steps.pop(robot_id, None)
        return response.existed

    def model_info(self):
        """Returns the specprune.v1.ModelInfo message (cameras, image size, dims, defaults)."""
        return self._call(self._stub.GetModelInfo, pb.GetModelInfoRequest())

    def health(self) -> bool:
        """grpc.health.v1 Check of the whole server: True when SERVING."""
        response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=""))
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def wait_until_serving(self, timeout: float = 30.0, poll: float = 0.1) -> None:
        """Polls health() until SERVING; raises TimeoutError with the last error otherwise."""
        end = time.monotonic() + timeout
        last: Any = "not serving"
        while True:
            try:
                if self.health():
                    return
            except PolicyError as e:
                last = e
            if time.monotonic() >= end:
                raise TimeoutError(f"{self.target} not serving after {timeout} s: {last}")
            time.sleep(poll)

    def open_stream(self, request_id: Optional[str] = None) -> "PredictStream":
        """Opens a StreamPredict stream (one request, one response, in order). ``request_id`` is
        sent as the stream's "x-request-id" (default: the server makes one)."""
        _check_request_id(request_id)
        return PredictStream(self, request_id)

    # -- internals ---------------------------------------------------------------------------

    def _build_request(
        self, robot_id, images, instruction, proprio, episode_id, step, method, alpha, keep_ratio,
        diagnostic, unnorm_key, pruning_config=None,
    ):
        if not isinstance(robot_id, str) or not robot_id:
            raise ValueError("robot_id must be a non-empty string")
        if not isinstance(instruction, str):
            raise ValueError(f"instruction must be a str, got {type(instruction).__name__}")
        if isinstance(images, Mapping):
            named = list(images.items())
        elif isinstance(images, (bytes, bytearray, np.ndarray)):
            raise ValueError("images must be a list (or dict) of images, not a single image")
        else:
            named = [("", im) for im in images]
        request = pb.PredictRequest(
            robot_id=robot_id,
            episode_id=episode_id or "",
            instruction=instruction,
            unnorm_key=unnorm_key or "",
        )
        for i, (camera, image) in enumerate(named):
            request.images.append(_image_message(i, camera, image))
        if proprio is not None:
            p = np.asarray(proprio, dtype=np.float32)
            if p.ndim != 1:
                raise ValueError(f"proprio must be 1-D, got shape {p.shape}")
            request.proprio.extend(p.tolist())
        method_value = _method_value(method)
        if pruning_config is not None and not isinstance(pruning_config, Mapping):
            raise ValueError(
                f"pruning_config must be a dict, got {type(pruning_config).__name__}")
        if (method_value or alpha is not None or keep_ratio is not None or diagnostic
                or pruning_config):
            request.pruning.method = method_value
            if pruning_config:
                request.pruning.config_json = json.dumps(pruning_config)
            if alpha is not None:
                request.pruning.alpha = float(alpha)
            if keep_ratio is not None:
                request.pruning.keep_ratio = float(keep_ratio)
            if diagnostic:
                request.pruning.diagnostic = True
        if step is not None and int(step) < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        with self._lock:
            episode, next_step = self._steps.get(robot_id, (request.episode_id, 0))
            if episode != request.episode_id:
                next_step = 0
            chosen = next_step if step is None else int(step)
            self._steps[robot_id] = (request.episode_id, chosen + 1)
        request.step = chosen
        return request

    def _call(self, method: Callable, request, robot_id: Optional[str] = None,
              request_id: Optional[str] = None):
        return self._call_with_replica(method, request, robot_id, request_id)[0]

    def _call_with_replica(self, method: Callable, request, robot_id: Optional[str] = None,
                           request_id: Optional[str] = None):
        """One unary call with retries -> (response, answering replica, server request id). Sends
        the token, ``request_id`` as "x-request-id" (every attempt the same) and (for robot calls)
        "x-robot-id", the key a fleet gateway routes on; also records the replica in
        ``last_replica`` and the request id in ``last_request_id``."""
        _check_request_id(request_id)
        metadata = self._metadata + ((("x-robot-id", robot_id),) if robot_id else ())
        metadata += (((_REQUEST_ID_KEY, request_id),) if request_id else ())
        deadline = time.monotonic() + self.timeout
        backoff = self._initial_backoff
        attempt = 1
        server_id = ""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PolicyError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", server_id)
            try:
                response, call = method.with_call(request, timeout=remaining, metadata=metadata)
                replica = dict(call.initial_metadata() or ()).get("x-specprune-replica", "")
                self.last_replica = replica
                server_id = _metadata_value(
                    _REQUEST_ID_KEY, call.initial_metadata(), call.trailing_metadata())
                self.last_request_id = server_id
                return response, replica, server_id
            except grpc.RpcError as e:
                code, details = e.code(), e.details() or ""
                # A call that failed before any message may be trailers-only: the id is trailing.
                server_id = _metadata_value(
                    _REQUEST_ID_KEY, e.initial_metadata(), e.trailing_metadata())
                self.last_request_id = server_id
                if code != grpc.StatusCode.UNAVAILABLE or attempt >= self.max_attempts:
                    raise PolicyError(code, details, server_id) from None
                sleep = backoff * random.uniform(0.5, 1.0)
                backoff = min(backoff * 2, self._max_backoff)
                if time.monotonic() + sleep >= deadline:
                    raise PolicyError(code, details, server_id) from None
                time.sleep(sleep)
                attempt += 1


class PredictStream:
    """A StreamPredict stream from :meth:`PolicyClient.open_stream`. Not thread-safe.

    A response carrying ``error`` raises PolicyError and the stream stays usable. If the stream
    breaks (server gone, or no response within the client's timeout, which cancels it), that call
    and every later one raise the stream's final error; open a new stream. Never retried.
    """

    _DONE = object()

    def __init__(self, client: PolicyClient, request_id: Optional[str] = None):
        self._client = client
        self._cond = threading.Condition()
        self._outbox: List[Any] = []
        metadata = client._metadata + (((_REQUEST_ID_KEY, request_id),) if request_id else ())
        self._call = client._stub.StreamPredict(self._requests(), metadata=metadata)
        self._final: Optional[PolicyError] = None
        self._closed = False
        self._messages = 0  # requests sent; message n has the id "<stream id>/<n>"
        # The stream's request id as the server returned it; "" until the first response.
        self.request_id = ""

    def _requests(self):
        while True:
            with self._cond:
                while not self._outbox:
                    self._cond.wait()
                item = self._outbox.pop(0)
            if item is PredictStream._DONE:
                return
            yield item

    def _send(self, item) -> None:
        with self._cond:
            self._outbox.append(item)
            self._cond.notify()

    def _next_response(self):
        timed_out = threading.Event()

        def cancel():
            timed_out.set()
            self._call.cancel()

        timer = threading.Timer(self._client.timeout, cancel)
        timer.daemon = True
        timer.start()
        try:
            return next(self._call)
        except StopIteration:
            self._final = PolicyError(
                grpc.StatusCode.UNAVAILABLE, "the server closed the stream without answering"
            )
        except grpc.RpcError as e:
            if timed_out.is_set():
                self._final = PolicyError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no response on the stream within {self._client.timeout} s; stream cancelled",
                )
            else:
                self._final = PolicyError(e.code(), e.details() or "")
        finally:
            timer.cancel()
        self._send(PredictStream._DONE)  # release grpc's request-iterator thread
        raise self._final

    def predict(
        self, robot_id: str, images: Images, instruction: str, proprio=None, **kwargs
    ) -> np.ndarray:
        return self.predict_full(robot_id, images, instruction, proprio, **kwargs).actions

    def predict_full(
        self,
        robot_id: str,
        images: Images,
        instruction: str,
        proprio=None,
        episode_id: str = "",
        step: Optional[int] = None,
        method: Union[None, str, int] = None,
        alpha: Optional[float] = None,
        keep_ratio: Optional[float] = None,
        diagnostic: bool = False,
        unnorm_key: str = "",
        pruning_config: Optional[Mapping[str, Any]] = None,
    ) -> Prediction:
        if self._final is not None:
            raise self._final
        if self._closed:
            raise PolicyError(grpc.StatusCode.FAILED_PRECONDITION, "the stream is closed")
        request = self._client._build_request(
            robot_id, images, instruction, proprio, episode_id, step, method, alpha, keep_ratio,
            diagnostic, unnorm_key, pruning_config,
        )
        self._send(request)
        self._messages += 1
        message = self._messages
        response = self._next_response()
        if not self.request_id:
            self.request_id = _metadata_value(_REQUEST_ID_KEY, self._call.initial_metadata())
        request_id = f"{self.request_id}/{message}" if self.request_id else ""
        self._client.last_request_id = request_id
        if response.HasField("error"):
            raise PolicyError(_status_code_from_number(response.error.code),
                              response.error.message, request_id)
        return _to_prediction(request, response, request_id=request_id)

    def close(self) -> None:
        """Half-closes the stream and waits for the server to end it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._send(PredictStream._DONE)
        if self._final is not None:
            return
        timed_out = threading.Event()

        def cancel():
            timed_out.set()
            self._call.cancel()

        timer = threading.Timer(self._client.timeout, cancel)
        timer.daemon = True
        timer.start()
        try:
            for _ in self._call:  # drain (nothing is expected)
                pass
        except grpc.RpcError as e:
            if timed_out.is_set():
                raise PolicyError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "the server did not finish the stream in time",
                ) from None
            raise PolicyError(e.code(), e.details() or "") from None
        finally:
            timer.cancel()

    def __enter__(self) -> "PredictStream":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            self._closed = True
            self._send(PredictStream._DONE)
            self._call.cancel()
        else:
            self.close()

    def __del__(self):
        try:
            if not self._closed:
                self._closed = True
                self._send(PredictStream._DONE)
                self._call.cancel()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
