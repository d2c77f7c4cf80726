"""Health, Prometheus metrics, the model list, and the cluster's own endpoints: its layout and
history (/v1/cluster) and the operators' merge and split."""
import time

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from gyges.server.errors import APIError
from gyges.server.metrics import ServerMetrics


class MergeRequest(BaseModel):
    devices: list[int] = Field(min_length=1)


class SplitRequest(BaseModel):
    device: int = Field(ge=0)
    parts: int = Field(2, ge=2)


def cluster_routes(open_routes: APIRouter, v1: APIRouter, cluster, settings, metrics: ServerMetrics):
    """`open_routes` need no API key (health, metrics); `v1` does when one is set."""

    @open_routes.get("/health")
    async def health():
        if not cluster.healthy:
            raise APIError(503, "the cluster is down or restarting")
        return Response(status_code=200)

    @open_routes.get("/metrics")
    async def prometheus():
        return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE_LATEST)

    @v1.get("/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "gyges", "max_model_len": cluster.max_model_len}]}

    @v1.get("/cluster")
    async def layout():
        return await run_in_threadpool(cluster.cluster_info)

    def operator():
        if settings.api_key is None and not settings.operator_endpoints:
            raise APIError(403, "operator endpoints are off: start the server with --api-key KEY (they then need "
                                "the key) or with --enable-operator-endpoints")

    @v1.post("/cluster/merge")
    async def merge(req: MergeRequest):
        operator()
        return await _transform(cluster.merge, req.devices)

    @v1.post("/cluster/split")
    async def split(req: SplitRequest):
        operator()
        return await _transform(cluster.split, req.device, req.parts)


async def _transform(fn, *args) -> dict:
    try:
        return await run_in_threadpool(fn, *args)
    except (ValueError, KeyError) as e:
        raise APIError(400, f"cannot do that: {e}") from e
