package oauthsdk

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestConnectSessionsReconnectAndTagFilter(t *testing.T) {
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Method+" "+r.URL.RequestURI())
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/v1/connect-sessions":
			var body map[string]any
			_ = json.NewDecoder(r.Body).Decode(&body)
			if body["user_id"] != "u1" || body["tags"].(map[string]any)["team"] != "support" {
				t.Errorf("unexpected body %v", body)
			}
			w.WriteHeader(http.StatusCreated)
			_, _ = w.Write([]byte(`{"connect_url":"https://b/connect/tok","session_id":"cs_1","expires_at":"2030-01-01T00:00:00Z"}`))
		case r.URL.Path == "/v1/connect-sessions/cs_1":
			_, _ = w.Write([]byte(`{"session_id":"cs_1","status":"completed","connections":[{"connection_id":"c_1","status":"active","tags":{"team":"support"}}]}`))
		case r.URL.Path == "/v1/connections/c_1/reconnect":
			w.WriteHeader(http.StatusCreated)
			_, _ = w.Write([]byte(`{"authUrl":"https://idp/auth","connection_id":"c_1","scopes":["openid","profile"]}`))
		case r.URL.Path == "/v1/connections":
			_, _ = w.Write([]byte(`{"count":0,"page":1,"page_size":50,"next":null,"previous":null,"results":[]}`))
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":"not_found","message":"no"}`))
		}
	}))
	defer srv.Close()
	c := New(srv.URL, WithAPIKey("k"))
	ctx := context.Background()
	created, err := c.CreateConnectSession(ctx, CreateConnectSessionInput{UserID: "u1", ReturnURL: "https://app/r", Tags: map[string]string{"team": "support"}})
	if err != nil || created.SessionID != "cs_1" || created.ConnectURL == "" {
		t.Fatalf("create: %v %+v", err, created)
	}
	session, err := c.GetConnectSession(ctx, "cs_1")
	if err != nil || session.Status != "completed" || session.Connections[0].Tags["team"] != "support" {
		t.Fatalf("get: %v %+v", err, session)
	}
	out, err := c.Reconnect(ctx, "c_1", ReconnectInput{Scopes: []string{"profile"}})
	if err != nil || out.ConnectionID != "c_1" {
		t.Fatalf("reconnect: %v %+v", err, out)
	}
	if _, err := c.Reconnect(ctx, "", ReconnectInput{}); err != ErrEmptyConnectionID {
		t.Fatalf("empty id: %v", err)
	}
	if _, err := c.ListConnections(ctx, ListConnectionsInput{Tags: map[string]string{"team": "support", "env": "prod"}}); err != nil {
		t.Fatal(err)
	}
	if got := seen[len(seen)-1]; got != "GET /v1/connections?tag=env%3Aprod&tag=team%3Asupport" {
		t.Fatalf("list query: %s", got)
	}
}
