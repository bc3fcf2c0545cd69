package oauthsdk

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestRateLimitedHonoursRetryAfter(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		if r.Attempt == 1 {
			w.Header().Set("Retry-After", "7")
			writeJSON(w, http.StatusTooManyRequests, `{"error": "rate_limited", "message": "slow down"}`)
			return
		}
		writeJSON(w, http.StatusOK, tokenJSON)
	})
	c, rec := newTestClient(t, g.URL, RetryPolicy{Retries: 3, BaseDelay: time.Millisecond})
	tok, err := c.GetToken(context.Background(), "c_123")
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != "at-secret" {
		t.Fatalf("token %v", tok)
	}
	if d := rec.get(); len(d) != 1 || d[0] != 7*time.Second {
		t.Fatalf("sleeps %v, want [7s]", d)
	}
	if n := len(g.requests()); n != 2 {
		t.Fatalf("%d attempts", n)
	}
}

// TestRetryAfterRealWait checks with the real clock that a retry does not
// come before the Retry-After delay.
func TestRetryAfterRealWait(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		if r.Attempt == 1 {
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusTooManyRequests, `{"error": "rate_limited", "message": "slow down"}`)
			return
		}
		writeJSON(w, http.StatusOK, `{"providers": []}`)
	})
	t.Setenv(APIKeyEnv, "")
	c := New(g.URL, WithRetry(RetryPolicy{Retries: 1, BaseDelay: time.Millisecond}))
	if _, err := c.ListProviders(context.Background()); err != nil {
		t.Fatal(err)
	}
	reqs := g.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d attempts", len(reqs))
	}
	if gap := reqs[1].At.Sub(reqs[0].At); gap < time.Second {
		t.Fatalf("retried after %v, before Retry-After: 1", gap)
	}
}

func TestBadGatewayAndUnavailableAreRetried(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		switch r.Attempt {
		case 1:
			writeJSON(w, http.StatusBadGateway, `{"error": "provider_error", "message": "provider said 500"}`)
		case 2:
			w.Header().Set("Retry-After", "0")
			writeJSON(w, http.StatusServiceUnavailable, `{"error": "broker_unavailable", "message": "try later"}`)
		default:
			writeJSON(w, http.StatusCreated, `{"authUrl": "https://idp/a", "state": "s", "scopes": ["openid"],
				"provider_id": "p", "connection_id": "c_9"}`)
		}
	})
	c, rec := newTestClient(t, g.URL, RetryPolicy{Retries: 3, BaseDelay: 100 * time.Millisecond, MaxDelay: time.Second})
	out, err := c.RequestConnection(context.Background(), RequestConnectionInput{
		UserID: "u", ProviderName: "google", Scopes: []string{"openid"}, ReturnURL: "https://app/r"})
	if err != nil {
		t.Fatal(err)
	}
	if out.ConnectionID != "c_9" {
		t.Fatalf("got %+v", out)
	}
	reqs := g.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d attempts", len(reqs))
	}
	// The POST body is sent whole on every attempt.
	for _, r := range reqs[1:] {
		if string(r.Body) != string(reqs[0].Body) || len(r.Body) == 0 {
			t.Fatalf("body changed between attempts: %q vs %q", r.Body, reqs[0].Body)
		}
	}
	// Exponential backoff with jitter: retry n waits within [d/2, d], d = 100ms·2ⁿ.
	d := rec.get()
	if len(d) != 2 || d[0] < 50*time.Millisecond || d[0] > 100*time.Millisecond ||
		d[1] < 100*time.Millisecond || d[1] > 200*time.Millisecond {
		t.Fatalf("sleeps %v", d)
	}
}

func TestRetriesExhaustedReturnsLastError(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		w.Header().Set("Retry-After", "2")
		writeJSON(w, http.StatusServiceUnavailable, `{"error": "provider_unavailable", "message": "down"}`)
	})
	c, rec := newTestClient(t, g.URL, RetryPolicy{Retries: 2})
	_, err := c.Refresh(context.Background(), "c_1")
	var ae *APIError
	if !errors.As(err, &ae) {
		t.Fatalf("err %T %v", err, err)
	}
	if ae.StatusCode != 503 || ae.Code != CodeProviderUnavailable || ae.Message != "down" || ae.RetryAfter != 2*time.Second {
		t.Fatalf("got %+v", ae)
	}
	if n := len(g.requests()); n != 3 {
		t.Fatalf("%d attempts, want 3", n)
	}
	if d := rec.get(); !reflect.DeepEqual(d, []time.Duration{2 * time.Second, 2 * time.Second}) {
		t.Fatalf("sleeps %v", d)
	}
}

