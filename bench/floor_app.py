"""The benchmark's raw floor (issue 20): a WSGI app that answers a fixed JSON body without any
framework, served by the same server as the gateway and the broker. What the server itself
costs per request, the lower bound of any hop."""

BODY = b'{"status":"ok"}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def application(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
