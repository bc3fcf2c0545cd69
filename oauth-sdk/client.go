package oauthsdk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"
)

// Version is the SDK version, sent in the default User-Agent.
const Version = "0.1.0"

// DefaultUserAgent is the User-Agent sent when [WithUserAgent] is not given.
const DefaultUserAgent = "dromos-oauth-sdk-go/" + Version

// APIKeyEnv is the environment variable read for the API key when
// [WithAPIKey] is not given.
const APIKeyEnv = "DROMOS_API_KEY"

// DefaultTimeout is the per-attempt timeout of the HTTP client used when
// [WithHTTPClient] is not given.
const DefaultTimeout = 30 * time.Second

// maxBodyBytes bounds how much of an answer is read.
const maxBodyBytes = 8 << 20

// Client calls the Dromos gateway. Build it with [New]; it is safe for
// concurrent use by multiple goroutines.
type Client struct {
	baseURL    string // without trailing slash
	baseErr    error  // a bad base URL, returned by every call
	apiKey     string
	apiKeySet  bool
	httpClient *http.Client
	userAgent  string
	retry      RetryPolicy

	// sleep waits between attempts and polls; tests replace it.
	sleep func(ctx context.Context, d time.Duration) error
	// now is the clock used for Retry-After dates; tests may replace it.
	now func() time.Time
}

// Option configures a [Client] in [New].
type Option func(*Client)

// WithAPIKey sets the gateway API key sent as "Authorization: Bearer <key>".
// Without this option the key is read from the DROMOS_API_KEY environment
// variable when [New] runs. An empty key sends no Authorization header.
func WithAPIKey(key string) Option {
	return func(c *Client) {
		c.apiKey = key
		c.apiKeySet = true
	}
}

// WithHTTPClient sets the HTTP client used for every request (for a custom
// transport, proxy, TLS configuration or timeout). A nil client keeps the
// default: an [http.Client] with DefaultTimeout per attempt.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) {
		if hc != nil {
			c.httpClient = hc
		}
	}
}

// WithUserAgent replaces the User-Agent header (DefaultUserAgent by default).
// An empty string keeps the default.
func WithUserAgent(ua string) Option {
	return func(c *Client) {
		if ua != "" {
			c.userAgent = ua
		}
	}
}

// WithRetry sets the retry policy; zero delays take their defaults (see
// [RetryPolicy]). Without this option a client makes DefaultRetries retries
// with the default delays; WithRetry(RetryPolicy{}) disables retries.
func WithRetry(p RetryPolicy) Option {
	return func(c *Client) { c.retry = p.normalized() }
}

