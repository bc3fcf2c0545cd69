package oauthsdk

import (
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

func TestRequestMachineConnection(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		writeJSON(w, http.StatusCreated, strings.Replace(connectionJSON, `"status": "active",`,
			`"status": "active", "flow": "client_credentials",`, 1))
	})
	c, _ := newTestClient(t, g.URL, RetryPolicy{})
	conn, err := c.RequestMachineConnection(context.Background(), RequestConnectionInput{
		UserID: "billing-agent", ProviderName: "auth0", Flow: "client_credentials",
		Scopes: []string{"read:invoices"}, ClientID: "m2m-client", ClientSecret: "m2m-secret",
		Audience: "https://api.example.com", ReturnURL: "ignored",
	})
	if err != nil {
		t.Fatal(err)
	}
	if conn.Flow != "client_credentials" || conn.Status != StatusActive {
		t.Errorf("connection %+v", conn)
	}
	req := g.requests()[0]
	if req.Method != http.MethodPost || req.Path != "/v1/request-connection" {
		t.Errorf("%s %s", req.Method, req.Path)
	}
	var body map[string]any
	if err := json.Unmarshal(req.Body, &body); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"user_id": "billing-agent", "provider_name": "auth0", "flow": "client_credentials",
		"scopes": []any{"read:invoices"}, "client_id": "m2m-client", "client_secret": "m2m-secret",
		"audience": "https://api.example.com",
	}
	if !reflect.DeepEqual(body, want) {
		t.Errorf("body %v, want %v", body, want)
	}
}

func TestRequestMachineConnectionRefusesAConsentFlow(t *testing.T) {
	g := newFakeGateway(t, func(w http.ResponseWriter, r seen) {
		writeJSON(w, http.StatusCreated, connectionJSON)
	})
	c, _ := newTestClient(t, g.URL, RetryPolicy{})
	if _, err := c.RequestMachineConnection(context.Background(), RequestConnectionInput{
		UserID: "u", ProviderName: "google", Flow: "device"}); err == nil {
		t.Fatal("a device flow was accepted")
	}
	if n := len(g.requests()); n != 0 {
		t.Errorf("%d requests sent", n)
	}
}
