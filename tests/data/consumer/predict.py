"""The Python consumer of tests/install_test.sh: imports the installed specprune_client (no
PYTHONPATH) and runs health, model info and one predict with synthetic images.

    python3 predict.py HOST:PORT
Prints "python ok module=<path> chunk=<rows>x<dims>" and exits 0; raises otherwise.
"""

import sys

import numpy as np
import specprune_client
from specprune_client import PolicyClient


def main() -> int:
    target = sys.argv[1]
    with PolicyClient(target, timeout=60.0) as client:
        if not client.health():
            raise SystemExit("python: server is not SERVING")
        info = client.model_info()
        images = {
            camera: np.full((info.image_height, info.image_width, 3), 100 + i, np.uint8)
            for i, camera in enumerate(info.cameras)
        }
        actions = client.predict("python-robot", images, "put the red block on the plate",
                                 proprio=np.zeros(info.proprio_dim, np.float32),
                                 episode_id="python-episode")
        if actions.shape != (info.chunk_size, info.action_dim):
            raise SystemExit(f"python: chunk shape {actions.shape} differs from ModelInfo")
    print(f"python ok module={specprune_client.__file__} "
          f"chunk={actions.shape[0]}x{actions.shape[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
