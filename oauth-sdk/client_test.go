package oauthsdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// seen is one request as the fake gateway received it.
type seen struct {
	Method  string
	Path    string // escaped path, as sent on the wire
	Query   string
	Header  http.Header
	Body    []byte
	Attempt int
	At      time.Time
}

// fakeGateway is an httptest server whose answers come from a function of
// the request and its 1-based attempt number.
type fakeGateway struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []seen
}

func newFakeGateway(t *testing.T, answer func(w http.ResponseWriter, r seen)) *fakeGateway {
	t.Helper()
	g := &fakeGateway{}
	g.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		g.mu.Lock()
		s := seen{Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.RawQuery,
			Header: r.Header.Clone(), Body: body, Attempt: len(g.reqs) + 1, At: time.Now()}
		g.reqs = append(g.reqs, s)
		g.mu.Unlock()
		answer(w, s)
	}))
	t.Cleanup(g.Close)
	return g
}

func (g *fakeGateway) requests() []seen {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]seen(nil), g.reqs...)
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// sleepRecorder replaces Client.sleep: it records the delays and does not
// wait.
type sleepRecorder struct {
	mu     sync.Mutex
	delays []time.Duration
}

func (s *sleepRecorder) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.delays = append(s.delays, d)
	s.mu.Unlock()
	return ctx.Err()
}

func (s *sleepRecorder) get() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.delays...)
}

// newTestClient returns a client of g with key "test-key", the given retry
// policy and a recording sleep.
func newTestClient(t *testing.T, baseURL string, p RetryPolicy, opts ...Option) (*Client, *sleepRecorder) {
	t.Helper()
	t.Setenv(APIKeyEnv, "")
	c := New(baseURL, append([]Option{WithAPIKey("test-key"), WithRetry(p)}, opts...)...)
	rec := &sleepRecorder{}
	c.sleep = rec.sleep
	return c, rec
}

const connectionJSON = `{"connection_id": "c_123", "status": "active",
 "provider_name": "google", "provider_id": "p_1", "user_id": "u_1",
 "scopes": ["openid", "email"], "granted_scopes": ["openid"], "scopes_narrowed": true,
 "error": null, "error_description": null,
 "account": {"sub": "1234", "email": "ada@example.com"}, "metadata": {},
 "expires_at": "2026-11-26T21:00:00Z", "created_at": "2026-11-26T20:00:00Z",
 "updated_at": "2026-11-26T20:00:05.123456Z", "activated_at": null,
 "last_refreshed_at": null}`

const tokenJSON = `{"access_token": "at-secret", "token_type": "Bearer",
 "expires_at": "2026-11-26T21:00:00Z", "id_token": "idt-secret", "scopes": ["openid"],
 "provider_name": "google", "connection_id": "c_123"}`

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	tm, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

func TestRequestConnection(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		writeJSON(w, http.StatusCreated, `{"authUrl": "https://idp.example/authorize?state=s1",
			"state": "s1", "scopes": ["openid", "email"], "provider_id": "p_1", "connection_id": "c_123"}`)
	})
	c, _ := newTestClient(t, g.URL, RetryPolicy{})
	out, err := c.RequestConnection(context.Background(), RequestConnectionInput{
		UserID: "u_1", ProviderName: "google", Scopes: []string{"openid", "email"},
		ReturnURL: "https://app.example.com/return", Params: map[string]string{"tenant": "t1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := &RequestConnectionOutput{AuthURL: "https://idp.example/authorize?state=s1", State: "s1",
		Scopes: []string{"openid", "email"}, ProviderID: "p_1", ConnectionID: "c_123"}
	if !reflect.DeepEqual(out, want) {
		t.Fatalf("got %+v, want %+v", out, want)
	}
	reqs := g.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests", len(reqs))
	}
	r := reqs[0]
	if r.Method != http.MethodPost || r.Path != "/v1/request-connection" || r.Query != "" {
		t.Fatalf("got %s %s?%s", r.Method, r.Path, r.Query)
	}
	if got := r.Header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type = %q", got)
	}
	if got := r.Header.Get("Accept"); got != "application/json" {
		t.Errorf("Accept = %q", got)
	}
	if got := r.Header.Get("Authorization"); got != "Bearer test-key" {
		t.Errorf("Authorization = %q", got)
	}
	if got := r.Header.Get("User-Agent"); got != DefaultUserAgent {
		t.Errorf("User-Agent = %q", got)
	}
	var body map[string]any
	if err := json.Unmarshal(r.Body, &body); err != nil {
		t.Fatal(err)
	}
	wantBody := map[string]any{"user_id": "u_1", "provider_name": "google",
		"scopes": []any{"openid", "email"}, "return_url": "https://app.example.com/return",
		"params": map[string]any{"tenant": "t1"}}
	if !reflect.DeepEqual(body, wantBody) {
		t.Fatalf("body %v, want %v", body, wantBody)
	}
}

