"""ft's server: the REST API and OpenAI-compatible inference (see docs/server.md).

`create_app(settings)` builds the FastAPI application; `ServerSettings` says how it runs.
"""

from ft_server.app import create_app
from ft_server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
