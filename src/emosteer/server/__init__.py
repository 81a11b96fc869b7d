"""OpenAI-compatible HTTP server with per-request emotions, and the playground page.

Needs the `server` extra: `pip install "emosteer[server]"`. Start it with `emosteer serve`.
"""

from emosteer.server.app import ServeConfig, create_app
from emosteer.server.engine import Engine, Job, Sampling

__all__ = ["Engine", "Job", "Sampling", "ServeConfig", "create_app"]