func TestRequestConnectionOmitsEmptyOptionalFields(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		writeJSON(w, http.StatusCreated, `{"authUrl": "a", "state": "s", "scopes": [], "provider_id": "p", "connection_id": "c"}`)
	})
	c, _ := newTestClient(t, g.URL, RetryPolicy{})
	if _, err := c.RequestConnection(context.Background(), RequestConnectionInput{
		UserID: "u", ProviderName: "google", ReturnURL: "https://app.example.com/r"}); err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	if err := json.Unmarshal(g.requests()[0].Body, &body); err != nil {
		t.Fatal(err)
	}
	if _, ok := body["params"]; ok {
		t.Errorf("params sent: %v", body)
	}
	if _, ok := body["scopes"]; ok {
		t.Errorf("scopes sent: %v", body)
	}
}

func TestCheckConnectionDecodesConnection(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		writeJSON(w, http.StatusOK, connectionJSON)
	})
	c, _ := newTestClient(t, g.URL, RetryPolicy{})
	conn, err := c.CheckConnection(context.Background(), "c_123")
	if err != nil {
		t.Fatal(err)
	}
	if r := g.requests()[0]; r.Method != http.MethodGet || r.Path != "/v1/check-connection/c_123" {
		t.Fatalf("got %s %s", r.Method, r.Path)
	}
	exp := mustTime(t, "2026-11-26T21:00:00Z")
	created := mustTime(t, "2026-11-26T20:00:00Z")
	updated := mustTime(t, "2026-11-26T20:00:05.123456Z")
	want := &Connection{ConnectionID: "c_123", Status: StatusActive, ProviderName: "google",
		ProviderID: "p_1", UserID: "u_1", Scopes: []string{"openid", "email"},
		GrantedScopes: []string{"openid"}, ScopesNarrowed: true,
		Account:   map[string]any{"sub": "1234", "email": "ada@example.com"},
		Metadata:  map[string]any{},
		ExpiresAt: &exp, CreatedAt: &created, UpdatedAt: &updated}
	if !reflect.DeepEqual(conn, want) {
		t.Fatalf("got %+v\nwant %+v", conn, want)
	}
}

func TestNullTimestampsDecodeToNil(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		writeJSON(w, http.StatusOK, `{"connection_id": "c_1", "status": "pending",
			"expires_at": null, "created_at": "2026-11-26T20:00:00Z", "updated_at": "2026-11-26T20:00:00Z",
			"activated_at": null, "last_refreshed_at": null, "error": null, "error_description": null,
			"account": {}, "metadata": {}}`)
	})
	c, _ := newTestClient(t, g.URL, RetryPolicy{})
	conn, err := c.CheckConnection(context.Background(), "c_1")
	if err != nil {
		t.Fatal(err)
	}
	if conn.ExpiresAt != nil || conn.ActivatedAt != nil || conn.LastRefreshedAt != nil {
		t.Fatalf("null timestamps decoded as %v %v %v", conn.ExpiresAt, conn.ActivatedAt, conn.LastRefreshedAt)
	}
	if conn.CreatedAt == nil || !conn.CreatedAt.Equal(mustTime(t, "2026-11-26T20:00:00Z")) {
		t.Fatalf("created_at = %v", conn.CreatedAt)
	}
	if conn.Error != "" || conn.ErrorDescription != "" {
		t.Fatalf("null error decoded as %q %q", conn.Error, conn.ErrorDescription)
	}

	g2 := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		writeJSON(w, http.StatusOK, `{"access_token": "at", "token_type": "Bearer", "expires_at": null,
			"scopes": [], "provider_name": "github", "connection_id": "c_1"}`)
	})
	c2, _ := newTestClient(t, g2.URL, RetryPolicy{})
	tok, err := c2.GetToken(context.Background(), "c_1")
	if err != nil {
		t.Fatal(err)
	}
	if tok.ExpiresAt != nil || tok.IDToken != "" {
		t.Fatalf("got expires_at %v id_token %q", tok.ExpiresAt, tok.IDToken)
	}
	if tok.ExpiresWithin(time.Hour) {
		t.Error("a token without expiry should never expire")
	}
}

