package oauthsdk

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"
)

// Error codes the gateway sends in the "error" field of an error answer, as
// found in [APIError.Code].
const (
	// CodeInvalidRequest (400): missing or malformed field, unknown
	// provider, return URL not allowed.
	CodeInvalidRequest = "invalid_request"
	// CodeUnauthorized (401): no, malformed, unknown or revoked API key.
	CodeUnauthorized = "unauthorized"
	// CodeForbidden (403): the API key lacks the scope for the operation.
	CodeForbidden = "forbidden"
	// CodeNotFound (404): unknown connection, or another workspace's.
	CodeNotFound = "not_found"
	// CodeConnectionNotActive (409): token or refresh asked for a connection
	// that is not active.
	CodeConnectionNotActive = "connection_not_active"
	// CodeRequestTooLarge (413): the request body is over the limit.
	CodeRequestTooLarge = "request_too_large"
	// CodeRateLimited (429): the API key is throttled.
	CodeRateLimited = "rate_limited"
	// CodeConcurrencyLimited (429): too many of the API key's or its
	// workspace's calls are already waiting on providers; retried like any 429.
	CodeConcurrencyLimited = "concurrency_limited"
	// CodeProviderError (502): the provider answered badly.
	CodeProviderError = "provider_error"
	// CodeBadGateway (502): the broker answered badly.
	CodeBadGateway = "bad_gateway"
	// CodeBrokerUnavailable (503): the broker is unreachable.
	CodeBrokerUnavailable = "broker_unavailable"
	// CodeProviderUnavailable (503): the provider is temporarily down.
	CodeProviderUnavailable = "provider_unavailable"
	// CodeRefreshInProgress (503): another caller is refreshing the
	// connection and enough callers already wait for it; retried like any 503.
	CodeRefreshInProgress = "refresh_in_progress"
	// CodeServiceUnavailable (503): the gateway's or the broker's database is
	// unavailable; retried like any 503.
	CodeServiceUnavailable = "service_unavailable"
	// CodeServerError (500): an unexpected error in the gateway.
	CodeServerError = "server_error"
)

// ErrEmptyConnectionID is returned, without any request being sent, by the
// methods that take a connection id when that id is empty.
var ErrEmptyConnectionID = errors.New("oauthsdk: connection id is empty")

// APIError is a gateway answer whose status is not 2xx.
type APIError struct {
	// StatusCode is the HTTP status code.
	StatusCode int
	// Code is the gateway's error code (see CodeNotFound…); empty when the
	// body was not a gateway error (e.g. an HTML page from a proxy).
	Code string
	// Message is the gateway's human-readable message.
	Message string
	// Status is the connection's status on a 409 connection_not_active
	// (e.g. "failed", "pending", "revoked"); empty otherwise.
	Status string
	// ReconnectRequired is set on a 409 when the user must consent again.
	ReconnectRequired bool
	// Details holds per-field validation messages of a 400, when given.
	Details map[string][]string
	// RetryAfter is the delay asked for by a Retry-After header (429, 503);
	// zero when absent.
	RetryAfter time.Duration
}

// Error returns "oauthsdk: <status> <code>: <message>", plus the connection
// status of a 409.
func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "oauthsdk: %d", e.StatusCode)
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.StatusCode)
	}
	if msg != "" {
		b.WriteString(": " + msg)
	}
	if e.Status != "" {
		b.WriteString(" (connection status: " + e.Status + ")")
	}
	if len(e.Details) > 0 {
		fields := make([]string, 0, len(e.Details))
		for f := range e.Details {
			fields = append(fields, f)
		}
		sort.Strings(fields)
		parts := make([]string, 0, len(fields))
		for _, f := range fields {
			parts = append(parts, f+": "+strings.Join(e.Details[f], " "))
		}
		b.WriteString(" [" + strings.Join(parts, "; ") + "]")
	}
	return b.String()
}

// ConnectionFailedError is returned by [Client.WaitForActive] when the
// connection reaches a terminal status other than active: "failed" (consent
// denied, callback failed, state expired) or "revoked".
type ConnectionFailedError struct {
	// ConnectionID is the connection waited for.
	ConnectionID string
	// Status is "failed" or "revoked".
	Status string
	// Code is the OAuth error that failed the connection (e.g.
	// "access_denied"); may be empty.
	Code string
	// Description is the human text of Code; may be empty.
	Description string
	// Connection is the connection as last seen.
	Connection *Connection
}