func TestDefaultPolicyRetriesTwice(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		writeJSON(w, http.StatusBadGateway, `{"error": "bad_gateway", "message": "broker said nonsense"}`)
	})
	t.Setenv(APIKeyEnv, "")
	c := New(g.URL)
	rec := &sleepRecorder{}
	c.sleep = rec.sleep
	if _, err := c.ListProviders(context.Background()); err == nil {
		t.Fatal("no error")
	}
	if n := len(g.requests()); n != DefaultRetries+1 {
		t.Fatalf("%d attempts", n)
	}
	for _, d := range rec.get() {
		if d < DefaultBaseDelay/2 || d > 2*DefaultBaseDelay {
			t.Fatalf("default delay %v", d)
		}
	}
}

func TestZeroRetriesDisablesRetry(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		writeJSON(w, http.StatusServiceUnavailable, `{"error": "broker_unavailable", "message": "x"}`)
	})
	for _, p := range []RetryPolicy{{}, {Retries: -1}} {
		before := len(g.requests())
		c, rec := newTestClient(t, g.URL, p)
		if _, err := c.ListProviders(context.Background()); !isServiceUnavailable(err) {
			t.Fatalf("err %v", err)
		}
		if n := len(g.requests()) - before; n != 1 || len(rec.get()) != 0 {
			t.Fatalf("%+v: %d attempts", p, n)
		}
	}
}

func isServiceUnavailable(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.StatusCode == http.StatusServiceUnavailable
}

func TestClientErrorsAreNotRetried(t *testing.T) {
	cases := []struct {
		status int
		body   string
		is     func(error) bool
		check  func(t *testing.T, ae *APIError)
	}{
		{400, `{"error": "invalid_request", "message": "bad input", "details": {"return_url": ["not allowed"], "scopes": "must be a list", "x": {"y": 1}}}`,
			IsInvalidRequest, func(t *testing.T, ae *APIError) {
				want := map[string][]string{"return_url": {"not allowed"}, "scopes": {"must be a list"}, "x": {`{"y": 1}`}}
				if !reflect.DeepEqual(ae.Details, want) {
					t.Errorf("details %v", ae.Details)
				}
			}},
		{401, `{"error": "unauthorized", "message": "bad key"}`, IsUnauthorized, nil},
		{403, `{"error": "forbidden", "message": "no scope"}`, IsForbidden, nil},
		{404, `{"error": "not_found", "message": "no such connection"}`, IsNotFound, nil},
		{409, `{"error": "connection_not_active", "message": "not active", "status": "failed", "reconnect_required": true}`,
			IsNotActive, func(t *testing.T, ae *APIError) {
				if ae.Status != StatusFailed || !ae.ReconnectRequired {
					t.Errorf("status %q reconnect %v", ae.Status, ae.ReconnectRequired)
				}
				if !strings.Contains(ae.Error(), "connection status: failed") {
					t.Errorf("Error() = %q", ae.Error())
				}
			}},
		{413, `{"error": "request_too_large", "message": "too big"}`, nil, nil},
		{500, `{"error": "server_error", "message": "oops"}`, nil, nil},
		{504, `gateway timeout`, nil, nil},
	}
	helpers := map[string]func(error) bool{"IsInvalidRequest": IsInvalidRequest, "IsUnauthorized": IsUnauthorized,
		"IsForbidden": IsForbidden, "IsNotFound": IsNotFound, "IsNotActive": IsNotActive, "IsRateLimited": IsRateLimited}
	for _, tc := range cases {
		g := newFakeGateway(t, func(w http.ResponseWriter, r seen) { writeJSON(w, tc.status, tc.body) })
		c, rec := newTestClient(t, g.URL, RetryPolicy{Retries: 5})
		_, err := c.GetToken(context.Background(), "c_1")
		var ae *APIError
		if !errors.As(err, &ae) || ae.StatusCode != tc.status {
			t.Fatalf("%d: err %T %v", tc.status, err, err)
		}
		if n := len(g.requests()); n != 1 || len(rec.get()) != 0 {
			t.Errorf("%d: %d attempts", tc.status, n)
		}
		// Exactly the matching helper says yes.
		for name, h := range helpers {
			want := tc.is != nil && reflect.ValueOf(h).Pointer() == reflect.ValueOf(tc.is).Pointer()
			if h(err) != want {
				t.Errorf("%d: %s = %v", tc.status, name, !want)
			}
		}
		if tc.check != nil {
			tc.check(t, ae)
		}
	}
}

func TestHelpersOnOtherErrors(t *testing.T) {
	for _, err := range []error{nil, errors.New("x"), context.Canceled} {
		if IsNotFound(err) || IsNotActive(err) || IsUnauthorized(err) || IsForbidden(err) ||
			IsRateLimited(err) || IsInvalidRequest(err) {
			t.Errorf("a helper matched %v", err)
		}
	}
	// Helpers see through wrapping.
	wrapped := errors.Join(errors.New("context"), &APIError{StatusCode: 429, Code: CodeRateLimited})
	if !IsRateLimited(wrapped) {
		t.Error("IsRateLimited missed a wrapped APIError")
	}
}

