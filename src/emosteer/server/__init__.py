"""OpenAI-compatible HTTP server with per-request emotions, and the playground page.

Needs the `server` extra: `pip install "emosteer[server]"`. Start it with `emosteer serve`.
"""

from emosteer.server.app import create_app
from emosteer.server.engine import Engine, Job, Sampling
from emosteer.server.errors import APIError
from emosteer.server.state import ServeConfig, Server

__all__ = ["APIError", "Engine", "Job", "Sampling", "ServeConfig", "Server", "create_app"]
