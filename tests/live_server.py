"""Run the emosteer app under uvicorn on a free loopback port, in a thread, for tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from emosteer.models import model_shape
from emosteer.vectors import EmotionVector

EMOTIONS = ("joy", "anger", "sadness")


def random_vectors(model, scale: float = 0.01) -> dict[str, EmotionVector]:
    """One random attn-site vector per emotion, tagged for `model`."""
    d, n = model.config.hidden_size, model.config.num_hidden_layers
    vectors = {}
    for seed, name in enumerate(EMOTIONS, start=1):
        g = torch.Generator().manual_seed(seed)
        directions = {i: torch.randn(d, generator=g) * scale for i in range(n)}
        vectors[name] = EmotionVector(directions, {**model_shape(model), "site": "attn",
                                                   "emotion": name})
    return vectors


@contextmanager
def live_server(app) -> Iterator[str]:
    """Serve `app` on 127.0.0.1:<free port>; yields the base URL, stops the server after."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
