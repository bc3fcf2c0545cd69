package oauthsdk_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"time"
)

// fakeGateway is a small in-memory stand-in for the Dromos gateway, enough
// for the examples: it follows the wire contract of docs/api.md, accepts the
// API key "example-key", and plays the provider too: its authUrl "consents"
// at once and redirects to the return URL like the broker callback does.
type fakeGateway struct {
	*httptest.Server
	mu    sync.Mutex
	conns map[string]*fakeConn
	seq   int
}

type fakeConn struct {
	ID, Status, UserID, Provider, ReturnURL, State string
	Scopes                                         []string
	Tokens                                         int // access tokens issued so far
	ActivatedAt                                    any // nil or an ISO 8601 string
}

func newFakeGateway() *fakeGateway {
	g := &fakeGateway{conns: map[string]*fakeConn{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/request-connection", g.auth(g.requestConnection))
	mux.HandleFunc("GET /v1/check-connection/{id}", g.auth(g.withConn(func(w http.ResponseWriter, r *http.Request, c *fakeConn) {
		g.writeJSON(w, http.StatusOK, c.json())
	})))
	mux.HandleFunc("GET /v1/token/{id}", g.auth(g.withConn(g.token)))
	mux.HandleFunc("POST /v1/refresh/{id}", g.auth(g.withConn(g.token)))
	mux.HandleFunc("DELETE /v1/connections/{id}", g.auth(g.withConn(func(w http.ResponseWriter, r *http.Request, c *fakeConn) {
		c.Status = "revoked"
		g.writeJSON(w, http.StatusOK, c.json())
	})))
	mux.HandleFunc("GET /v1/connections", g.auth(g.list))
	mux.HandleFunc("GET /v1/providers", g.auth(func(w http.ResponseWriter, r *http.Request) {
		g.writeJSON(w, http.StatusOK, map[string]any{"providers": []map[string]any{{
			"name": "google", "display_name": "Google", "provider_id": "prov_google",
			"default_scopes": []string{"openid", "email"}, "supports_refresh": true,
			"supports_pkce": true, "docs_url": "https://developers.google.com/identity", "params": []string{},
		}}})
	}))
	mux.HandleFunc("GET /consent", g.consent)
	g.Server = httptest.NewServer(mux)
	return g
}

func (g *fakeGateway) writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (g *fakeGateway) fail(w http.ResponseWriter, status int, code, msg string, extra map[string]any) {
	body := map[string]any{"error": code, "message": msg}
	for k, v := range extra {
		body[k] = v
	}
	g.writeJSON(w, status, body)
}

func (g *fakeGateway) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer example-key" {
			g.fail(w, http.StatusUnauthorized, "unauthorized", "invalid API key", nil)
			return
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		h(w, r)
	}
}

func (g *fakeGateway) withConn(h func(http.ResponseWriter, *http.Request, *fakeConn)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, ok := g.conns[r.PathValue("id")]
		if !ok {
			g.fail(w, http.StatusNotFound, "not_found", "connection not found", nil)
			return
		}
		h(w, r, c)
	}
}

func (g *fakeGateway) requestConnection(w http.ResponseWriter, r *http.Request) {
	var in struct {
		UserID       string   `json:"user_id"`
		ProviderName string   `json:"provider_name"`
		Scopes       []string `json:"scopes"`
		ReturnURL    string   `json:"return_url"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.UserID == "" || in.ReturnURL == "" {
		g.fail(w, http.StatusBadRequest, "invalid_request", "user_id and return_url are required", nil)
		return
	}
	if !strings.EqualFold(in.ProviderName, "google") {
		g.fail(w, http.StatusBadRequest, "invalid_request", "unknown provider",
			map[string]any{"details": map[string][]string{"provider_name": {"unknown provider"}}})
		return
	}
	g.seq++
	c := &fakeConn{ID: fmt.Sprintf("c_%d", g.seq), Status: "pending", UserID: in.UserID, Provider: "google",
		ReturnURL: in.ReturnURL, State: fmt.Sprintf("st_%d", g.seq), Scopes: in.Scopes}
	g.conns[c.ID] = c
	g.writeJSON(w, http.StatusCreated, map[string]any{
		"authUrl": g.URL + "/consent?state=" + c.State, "state": c.State, "scopes": c.Scopes,
		"provider_id": "prov_google", "connection_id": c.ID,
	})
}

// consent plays the provider and the broker callback: the user approves, the
// connection becomes active, the browser goes back to the return URL.
func (g *fakeGateway) consent(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range g.conns {
		if c.State == r.URL.Query().Get("state") && c.Status == "pending" {
			c.Status = "active"
			c.ActivatedAt = "2026-11-26T20:00:10Z"
			q := url.Values{"status": {"success"}, "connection_id": {c.ID}}
			http.Redirect(w, r, c.ReturnURL+"?"+q.Encode(), http.StatusFound)
			return
		}
	}
	http.Error(w, "invalid state", http.StatusBadRequest)
}

func (g *fakeGateway) token(w http.ResponseWriter, r *http.Request, c *fakeConn) {
	if c.Status != "active" {
		g.fail(w, http.StatusConflict, "connection_not_active", "connection is not active",
			map[string]any{"status": c.Status, "reconnect_required": c.Status != "pending"})
		return
	}
	c.Tokens++
	g.writeJSON(w, http.StatusOK, map[string]any{
		"access_token": fmt.Sprintf("ya29.token-%d", c.Tokens), "token_type": "Bearer",
		"expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "scopes": c.Scopes,
		"provider_name": c.Provider, "connection_id": c.ID,
	})
}

func (g *fakeGateway) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	results := []map[string]any{}
	for i := 1; i <= g.seq; i++ {
		c := g.conns[fmt.Sprintf("c_%d", i)]
		if c == nil || (q.Get("user_id") != "" && q.Get("user_id") != c.UserID) ||
			(q.Get("status") != "" && q.Get("status") != c.Status) {
			continue
		}
		results = append(results, c.json())
	}
	g.writeJSON(w, http.StatusOK, map[string]any{"count": len(results), "next": nil, "previous": nil, "results": results})
}

func (c *fakeConn) json() map[string]any {
	return map[string]any{
		"connection_id": c.ID, "status": c.Status, "provider_name": c.Provider, "provider_id": "prov_google",
		"user_id": c.UserID, "scopes": c.Scopes, "granted_scopes": c.Scopes, "scopes_narrowed": false,
		"error": nil, "error_description": nil, "account": map[string]any{}, "metadata": map[string]any{},
		"expires_at": nil, "created_at": "2026-11-26T20:00:00Z", "updated_at": "2026-11-26T20:00:00Z",
		"activated_at": c.ActivatedAt, "last_refreshed_at": nil,
	}
}

// browserVisit follows authURL like a browser would, up to the redirect back
// to the application, and returns where the browser lands.
func browserVisit(authURL string) string {
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(authURL)
	if err != nil {
		return err.Error()
	}
	resp.Body.Close()
	return resp.Header.Get("Location")
}