func TestGetToken(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, http.StatusOK, tokenJSON)
	})
	c, _ := newTestClient(t, g.URL, RetryPolicy{})
	tok, err := c.GetToken(context.Background(), "c_123")
	if err != nil {
		t.Fatal(err)
	}
	r := g.requests()[0]
	if r.Method != http.MethodGet || r.Path != "/v1/token/c_123" || r.Query != "" {
		t.Fatalf("got %s %s?%s", r.Method, r.Path, r.Query)
	}
	exp := mustTime(t, "2026-11-26T21:00:00Z")
	want := &Token{AccessToken: "at-secret", TokenType: "Bearer", ExpiresAt: &exp, IDToken: "idt-secret",
		Scopes: []string{"openid"}, ProviderName: "google", ConnectionID: "c_123"}
	if !reflect.DeepEqual(tok, want) {
		t.Fatalf("got %#v", *tok)
	}
}

func TestGetTokenWithOptions(t *testing.T) {
	for _, tc := range []struct {
		opts  GetTokenOptions
		query string
	}{
		{GetTokenOptions{}, ""},
		{GetTokenOptions{AutoRefresh: true}, "auto_refresh=true"},
		{GetTokenOptions{AutoRefresh: true, MinTTL: 60 * time.Second}, "auto_refresh=true&min_ttl=60"},
		{GetTokenOptions{AutoRefresh: true, MinTTL: 89500 * time.Millisecond}, "auto_refresh=true&min_ttl=90"},
		{GetTokenOptions{MinTTL: time.Minute}, ""}, // MinTTL means nothing without AutoRefresh
	} {
		g := newFakeGateway(t, func(w http.ResponseWriter, r seen) { writeJSON(w, http.StatusOK, tokenJSON) })
		c, _ := newTestClient(t, g.URL, RetryPolicy{})
		if _, err := c.GetTokenWithOptions(context.Background(), "c_123", tc.opts); err != nil {
			t.Fatal(err)
		}
		if got := g.requests()[0].Query; got != tc.query {
			t.Errorf("%+v: query %q, want %q", tc.opts, got, tc.query)
		}
	}
}

func TestRefresh(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) { writeJSON(w, http.StatusOK, tokenJSON) })
	c, _ := newTestClient(t, g.URL, RetryPolicy{})
	tok, err := c.Refresh(context.Background(), "c_123")
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != "at-secret" {
		t.Fatalf("access token %q", tok.AccessToken)
	}
	r := g.requests()[0]
	if r.Method != http.MethodPost || r.Path != "/v1/refresh/c_123" || len(r.Body) != 0 {
		t.Fatalf("got %s %s body %q", r.Method, r.Path, r.Body)
	}
}

