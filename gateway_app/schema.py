"""OpenAPI description of the gateway's API-key authentication (drf-spectacular extension).

Importing this module registers the extension; `gateway_app.apis` does so."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "gateway_app.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An agent API key: `Authorization: Bearer <key>`."}
