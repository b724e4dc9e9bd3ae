"""Integration: the real specprune_server with TLS, mTLS and a token file, driven by the Python SDK
(issue #25). Certificates come from tests/make_test_certs.sh (openssl).

Run by ctest as `python_integration_tests` (SPECPRUNE_SERVER_BIN points at the built server).
"""
import hashlib
import json
import os
import subprocess

import numpy as np
import pytest

from server_process import running_server
from specprune_client import PolicyClient, PolicyError
import grpc

CERTS = os.path.join(os.path.dirname(__file__), "..", "make_test_certs.sh")
CELL_TOKEN = "py-cell3-token-0123456789"
OPS_TOKEN = "py-ops-token-0123456789"


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory):
    pki = str(tmp_path_factory.mktemp("pki"))
    subprocess.run([CERTS, pki, "py-test-ca", "arm-7"], check=True, capture_output=True)
    digest = lambda t: hashlib.sha256(t.encode()).hexdigest()  # noqa: E731
    tokens = os.path.join(pki, "tokens.json")
    with open(tokens, "w") as f:
        json.dump({"tokens": [{"name": "cell-3", "sha256": digest(CELL_TOKEN), "robots": ["cell3-*"]},
                              {"name": "ops", "sha256": digest(OPS_TOKEN), "robots": ["*"]}],
                   "identities": [{"name": "arm-7", "identity": "arm-7", "robots": ["arm-7"]}]}, f)
    args = ["--metrics_port", "0", "--tls_cert_file", f"{pki}/server.pem",
            "--tls_key_file", f"{pki}/server.key", "--tls_client_ca_file", f"{pki}/ca.pem",
            "--auth_tokens_file", tokens]
    with running_server(args) as (proc, port):
        yield {"target": f"localhost:{port}", "pki": pki}
    # Tokens never reach the server's logs.
    err = proc.stderr.read()
    assert CELL_TOKEN not in err and OPS_TOKEN not in err


def _observation(info):
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, size=(info.image_height, info.image_width, 3), dtype=np.uint8)
              for _ in info.cameras]
    return frames, "put the red cube on the plate", np.zeros(info.proprio_dim, np.float32)


def _client(server, **kw):
    return PolicyClient(server["target"], timeout=20.0, max_attempts=1,
                        tls_ca_file=f"{server['pki']}/ca.pem", **kw)


def test_security_token_scopes_robots(secure_server):
    with _client(secure_server, token=OPS_TOKEN) as ops, \
            _client(secure_server, token=CELL_TOKEN) as cell:
        info = ops.model_info()
        frames, instruction, proprio = _observation(info)
        assert np.isfinite(cell.predict("cell3-py", frames, instruction, proprio)).all()
        with pytest.raises(PolicyError) as e:
            cell.predict("cell4-py", frames, instruction, proprio)
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert CELL_TOKEN not in str(e.value)
        with pytest.raises(PolicyError) as e:
            cell.reset("cell4-py")
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_security_missing_or_wrong_token_is_unauthenticated(secure_server, monkeypatch):
    monkeypatch.delenv("SPECPRUNE_TOKEN", raising=False)
    for token in (None, "wrong"):
        with _client(secure_server, token=token) as c:
            with pytest.raises(PolicyError) as e:
                c.model_info()
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert c.health()  # probes stay open


def test_security_token_from_environment(secure_server, monkeypatch):
    monkeypatch.setenv("SPECPRUNE_TOKEN", OPS_TOKEN)
    monkeypatch.setenv("SPECPRUNE_TLS_CA_FILE", f"{secure_server['pki']}/ca.pem")
    with PolicyClient(secure_server["target"], timeout=20.0) as c:
        assert c.model_info().action_dim > 0


def test_security_client_certificate_identity(secure_server):
    pki = secure_server["pki"]
    with _client(secure_server, tls_cert_file=f"{pki}/client.pem",
                 tls_key_file=f"{pki}/client.key") as arm:
        info = arm.model_info()
        frames, instruction, proprio = _observation(info)
        assert np.isfinite(arm.predict("arm-7", frames, instruction, proprio)).all()
        with pytest.raises(PolicyError) as e:
            arm.predict("arm-8", frames, instruction, proprio)
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_security_plaintext_client_is_refused(secure_server):
    with PolicyClient(secure_server["target"], timeout=5.0, max_attempts=1,
                      token=OPS_TOKEN) as c:
        with pytest.raises(PolicyError) as e:
            c.model_info()
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