func TestListConnections(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		writeJSON(w, http.StatusOK, `{"count": 3, "next": "https://gw.example/v1/connections?page=3",
			"previous": null, "results": [`+connectionJSON+`]}`)
	})
	c, _ := newTestClient(t, g.URL, RetryPolicy{})
	list, err := c.ListConnections(context.Background(), ListConnectionsInput{
		UserID: "u 1", ProviderName: "google", Status: StatusActive, Page: 2, PageSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	r := g.requests()[0]
	if r.Method != http.MethodGet || r.Path != "/v1/connections" {
		t.Fatalf("got %s %s", r.Method, r.Path)
	}
	if want := "page=2&page_size=1&provider_name=google&status=active&user_id=u+1"; r.Query != want {
		t.Errorf("query %q, want %q", r.Query, want)
	}
	if list.Count != 3 || list.Next != "https://gw.example/v1/connections?page=3" || list.Previous != "" ||
		len(list.Results) != 1 || list.Results[0].ConnectionID != "c_123" {
		t.Fatalf("got %+v", list)
	}

	// No filter: no query string at all.
	if _, err := c.ListConnections(context.Background(), ListConnectionsInput{}); err != nil {
		t.Fatal(err)
	}
	if q := g.requests()[1].Query; q != "" {
		t.Errorf("query %q, want none", q)
	}
}

func TestDeleteConnection(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		writeJSON(w, http.StatusOK, strings.Replace(connectionJSON, `"active"`, `"revoked"`, 1))
	})
	c, _ := newTestClient(t, g.URL, RetryPolicy{})
	conn, err := c.DeleteConnection(context.Background(), "c_123")
	if err != nil {
		t.Fatal(err)
	}
	if conn.Status != StatusRevoked {
		t.Fatalf("status %q", conn.Status)
	}
	if r := g.requests()[0]; r.Method != http.MethodDelete || r.Path != "/v1/connections/c_123" {
		t.Fatalf("got %s %s", r.Method, r.Path)
	}
}

func TestListProviders(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		writeJSON(w, http.StatusOK, `{"providers": [{"name": "google", "display_name": "Google",
			"provider_id": "p_1", "default_scopes": ["openid", "email"], "supports_refresh": true,
			"supports_pkce": true, "docs_url": "https://developers.google.com/identity", "params": []},
			{"name": "entra", "display_name": "Microsoft", "provider_id": "p_2", "default_scopes": [],
			"supports_refresh": true, "supports_pkce": true, "docs_url": "", "params": ["tenant"]}]}`)
	})
	c, _ := newTestClient(t, g.URL, RetryPolicy{})
	ps, err := c.ListProviders(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if r := g.requests()[0]; r.Method != http.MethodGet || r.Path != "/v1/providers" {
		t.Fatalf("got %s %s", r.Method, r.Path)
	}
	want := []Provider{
		{Name: "google", DisplayName: "Google", ProviderID: "p_1", DefaultScopes: []string{"openid", "email"},
			SupportsRefresh: true, SupportsPKCE: true, DocsURL: "https://developers.google.com/identity", Params: []string{}},
		{Name: "entra", DisplayName: "Microsoft", ProviderID: "p_2", DefaultScopes: []string{},
			SupportsRefresh: true, SupportsPKCE: true, Params: []string{"tenant"}},
	}
	if !reflect.DeepEqual(ps, want) {
		t.Fatalf("got %+v", ps)
	}
}

func TestConnectionIDIsPathEscaped(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) { writeJSON(w, http.StatusOK, connectionJSON) })
	c, _ := newTestClient(t, g.URL, RetryPolicy{})
	if _, err := c.CheckConnection(context.Background(), "a/b?c"); err != nil {
		t.Fatal(err)
	}
	if r := g.requests()[0]; r.Path != "/v1/check-connection/a%2Fb%3Fc" || r.Query != "" {
		t.Fatalf("path %q query %q", r.Path, r.Query)
	}
}

func TestEmptyConnectionIDSendsNothing(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) { writeJSON(w, http.StatusOK, `{}`) })
	c, _ := newTestClient(t, g.URL, RetryPolicy{})
	ctx := context.Background()
	calls := map[string]func() error{
		"CheckConnection":  func() error { _, err := c.CheckConnection(ctx, ""); return err },
		"GetToken":         func() error { _, err := c.GetToken(ctx, ""); return err },
		"Refresh":          func() error { _, err := c.Refresh(ctx, ""); return err },
		"DeleteConnection": func() error { _, err := c.DeleteConnection(ctx, ""); return err },
		"WaitForActive":    func() error { _, err := c.WaitForActive(ctx, ""); return err },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, ErrEmptyConnectionID) {
			t.Errorf("%s: err %v", name, err)
		}
	}
	if n := len(g.requests()); n != 0 {
		t.Fatalf("%d requests sent", n)
	}
}

