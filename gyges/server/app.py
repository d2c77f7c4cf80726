"""The OpenAI-compatible HTTP API over a `ServingCluster` (FastAPI): the OpenAI endpoints
(`openai_routes.py`), health, metrics and the cluster's own endpoints (`cluster_routes.py`), and one
error body for all of them (`errors.py`). A client that disconnects has its requests aborted at once.
"""
from dataclasses import dataclass

from fastapi import APIRouter, Depends, FastAPI, Request

from gyges.server.cluster_routes import cluster_routes
from gyges.server.errors import APIError, add_error_handlers
from gyges.server.metrics import ServerMetrics
from gyges.server.openai_routes import openai_routes


@dataclass
class ServerSettings:
    model_name: str
    api_key: str | None = None
    operator_endpoints: bool = False   # merge/split without an API key
    chat_template: str | None = None   # overrides the tokenizer's


def build_app(cluster, settings: ServerSettings) -> FastAPI:
    """`cluster`: a ServingCluster (or a stand-in with its methods, in tests)."""
    app = FastAPI(title="Gyges", description="OpenAI-compatible API over a cluster that reshapes itself")
    add_error_handlers(app)
    metrics = ServerMetrics(cluster, settings.model_name)

    async def authorized(request: Request):
        if settings.api_key is not None and request.headers.get("authorization") != f"Bearer {settings.api_key}":
            raise APIError(401, "a valid API key is needed: send the header 'Authorization: Bearer KEY'")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorized)])
    open_routes = APIRouter()
    cluster_routes(open_routes, v1, cluster, settings, metrics)
    openai_routes(v1, cluster, settings, metrics)
    app.include_router(open_routes)
    app.include_router(v1)
    return app
