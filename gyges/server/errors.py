"""Every error as OpenAI's body `{"error": {...}}`: invalid requests 400 (validation errors too, not
FastAPI's 422), a wrong or missing API key 401, operator endpoints off 403, an unknown model 404, a
full queue or a down cluster 503."""
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from gyges.cluster.serving import ClusterDown, QueueFull
from gyges.engine.admission import RequestError

RETRY_AFTER_S = 1


class APIError(Exception):
    """An error the client gets as OpenAI's body `{"error": {...}}` with `status`."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 503: "service_unavailable"}

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.status}}


def api_error(e: Exception, param: str | None = None) -> APIError:
    """The client's error for what the cluster raised when a request was submitted."""
    if isinstance(e, RequestError):
        return APIError(400, str(e), param)
    if isinstance(e, QueueFull):
        return APIError(503, str(e), headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(e, ClusterDown):
        return APIError(503, str(e))
    raise e


def add_error_handlers(app: FastAPI):
    @app.exception_handler(APIError)
    async def respond(_, e: APIError):
        return JSONResponse(e.body(), e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, e: RequestValidationError):
        err = e.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        return await respond(None, APIError(400, f"{where + ': ' if where else ''}{err.get('msg')}", where or None))

    @app.exception_handler(HTTPException)
    async def http_error(_, e: HTTPException):
        return await respond(None, APIError(e.status_code, str(e.detail), headers=e.headers))