func TestBaseURLPrefixAndTrailingSlash(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) { writeJSON(w, http.StatusOK, `{"providers": []}`) })
	c, _ := newTestClient(t, g.URL+"/dromos/", RetryPolicy{})
	if c.BaseURL() != g.URL+"/dromos" {
		t.Errorf("BaseURL %q", c.BaseURL())
	}
	if _, err := c.ListProviders(context.Background()); err != nil {
		t.Fatal(err)
	}
	if p := g.requests()[0].Path; p != "/dromos/v1/providers" {
		t.Fatalf("path %q", p)
	}
}

func TestInvalidBaseURL(t *testing.T) {
	for _, u := range []string{"", "gateway.example.com", "ftp://gw.example", "http://", "http://gw/?x=1", "http://[::1"} {
		_, err := New(u).ListProviders(context.Background())
		if err == nil || !strings.Contains(err.Error(), "invalid base URL") {
			t.Errorf("%q: err %v", u, err)
		}
	}
}

func TestAPIKeyFromEnvironment(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) { writeJSON(w, http.StatusOK, `{"providers": []}`) })
	ctx := context.Background()
	auth := func(i int) string { return g.requests()[i].Header.Get("Authorization") }

	t.Setenv(APIKeyEnv, "env-key")
	if _, err := New(g.URL).ListProviders(ctx); err != nil {
		t.Fatal(err)
	}
	if got := auth(0); got != "Bearer env-key" {
		t.Errorf("without WithAPIKey: Authorization %q", got)
	}
	if _, err := New(g.URL, WithAPIKey("option-key")).ListProviders(ctx); err != nil {
		t.Fatal(err)
	}
	if got := auth(1); got != "Bearer option-key" {
		t.Errorf("WithAPIKey over env: Authorization %q", got)
	}
	if _, err := New(g.URL, WithAPIKey("")).ListProviders(ctx); err != nil {
		t.Fatal(err)
	}
	if got, ok := g.requests()[2].Header["Authorization"]; ok {
		t.Errorf("WithAPIKey(\"\"): Authorization sent: %q", got)
	}
	t.Setenv(APIKeyEnv, "")
	if _, err := New(g.URL).ListProviders(ctx); err != nil {
		t.Fatal(err)
	}
	if got, ok := g.requests()[3].Header["Authorization"]; ok {
		t.Errorf("no key anywhere: Authorization sent: %q", got)
	}
}

func TestUserAgent(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) { writeJSON(w, http.StatusOK, `{"providers": []}`) })
	c, _ := newTestClient(t, g.URL, RetryPolicy{}, WithUserAgent("my-agent/1.2"))
	if _, err := c.ListProviders(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := g.requests()[0].Header.Get("User-Agent"); got != "my-agent/1.2" {
		t.Fatalf("User-Agent %q", got)
	}
}

type countingTransport struct {
	n    int
	base http.RoundTripper
}

func (ct *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ct.n++
	return ct.base.RoundTrip(r)
}

func TestWithHTTPClient(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) { writeJSON(w, http.StatusOK, `{"providers": []}`) })
	ct := &countingTransport{base: http.DefaultTransport}
	c, _ := newTestClient(t, g.URL, RetryPolicy{}, WithHTTPClient(&http.Client{Transport: ct}))
	if _, err := c.ListProviders(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ct.n != 1 {
		t.Fatalf("custom transport used %d times", ct.n)
	}
	if New(g.URL, WithHTTPClient(nil)).httpClient == nil {
		t.Fatal("WithHTTPClient(nil) left no client")
	}
}

