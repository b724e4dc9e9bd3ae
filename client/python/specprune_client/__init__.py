"""SpecPrune Serve Python SDK: action chunks from a specprune.v1.VlaService server.

    from specprune_client import PolicyClient
    with PolicyClient("localhost:50051") as client:
        actions = client.predict("robot-1", [main_rgb, wrist_rgb], "put the red block on the plate",
                                 proprio=np.zeros(8, np.float32), episode_id="ep-1")

Needs the generated stubs on the path: PYTHONPATH=client/python:build/python.
"""

from specprune_client.client import (
    PolicyClient,
    PolicyError,
    Prediction,
    PredictStream,
    health_pb2,
    pb,
)

vla_service_pb2 = pb

__all__ = [
    "PolicyClient",
    "PolicyError",
    "Prediction",
    "PredictStream",
    "health_pb2",
    "vla_service_pb2",
]