// Error describes the failure.
func (e *ConnectionFailedError) Error() string {
	s := fmt.Sprintf("oauthsdk: connection %s is %s", e.ConnectionID, e.Status)
	if e.Code != "" {
		s += ": " + e.Code
	}
	if e.Description != "" {
		s += " (" + e.Description + ")"
	}
	return s
}

func apiErrorOf(err error) (*APIError, bool) {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae, true
	}
	return nil, false
}

func hasStatusOrCode(err error, status int, code string) bool {
	ae, ok := apiErrorOf(err)
	return ok && (ae.StatusCode == status || ae.Code == code)
}

// IsInvalidRequest reports whether err is a 400 invalid_request answer (bad
// field, unknown provider, return URL not allowed).
func IsInvalidRequest(err error) bool {
	return hasStatusOrCode(err, http.StatusBadRequest, CodeInvalidRequest)
}

// IsUnauthorized reports whether err is a 401 answer: the API key is missing,
// unknown or revoked.
func IsUnauthorized(err error) bool {
	return hasStatusOrCode(err, http.StatusUnauthorized, CodeUnauthorized)
}

// IsForbidden reports whether err is a 403 answer: the API key lacks the scope
// for the operation.
func IsForbidden(err error) bool {
	return hasStatusOrCode(err, http.StatusForbidden, CodeForbidden)
}

// IsNotFound reports whether err is a 404 answer: the connection is unknown or
// belongs to another workspace.
func IsNotFound(err error) bool {
	return hasStatusOrCode(err, http.StatusNotFound, CodeNotFound)
}

// IsNotActive reports whether err says the connection is not active: a 409
// connection_not_active answer (see [APIError.Status]) or a
// [*ConnectionFailedError] from [Client.WaitForActive]. The user usually has
// to connect again.
func IsNotActive(err error) bool {
	var cf *ConnectionFailedError
	if errors.As(err, &cf) {
		return true
	}
	return hasStatusOrCode(err, http.StatusConflict, CodeConnectionNotActive)
}

// IsRateLimited reports whether err is a 429 answer. [APIError.RetryAfter]
// says when to try again.
func IsRateLimited(err error) bool {
	return hasStatusOrCode(err, http.StatusTooManyRequests, CodeRateLimited)
}

// errorBody is the JSON shape of a gateway error answer.
type errorBody struct {
	Error             string                     `json:"error"`
	Message           string                     `json:"message"`
	Status            string                     `json:"status"`
	ReconnectRequired bool                       `json:"reconnect_required"`
	Details           map[string]json.RawMessage `json:"details"`
}

// newAPIError builds an APIError from a non-2xx answer and its (possibly
// truncated) body.
func newAPIError(resp *http.Response, body []byte, now time.Time) *APIError {
	ae := &APIError{StatusCode: resp.StatusCode}
	ae.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), now)
	var eb errorBody
	if err := json.Unmarshal(body, &eb); err == nil && (eb.Error != "" || eb.Message != "") {
		ae.Code = eb.Error
		ae.Message = eb.Message
		ae.Status = eb.Status
		ae.ReconnectRequired = eb.ReconnectRequired
		ae.Details = decodeDetails(eb.Details)
		return ae
	}
	// Not a gateway error body (a proxy's page, say): keep a short, single
	// line excerpt to help diagnose, never the whole body.
	text := strings.Join(strings.Fields(string(body)), " ")
	if len(text) > 200 {
		text = text[:200] + "…"
	}
	ae.Message = http.StatusText(resp.StatusCode)
	if text != "" {
		ae.Message += ": " + text
	}
	return ae
}

// decodeDetails accepts {"field": ["msg", …]}, {"field": "msg"} and, for any
// other value, its JSON text.
func decodeDetails(raw map[string]json.RawMessage) map[string][]string {
	if len(raw) == 0 {
		return nil
	}
	out := make(map[string][]string, len(raw))
	for field, v := range raw {
		var list []string
		var one string
		switch {
		case json.Unmarshal(v, &list) == nil:
			out[field] = list
		case json.Unmarshal(v, &one) == nil:
			out[field] = []string{one}
		default:
			out[field] = []string{string(v)}
		}
	}
	return out
}
