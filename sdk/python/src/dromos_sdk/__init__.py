"""Python SDK of the Dromos OAuth token broker.

>>> from dromos_sdk import DromosClient
>>> with DromosClient("https://dromos.example.com", api_key="...") as dromos:  # doctest: +SKIP
...     token = dromos.get_token(connection_id, auto_refresh=True)
"""

from ._async import AsyncDromosClient
from ._sync import DromosClient
from ._version import __version__
from .errors import (
    APIError,
    ConnectionFailedError,
    ConnectionNotActiveError,
    DromosError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    TransportError,
    UnauthorizedError,
    UnavailableError,
    UnexpectedResponseError,
    UpstreamError,
    WaitTimeoutError,
)
from .models import (
    Connection,
    ConnectionPage,
    ConnectionRequest,
    ConnectionStatus,
    DeviceConnectionRequest,
    ParamFormat,
    Provider,
    Token,
)
from .retry import RetryPolicy

__all__ = [
    "APIError",
    "AsyncDromosClient",
    "Connection",
    "ConnectionFailedError",
    "ConnectionNotActiveError",
    "ConnectionPage",
    "ConnectionRequest",
    "ConnectionStatus",
    "DeviceConnectionRequest",
    "DromosClient",
    "DromosError",
    "ForbiddenError",
    "InvalidRequestError",
    "NotFoundError",
    "ParamFormat",
    "Provider",
    "RateLimitedError",
    "RetryPolicy",
    "Token",
    "TransportError",
    "UnauthorizedError",
    "UnavailableError",
    "UnexpectedResponseError",
    "UpstreamError",
    "WaitTimeoutError",
    "__version__",
]