func TestTokenStringRedactsSecrets(t *testing.T) {
	exp := mustTime(t, "2026-11-26T21:00:00Z")
	tok := Token{AccessToken: "at-secret", IDToken: "idt-secret", TokenType: "Bearer",
		ExpiresAt: &exp, ProviderName: "google", ConnectionID: "c_1"}
	for _, s := range []string{fmt.Sprint(tok), fmt.Sprintf("%+v", tok), fmt.Sprintf("%#v", tok),
		fmt.Sprintf("%v", &tok), tok.String()} {
		if strings.Contains(s, "secret") {
			t.Errorf("token leaked: %s", s)
		}
		if !strings.Contains(s, "c_1") || !strings.Contains(s, "2026-11-26T21:00:00Z") {
			t.Errorf("token description lacks id or expiry: %s", s)
		}
	}
}

func TestMalformedSuccessBodyIsNotRetried(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) { writeJSON(w, http.StatusOK, `{"providers": [`) })
	c, rec := newTestClient(t, g.URL, RetryPolicy{Retries: 3})
	_, err := c.ListProviders(context.Background())
	if err == nil || !strings.Contains(err.Error(), "decoding") {
		t.Fatalf("err %v", err)
	}
	if n := len(g.requests()); n != 1 || len(rec.get()) != 0 {
		t.Fatalf("%d attempts, %d sleeps", n, len(rec.get()))
	}
}

// closeFirstConnections answers with a dropped connection to the first n
// requests, then with ok.
func closeFirstConnections(t *testing.T, n int, ok string) (*httptest.Server, func() int) {
	t.Helper()
	var mu sync.Mutex
	count := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		count++
		c := count
		mu.Unlock()
		if c <= n {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			conn.Close()
			return
		}
		writeJSON(w, http.StatusOK, ok)
	}))
	t.Cleanup(srv.Close)
	return srv, func() int { mu.Lock(); defer mu.Unlock(); return count }
}

func TestConnectionErrorIsRetried(t *testing.T) {
	srv, count := closeFirstConnections(t, 2, connectionJSON)
	c, rec := newTestClient(t, srv.URL, RetryPolicy{Retries: 3})
	conn, err := c.CheckConnection(context.Background(), "c_123")
	if err != nil {
		t.Fatal(err)
	}
	if conn.ConnectionID != "c_123" || count() != 3 || len(rec.get()) != 2 {
		t.Fatalf("conn %v, %d attempts, %d sleeps", conn, count(), len(rec.get()))
	}
}

func TestConnectionRefusedIsRetriedThenReturned(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there any more
	c, rec := newTestClient(t, "http://"+addr, RetryPolicy{Retries: 2})
	_, err = c.ListProviders(context.Background())
	var ne net.Error
	if !errors.As(err, &ne) {
		t.Fatalf("err %T %v, want a net.Error", err, err)
	}
	var ae *APIError
	if errors.As(err, &ae) {
		t.Fatalf("connection error reported as APIError: %v", err)
	}
	if n := len(rec.get()); n != 2 {
		t.Fatalf("%d sleeps, want 2", n)
	}
}

func TestCertificateErrorIsNotRetried(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, `{"providers": []}`)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // silence the expected handshake error
	srv.StartTLS()
	t.Cleanup(srv.Close)
	// The default client does not trust the test server's certificate.
	c, rec := newTestClient(t, srv.URL, RetryPolicy{Retries: 3})
	if _, err := c.ListProviders(context.Background()); err == nil {
		t.Fatal("no error")
	}
	if n := len(rec.get()); n != 0 {
		t.Fatalf("%d retries of a certificate error", n)
	}
	// With the server's client (trusting its certificate), it works.
	c2, _ := newTestClient(t, srv.URL, RetryPolicy{}, WithHTTPClient(srv.Client()))
	if _, err := c2.ListProviders(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestHTTPClientTimeoutIsRetried(t *testing.T) {
	var mu sync.Mutex
	count := 0
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		count++
		c := count
		mu.Unlock()
		if c == 1 {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		writeJSON(w, http.StatusOK, `{"providers": []}`)
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	c, rec := newTestClient(t, srv.URL, RetryPolicy{Retries: 1},
		WithHTTPClient(&http.Client{Timeout: 100 * time.Millisecond}))
	if _, err := c.ListProviders(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if count != 2 || len(rec.get()) != 1 {
		t.Fatalf("%d attempts, %d sleeps", count, len(rec.get()))
	}
}
