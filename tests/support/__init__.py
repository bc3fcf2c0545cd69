"""Test helpers: the local OpenID provider (oidc_server) and its consent driver (oidc_consent)."""