func TestNonJSONErrorBody(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		w.Write([]byte("<html>\n<body>upstream   down</body></html>"))
	})
	c, _ := newTestClient(t, g.URL, RetryPolicy{})
	_, err := c.ListProviders(context.Background())
	var ae *APIError
	if !errors.As(err, &ae) {
		t.Fatalf("err %v", err)
	}
	if ae.Code != "" || ae.Message != "Bad Gateway: <html> <body>upstream down</body></html>" {
		t.Fatalf("got %+v", ae)
	}
	if got := ae.Error(); got != "oauthsdk: 502: Bad Gateway: <html> <body>upstream down</body></html>" {
		t.Fatalf("Error() = %q", got)
	}
}

func TestAPIErrorMessage(t *testing.T) {
	ae := &APIError{StatusCode: 404, Code: CodeNotFound, Message: "no such connection"}
	if got := ae.Error(); got != "oauthsdk: 404 not_found: no such connection" {
		t.Fatalf("Error() = %q", got)
	}
	ae = &APIError{StatusCode: 400, Code: CodeInvalidRequest, Message: "bad",
		Details: map[string][]string{"b": {"x"}, "a": {"y", "z"}}}
	if got := ae.Error(); got != "oauthsdk: 400 invalid_request: bad [a: y z; b: x]" {
		t.Fatalf("Error() = %q", got)
	}
}

func TestContextCancellationStopsRetryLoop(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		writeJSON(w, http.StatusServiceUnavailable, `{"error": "broker_unavailable", "message": "down"}`)
	})
	t.Setenv(APIKeyEnv, "")
	// Real sleeps, long enough that only cancellation can end the call quickly.
	c := New(g.URL, WithRetry(RetryPolicy{Retries: 10, BaseDelay: 10 * time.Second, MaxDelay: 20 * time.Second}))
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.ListProviders(ctx)
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Fatalf("call lasted %v after cancellation", elapsed)
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != 503 {
		t.Fatalf("last attempt's error not kept: %v", err)
	}
	if n := len(g.requests()); n != 1 {
		t.Fatalf("%d attempts", n)
	}
}

func TestCancelledContextSendsNothing(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) { writeJSON(w, http.StatusOK, `{"providers": []}`) })
	c, rec := newTestClient(t, g.URL, RetryPolicy{Retries: 3})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.ListProviders(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	if len(g.requests()) != 0 || len(rec.get()) != 0 {
		t.Fatal("a request was sent or retried")
	}
}

func TestRetryAfterBeyondDeadlineReturnsAtOnce(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		w.Header().Set("Retry-After", "5")
		writeJSON(w, http.StatusTooManyRequests, `{"error": "rate_limited", "message": "slow down"}`)
	})
	c, rec := newTestClient(t, g.URL, RetryPolicy{Retries: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := c.ListProviders(ctx)
	var ae *APIError
	if !IsRateLimited(err) || !errors.As(err, &ae) || ae.RetryAfter != 5*time.Second {
		t.Fatalf("err %v", err)
	}
	if len(rec.get()) != 0 || len(g.requests()) != 1 {
		t.Fatalf("waited %v", rec.get())
	}
}

func TestRetryAfterBeyondMaxDelayIsNotWaited(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		w.Header().Set("Retry-After", "120")
		writeJSON(w, http.StatusTooManyRequests, `{"error": "rate_limited", "message": "slow down"}`)
	})
	c, rec := newTestClient(t, g.URL, RetryPolicy{Retries: 3, MaxDelay: time.Minute})
	_, err := c.ListProviders(context.Background())
	var ae *APIError
	if !errors.As(err, &ae) || ae.RetryAfter != 2*time.Minute {
		t.Fatalf("err %v", err)
	}
	if len(rec.get()) != 0 || len(g.requests()) != 1 {
		t.Fatalf("waited %v", rec.get())
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 26, 21, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"":                              0,
		"3":                             3 * time.Second,
		" 10 ":                          10 * time.Second,
		"0":                             0,
		"-4":                            0,
		"1.5":                           1500 * time.Millisecond,
		"soon":                          0,
		"Thu, 26 Nov 2026 21:00:30 GMT": 30 * time.Second,
		"Thu, 26 Nov 2026 20:59:00 GMT": 0,
	} {
		if got := parseRetryAfter(in, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestBackoffBounds(t *testing.T) {
	p := RetryPolicy{BaseDelay: 100 * time.Millisecond, MaxDelay: time.Second}.normalized()
	for n, ceil := range []time.Duration{100, 200, 400, 800, 1000, 1000, 1000} {
		ceil *= time.Millisecond
		for i := 0; i < 200; i++ {
			if d := p.backoff(n); d < ceil/2 || d > ceil {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", n, d, ceil/2, ceil)
			}
		}
	}
	if d := (RetryPolicy{}).normalized().backoff(100); d > DefaultMaxDelay {
		t.Fatalf("backoff(100) = %v", d)
	}
	z := RetryPolicy{}.normalized()
	if z.BaseDelay != DefaultBaseDelay || z.MaxDelay != DefaultMaxDelay || z.Retries != 0 {
		t.Fatalf("defaults %+v", z)
	}
}
