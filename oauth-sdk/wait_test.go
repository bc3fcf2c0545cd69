package oauthsdk

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

func statusJSON(status, errCode string) string {
	e := "null"
	if errCode != "" {
		e = `"` + errCode + `"`
	}
	return `{"connection_id": "c_1", "status": "` + status + `", "error": ` + e +
		`, "error_description": null, "created_at": "2026-11-26T20:00:00Z", "activated_at": null}`
}

func TestWaitForActiveBecomesActive(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		switch r.Attempt {
		case 1, 2, 4, 5:
			writeJSON(w, http.StatusOK, statusJSON(StatusPending, ""))
		case 3:
			// A transient failure does not end the wait.
			writeJSON(w, http.StatusServiceUnavailable, `{"error": "broker_unavailable", "message": "down"}`)
		default:
			writeJSON(w, http.StatusOK, statusJSON(StatusActive, ""))
		}
	})
	c, rec := newTestClient(t, g.URL, RetryPolicy{})
	conn, err := c.WaitForActiveWithOptions(context.Background(), "c_1",
		WaitOptions{MinInterval: 100 * time.Millisecond, MaxInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if conn.Status != StatusActive {
		t.Fatalf("status %q", conn.Status)
	}
	reqs := g.requests()
	if len(reqs) != 6 {
		t.Fatalf("%d checks", len(reqs))
	}
	for _, r := range reqs {
		if r.Method != http.MethodGet || r.Path != "/v1/check-connection/c_1" {
			t.Fatalf("got %s %s", r.Method, r.Path)
		}
	}
	// Polling backs off from MinInterval to MaxInterval, with jitter (75–100%).
	d := rec.get()
	if len(d) != 5 {
		t.Fatalf("sleeps %v", d)
	}
	ceilings := []time.Duration{100, 150, 200, 200, 200}
	for i, dd := range d {
		ceil := ceilings[i] * time.Millisecond
		if dd < ceil*3/4 || dd > ceil {
			t.Errorf("sleep %d = %v, want within [%v, %v]", i, dd, ceil*3/4, ceil)
		}
	}
}

func TestWaitForActiveDefaults(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		if r.Attempt < 6 {
			writeJSON(w, http.StatusOK, statusJSON(StatusPending, ""))
			return
		}
		writeJSON(w, http.StatusOK, statusJSON(StatusActive, ""))
	})
	c, rec := newTestClient(t, g.URL, RetryPolicy{})
	if _, err := c.WaitForActive(context.Background(), "c_1"); err != nil {
		t.Fatal(err)
	}
	d := rec.get()
	if len(d) != 5 || d[0] < 750*time.Millisecond || d[0] > time.Second {
		t.Fatalf("sleeps %v", d)
	}
	for _, dd := range d {
		if dd > 5*time.Second {
			t.Fatalf("sleep %v over the 5s default maximum", dd)
		}
	}
}

func TestWaitForActiveFailed(t *testing.T) {
	for _, status := range []string{StatusFailed, StatusRevoked} {
		g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
			if r.Attempt == 1 {
				writeJSON(w, http.StatusOK, statusJSON(StatusPending, ""))
				return
			}
			writeJSON(w, http.StatusOK, statusJSON(status, "access_denied"))
		})
		c, _ := newTestClient(t, g.URL, RetryPolicy{})
		conn, err := c.WaitForActive(context.Background(), "c_1")
		var cf *ConnectionFailedError
		if conn != nil || !errors.As(err, &cf) {
			t.Fatalf("%s: conn %v err %v", status, conn, err)
		}
		if cf.Status != status || cf.Code != "access_denied" || cf.ConnectionID != "c_1" || cf.Connection == nil {
			t.Fatalf("%s: got %+v", status, cf)
		}
		if !IsNotActive(err) {
			t.Errorf("%s: IsNotActive false", status)
		}
		if want := "oauthsdk: connection c_1 is " + status + ": access_denied"; err.Error() != want {
			t.Errorf("Error() = %q, want %q", err.Error(), want)
		}
	}
}

func TestWaitForActiveStopsOnPermanentError(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		writeJSON(w, http.StatusNotFound, `{"error": "not_found", "message": "no such connection"}`)
	})
	c, rec := newTestClient(t, g.URL, RetryPolicy{Retries: 3})
	_, err := c.WaitForActive(context.Background(), "c_1")
	if !IsNotFound(err) {
		t.Fatalf("err %v", err)
	}
	if len(g.requests()) != 1 || len(rec.get()) != 0 {
		t.Fatalf("%d checks, sleeps %v", len(g.requests()), rec.get())
	}
}

func TestWaitForActiveContextDeadline(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		writeJSON(w, http.StatusOK, statusJSON(StatusPending, ""))
	})
	t.Setenv(APIKeyEnv, "")
	c := New(g.URL) // real sleeps
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.WaitForActiveWithOptions(ctx, "c_1", WaitOptions{MinInterval: 20 * time.Millisecond, MaxInterval: 50 * time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v", err)
	}
	if !strings.Contains(err.Error(), `last status "pending"`) {
		t.Errorf("Error() = %q", err.Error())
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("returned after %v", el)
	}
	if n := len(g.requests()); n < 3 {
		t.Fatalf("only %d checks", n)
	}
}
