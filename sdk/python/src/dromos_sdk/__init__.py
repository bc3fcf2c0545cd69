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
    ConnectSession,
    ConnectSessionCreated,
    DeviceConnectionRequest,
    ParamFormat,
    Provider,
    ReconnectRequest,
    Token,
)
from .retry import RetryPolicy

__all__ = [
    "APIError",
    "AsyncDromosClient",
    "ConnectSession",
    "ConnectSessionCreated",
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
    "ReconnectRequest",
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