// New returns a client of the gateway at baseURL (e.g.
// "https://gateway.example.com"; a path prefix is kept). A malformed baseURL
// is reported by every call rather than here.
func New(baseURL string, opts ...Option) *Client {
	c := &Client{
		httpClient: &http.Client{Timeout: DefaultTimeout},
		userAgent:  DefaultUserAgent,
		retry:      RetryPolicy{Retries: DefaultRetries}.normalized(),
		sleep:      sleepCtx,
		now:        time.Now,
	}
	c.baseURL = strings.TrimRight(strings.TrimSpace(baseURL), "/")
	u, err := url.Parse(c.baseURL)
	switch {
	case err != nil:
		c.baseErr = fmt.Errorf("oauthsdk: invalid base URL: %w", err)
	case (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		c.baseErr = fmt.Errorf("oauthsdk: invalid base URL %q: want http(s)://host[:port][/prefix]", baseURL)
	case u.RawQuery != "" || u.Fragment != "":
		c.baseErr = fmt.Errorf("oauthsdk: invalid base URL %q: no query or fragment allowed", baseURL)
	}
	for _, opt := range opts {
		if opt != nil {
			opt(c)
		}
	}
	if !c.apiKeySet {
		c.apiKey = os.Getenv(APIKeyEnv)
	}
	return c
}

// BaseURL returns the gateway base URL the client calls, without a trailing
// slash.
func (c *Client) BaseURL() string { return c.baseURL }

// RequestConnection starts a connection: POST /v1/request-connection. Send
// the user's browser to the answer's AuthURL and keep its ConnectionID.
func (c *Client) RequestConnection(ctx context.Context, in RequestConnectionInput) (*RequestConnectionOutput, error) {
	var out RequestConnectionOutput
	if err := c.do(ctx, http.MethodPost, "/v1/request-connection", nil, in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RequestDeviceConnection starts a device-flow connection (RFC 8628): POST
// /v1/request-connection with flow "device". Show the user UserCode at
// VerificationURI, then [Client.WaitForActive].
func (c *Client) RequestDeviceConnection(ctx context.Context, in RequestConnectionInput) (*DeviceConnectionOutput, error) {
	in.Flow = "device"
	in.ReturnURL = ""
	var out DeviceConnectionOutput
	if err := c.do(ctx, http.MethodPost, "/v1/request-connection", nil, in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RequestMachineConnection creates a machine connection, without user
// consent: POST /v1/request-connection with in.Flow "client_credentials",
// "jwt_bearer" or "github_app" (ReturnURL is not sent). The answer is the
// connection, active, or failed with the provider's error (a wrong secret or
// key); the broker re-obtains its token before it expires. Secrets in the
// input are never returned.
func (c *Client) RequestMachineConnection(ctx context.Context, in RequestConnectionInput) (*Connection, error) {
	switch in.Flow {
	case "client_credentials", "jwt_bearer", "github_app":
	default:
		return nil, fmt.Errorf("oauthsdk: RequestMachineConnection: flow must be client_credentials, jwt_bearer or github_app, not %q", in.Flow)
	}
	in.ReturnURL = ""
	var out Connection
	if err := c.do(ctx, http.MethodPost, "/v1/request-connection", nil, in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateStaticConnection stores an API key or a Basic login (verified by the
// provider first): POST /v1/connections. A refused credential is a 400 with
// code invalid_credentials.
func (c *Client) CreateStaticConnection(ctx context.Context, in CreateStaticConnectionInput) (*Connection, error) {
	var out Connection
	if err := c.do(ctx, http.MethodPost, "/v1/connections", nil, in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ReplaceCredentials replaces a static connection's credential in place: PUT
// /v1/connections/{id}/credentials.
func (c *Client) ReplaceCredentials(ctx context.Context, connectionID string, creds Credentials) (*Connection, error) {
	if connectionID == "" {
		return nil, ErrEmptyConnectionID
	}
	body := struct {
		Credentials Credentials `json:"credentials"`
	}{creds}
	var out Connection
	if err := c.do(ctx, http.MethodPut, "/v1/connections/"+url.PathEscape(connectionID)+"/credentials", nil, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CheckConnection returns a connection's state: GET
// /v1/check-connection/{id}.
func (c *Client) CheckConnection(ctx context.Context, connectionID string) (*Connection, error) {
	if connectionID == "" {
		return nil, ErrEmptyConnectionID
	}
	var out Connection
	if err := c.do(ctx, http.MethodGet, "/v1/check-connection/"+url.PathEscape(connectionID), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// GetToken returns the connection's current access token as stored, without
// refreshing it: GET /v1/token/{id}. Use [Client.GetTokenWithOptions] with
// AutoRefresh to have the gateway refresh a token about to expire.
//
// A connection that is not active answers a 409 ([IsNotActive]).
func (c *Client) GetToken(ctx context.Context, connectionID string) (*Token, error) {
	return c.GetTokenWithOptions(ctx, connectionID, GetTokenOptions{})
}

// GetTokenWithOptions is [Client.GetToken] with options: with AutoRefresh the
// gateway first refreshes the token when it expires within MinTTL (60s when
// zero), so the answer is good for at least that long.
//
//	tok, err := client.GetTokenWithOptions(ctx, id, oauthsdk.GetTokenOptions{
//		AutoRefresh: true,
//		MinTTL:      5 * time.Minute,
//	})
func (c *Client) GetTokenWithOptions(ctx context.Context, connectionID string, opts GetTokenOptions) (*Token, error) {
	if connectionID == "" {
		return nil, ErrEmptyConnectionID
	}
	q := url.Values{}
	if opts.AutoRefresh {
		q.Set("auto_refresh", "true")
		if opts.MinTTL > 0 {
			secs := (opts.MinTTL + time.Second - 1) / time.Second
			q.Set("min_ttl", fmt.Sprint(int64(secs)))
		}
	}
	var out Token
	if err := c.do(ctx, http.MethodGet, "/v1/token/"+url.PathEscape(connectionID), q, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Refresh refreshes the connection's token at the provider now and returns
// the new token: POST /v1/refresh/{id}. The broker refreshes once however
// many callers ask at the same time, so retrying this call is safe.
func (c *Client) Refresh(ctx context.Context, connectionID string) (*Token, error) {
	if connectionID == "" {
		return nil, ErrEmptyConnectionID
	}
	var out Token
	if err := c.do(ctx, http.MethodPost, "/v1/refresh/"+url.PathEscape(connectionID), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListConnections returns one page of the workspace's connections, filtered
// by the non-zero fields of in: GET /v1/connections.
func (c *Client) ListConnections(ctx context.Context, in ListConnectionsInput) (*ConnectionList, error) {
	q := url.Values{}
	if in.UserID != "" {
		q.Set("user_id", in.UserID)
	}
	if in.ProviderName != "" {
		q.Set("provider_name", in.ProviderName)
	}
	if in.Status != "" {
		q.Set("status", in.Status)
	}
	if in.Page > 0 {
		q.Set("page", fmt.Sprint(in.Page))
	}
	if in.PageSize > 0 {
		q.Set("page_size", fmt.Sprint(in.PageSize))
	}
	for _, key := range sortedKeys(in.Tags) {
		q.Add("tag", key+":"+in.Tags[key])
	}
	var out ConnectionList
	if err := c.do(ctx, http.MethodGet, "/v1/connections", q, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteConnection revokes the connection at the provider where possible,
// wipes its tokens and returns it with status "revoked": DELETE
// /v1/connections/{id}.
func (c *Client) DeleteConnection(ctx context.Context, connectionID string) (*Connection, error) {
	if connectionID == "" {
		return nil, ErrEmptyConnectionID
	}
	var out Connection
	if err := c.do(ctx, http.MethodDelete, "/v1/connections/"+url.PathEscape(connectionID), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateConnectSession makes a short-lived, single-use link to the hosted
// connect page: POST /v1/connect-sessions.
func (c *Client) CreateConnectSession(ctx context.Context, in CreateConnectSessionInput) (*ConnectSessionCreated, error) {
	var out ConnectSessionCreated
	if err := c.do(ctx, http.MethodPost, "/v1/connect-sessions", nil, in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// GetConnectSession returns a session's state and the connections it
// produced: GET /v1/connect-sessions/{id}.
func (c *Client) GetConnectSession(ctx context.Context, sessionID string) (*ConnectSession, error) {
	if sessionID == "" {
		return nil, errors.New("oauthsdk: session id is empty")
	}
	var out ConnectSession
	if err := c.do(ctx, http.MethodGet, "/v1/connect-sessions/"+url.PathEscape(sessionID), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Reconnect returns a fresh consent URL for the same connection id: POST
// /v1/connections/{id}/reconnect. The old tokens keep working until the
// user consents again with the same account.
func (c *Client) Reconnect(ctx context.Context, connectionID string, in ReconnectInput) (*ReconnectOutput, error) {
	if connectionID == "" {
		return nil, ErrEmptyConnectionID
	}
	var out ReconnectOutput
	if err := c.do(ctx, http.MethodPost, "/v1/connections/"+url.PathEscape(connectionID)+"/reconnect", nil, in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for key := range m {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	return keys
}

// ListProviders returns the configured providers: GET /v1/providers.
func (c *Client) ListProviders(ctx context.Context) ([]Provider, error) {
	var out struct {
		Providers []Provider `json:"providers"`
	}
	if err := c.do(ctx, http.MethodGet, "/v1/providers", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Providers, nil
}

// WaitForActive polls [Client.CheckConnection] until the connection is
// active and returns it. It polls after 1s, then backs off up to every 5s
// (with jitter); see [Client.WaitForActiveWithOptions] to change that.
//
// It returns a [*ConnectionFailedError] when the connection becomes "failed"
// or "revoked", the error of a check that failed in a way retries cannot fix
// (401, 404, …), or, when ctx is done first, an error wrapping ctx.Err().
// Checks that fail after the client's retries with 429, 502, 503 or a
// connection error do not end the wait. Give ctx a deadline: a user may never
// finish the consent.
func (c *Client) WaitForActive(ctx context.Context, connectionID string) (*Connection, error) {
	return c.WaitForActiveWithOptions(ctx, connectionID, WaitOptions{})
}

// WaitForActiveWithOptions is [Client.WaitForActive] with its polling
// intervals set by opts.
func (c *Client) WaitForActiveWithOptions(ctx context.Context, connectionID string, opts WaitOptions) (*Connection, error) {
	if connectionID == "" {
		return nil, ErrEmptyConnectionID
	}
	minI, maxI := opts.MinInterval, opts.MaxInterval
	if minI <= 0 {
		minI = time.Second
	}
	if maxI <= 0 {
		maxI = 5 * time.Second
	}
	if maxI < minI {
		maxI = minI
	}
	interval := minI
	lastStatus := "unknown"
	var lastErr error
	for {
		conn, err := c.CheckConnection(ctx, connectionID)
		switch {
		case err == nil:
			lastStatus, lastErr = conn.Status, nil
			switch conn.Status {
			case StatusActive:
				return conn, nil
			case StatusFailed, StatusRevoked:
				return nil, &ConnectionFailedError{
					ConnectionID: connectionID,
					Status:       conn.Status,
					Code:         conn.Error,
					Description:  conn.ErrorDescription,
					Connection:   conn,
				}
			}
		case ctx.Err() != nil:
			return nil, c.waitCtxErr(ctx, connectionID, lastStatus, lastErr)
		case isRetryable(err):
			lastErr = err
		default:
			return nil, err
		}
		// Jitter between 75% and 100% of the interval.
		d := interval*3/4 + rand.N(interval/4+1)
		if err := c.sleep(ctx, d); err != nil {
			return nil, c.waitCtxErr(ctx, connectionID, lastStatus, lastErr)
		}
		interval = interval * 3 / 2
		if interval > maxI {
			interval = maxI
		}
	}
}

func (c *Client) waitCtxErr(ctx context.Context, id, status string, last error) error {
	if last != nil {
		return fmt.Errorf("oauthsdk: waiting for connection %s to become active (last check: %v): %w", id, last, ctx.Err())
	}
	return fmt.Errorf("oauthsdk: waiting for connection %s to become active (last status %q): %w", id, status, ctx.Err())
}

// do sends one API call with retries and decodes a 2xx JSON answer into out.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	if c.baseErr != nil {
		return c.baseErr
	}
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("oauthsdk: encoding request: %w", err)
		}
	}
	target := c.baseURL + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	for attempt := 0; ; attempt++ {
		err := c.attempt(ctx, method, target, body, out)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctxErr(ctx, err)
		}
		if attempt >= c.retry.Retries || !isRetryable(err) {
			return err
		}
		wait := c.retry.backoff(attempt)
		if ae, ok := apiErrorOf(err); ok && ae.RetryAfter > 0 {
			if ae.RetryAfter > c.retry.MaxDelay {
				return err // longer than we are willing to block; the caller decides
			}
			if ae.RetryAfter > wait {
				wait = ae.RetryAfter
			}
		}
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait {
			return err // the retry could not happen before the deadline
		}
		if serr := c.sleep(ctx, wait); serr != nil {
			return ctxErr(ctx, err)
		}
	}
}

// ctxErr wraps the context's error together with the last attempt's error, so
// that errors.Is(err, context.Canceled) and errors.As(err, **APIError) both
// work.
func ctxErr(ctx context.Context, last error) error {
	cerr := ctx.Err()
	if last == nil {
		return cerr
	}
	if errors.Is(last, cerr) {
		return last
	}
	return fmt.Errorf("oauthsdk: %w (last attempt: %w)", cerr, last)
}

// attempt sends one HTTP request and decodes its answer.
func (c *Client) attempt(ctx context.Context, method, target string, body []byte, out any) error {
	var rdr io.Reader
	if body != nil {
		rdr = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rdr)
	if err != nil {
		return fmt.Errorf("oauthsdk: building request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.apiKey)
	}
	resp, err := c.httpClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyBytes))
	if err != nil {
		return fmt.Errorf("oauthsdk: reading %s %s answer: %w", method, req.URL.Path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return newAPIError(resp, data, c.now())
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*[]byte); ok { // a body that is not one JSON value (the NDJSON audit export)
		*raw = data
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("oauthsdk: decoding %s %s answer (status %d): %w", method, req.URL.Path, resp.StatusCode, err)
	}
	return nil
}
