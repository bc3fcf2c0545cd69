package oauthsdk

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

func TestProxySendsTheCallAndReturnsTheProvidersAnswer(t *testing.T) {
	var got *http.Request
	var body string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		b, _ := io.ReadAll(r.Body)
		body = string(b)
		w.Header().Set("Dromos-Connection-Id", "c_1")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	defer srv.Close()
	c := New(srv.URL, WithAPIKey("dk_key"))
	resp, err := c.Proxy(context.Background(), "c_1", ProxyRequest{
		Method:  "post",
		Path:    "/chat.postMessage",
		Query:   url.Values{"x": {"1"}},
		Header:  http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer not-sent"}},
		Body:    strings.NewReader(`{"text":"hi"}`),
		Retry:   true,
		Retries: 2,
		Host:    "files.example",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 201 || string(data) != `{"ok":true}` {
		t.Fatalf("answer %d %s", resp.StatusCode, data)
	}
	if got.Method != "POST" || got.URL.Path != "/v1/proxy/c_1/chat.postMessage" || got.URL.RawQuery != "x=1" {
		t.Fatalf("request %s %s", got.Method, got.URL)
	}
	if got.Header.Get("Authorization") != "Bearer dk_key" || body != `{"text":"hi"}` {
		t.Fatalf("auth %q body %q", got.Header.Get("Authorization"), body)
	}
	for name, want := range map[string]string{"Dromos-Proxy-Retry": "true", "Dromos-Proxy-Retries": "2", "Dromos-Proxy-Host": "files.example"} {
		if got.Header.Get(name) != want {
			t.Fatalf("%s = %q", name, got.Header.Get(name))
		}
	}
}

func TestProxyReturnsProviderErrorsAndRaisesGatewayRefusals(t *testing.T) {
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		if calls == 1 {
			w.Header().Set("Dromos-Connection-Id", "c_1")
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"message":"Not Found"}`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"error":"proxy_forbidden","message":"no rule 'google GET /x'"}`))
	}))
	defer srv.Close()
	c := New(srv.URL, WithAPIKey("k"))
	resp, err := c.Proxy(context.Background(), "c_1", ProxyRequest{Path: "/repos/x"})
	if err != nil || resp.StatusCode != 404 {
		t.Fatalf("provider 404 should be returned: %v", err)
	}
	resp.Body.Close()
	_, err = c.Proxy(context.Background(), "c_1", ProxyRequest{Path: "/x"})
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != 403 || ae.Code != CodeProxyForbidden {
		t.Fatalf("want proxy_forbidden, got %v", err)
	}
}

func TestProxyRefusesBadArgumentsLocally(t *testing.T) {
	c := New("http://127.0.0.1:1", WithAPIKey("k"))
	for _, in := range []ProxyRequest{{Method: "TRACE", Path: "/x"}, {Path: "x"}, {Path: "/x", Retries: -1}} {
		if _, err := c.Proxy(context.Background(), "c_1", in); err == nil {
			t.Fatalf("%+v accepted", in)
		}
	}
	if _, err := c.Proxy(context.Background(), "", ProxyRequest{Path: "/x"}); !errors.Is(err, ErrEmptyConnectionID) {
		t.Fatal(err)
	}
}
