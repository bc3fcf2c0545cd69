package oauthsdk

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// ProxyRequest is one call to a provider's API through the gateway's
// /v1/proxy (see [Client.Proxy]).
type ProxyRequest struct {
	// Method is the HTTP method: GET (the default), HEAD, POST, PUT, PATCH or
	// DELETE.
	Method string
	// Path is the provider API's path, starting with "/", e.g.
	// "/gmail/v1/users/me/messages". It is appended to the provider's
	// api_base_url by the gateway.
	Path string
	// Query is sent as the query string.
	Query url.Values
	// Header holds request headers for the provider. An Authorization header
	// here is ignored: the gateway injects the connection's credential.
	Header http.Header
	// Body is the request body (nil for none), sent as it is read.
	Body io.Reader
	// ContentLength is the body's length when known (0 with a non-nil Body:
	// unknown, sent chunked).
	ContentLength int64
	// Retry lets the gateway repeat a non-idempotent call once after it
	// refreshed the credential on a 401 (Dromos-Proxy-Retry: true).
	Retry bool
	// Retries asks the gateway to retry 429 and 5xx answers up to this many
	// times, honouring Retry-After (Dromos-Proxy-Retries).
	Retries int
	// Host picks another of the provider's API hosts (Dromos-Proxy-Host).
	Host string
}

var proxyMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true,
	http.MethodPut: true, http.MethodPatch: true, http.MethodDelete: true,
}

// Proxy calls the provider's API for a connection through the gateway: the
// gateway injects the connection's credential, so the access token never
// reaches this process. The answer is the provider's, whatever its status
// code, as an *http.Response whose Body the caller must close; it carries the
// Dromos-Connection-Id header. The gateway's own refusals (403
// proxy_forbidden from the key's egress policy, 404, 409 connection not
// active, 400 bad path, 413, 502/504 provider unreachable or too slow …) are
// returned as an *[APIError]. Proxy calls are not retried by the client; use
// Retries to have the gateway retry.
func (c *Client) Proxy(ctx context.Context, connectionID string, in ProxyRequest) (*http.Response, error) {
	if c.baseErr != nil {
		return nil, c.baseErr
	}
	if connectionID == "" {
		return nil, ErrEmptyConnectionID
	}
	method := strings.ToUpper(in.Method)
	if method == "" {
		method = http.MethodGet
	}
	if !proxyMethods[method] {
		return nil, fmt.Errorf("oauthsdk: proxy method %q is not one of GET, HEAD, POST, PUT, PATCH, DELETE", in.Method)
	}
	if !strings.HasPrefix(in.Path, "/") {
		return nil, fmt.Errorf("oauthsdk: proxy path %q must start with /", in.Path)
	}
	if in.Retries < 0 {
		return nil, fmt.Errorf("oauthsdk: proxy Retries must be >= 0")
	}
	target := c.baseURL + "/v1/proxy/" + url.PathEscape(connectionID) + in.Path
	if len(in.Query) > 0 {
		target += "?" + in.Query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, target, in.Body)
	if err != nil {
		return nil, fmt.Errorf("oauthsdk: building proxy request: %w", err)
	}
	if in.Body != nil && in.ContentLength > 0 {
		req.ContentLength = in.ContentLength
	}
	for name, values := range in.Header {
		if strings.EqualFold(name, "Authorization") {
			continue
		}
		for _, v := range values {
			req.Header.Add(name, v)
		}
	}
	req.Header.Set("User-Agent", c.userAgent)
	if c.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.apiKey)
	}
	if in.Retry {
		req.Header.Set("Dromos-Proxy-Retry", "true")
	}
	if in.Retries > 0 {
		req.Header.Set("Dromos-Proxy-Retries", strconv.Itoa(in.Retries))
	}
	if in.Host != "" {
		req.Header.Set("Dromos-Proxy-Host", in.Host)
	}
	resp, err := c.httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	if (resp.StatusCode < 200 || resp.StatusCode > 299) && resp.Header.Get("Dromos-Connection-Id") == "" {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxBodyBytes))
		return nil, newAPIError(resp, data, c.now())
	}
	return resp, nil
}
