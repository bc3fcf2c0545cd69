"""Test-only helpers: the programmable fake provider and the TCP relay. The local OpenID provider
(oidc_server) and its consent driver (oidc_consent) are development tools: devtools/."""
