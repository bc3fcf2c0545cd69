package oauthsdk

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// recorded is one request the management fake received.
type recorded struct {
	method, path, query string
	body                map[string]any
}

func manageServer(t *testing.T, status int, contentType, answer string) (*httptest.Server, *[]recorded) {
	t.Helper()
	var seen []recorded
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := recorded{method: r.Method, path: r.URL.EscapedPath(), query: r.URL.RawQuery}
		if data, _ := io.ReadAll(r.Body); len(data) > 0 {
			_ = json.Unmarshal(data, &rec.body)
		}
		seen = append(seen, rec)
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(status)
		_, _ = io.WriteString(w, answer)
	}))
	t.Cleanup(srv.Close)
	return srv, &seen
}

const keyJSON = `{"prefix": "abcd1234", "name": "run", "scopes": ["tokens:read"], "providers": ["google"],
 "user_ids": null, "user_id_prefix": "team-1:", "allowed_cidrs": null, "egress_policy": null,
 "created_at": "2026-11-29T20:00:00Z", "last_used_at": null, "expires_at": "2026-11-29T21:00:00Z",
 "revoked_at": null, "minted_from": "admin123", "created_by": "admin123"`

func TestCreateKeyMintsWithRestrictions(t *testing.T) {
	srv, seen := manageServer(t, 201, "application/json", keyJSON+`, "key": "dk_abcd1234_secret"}`)
	c, _ := newTestClient(t, srv.URL, RetryPolicy{})
	out, err := c.CreateKey(context.Background(), CreateKeyInput{
		Name: "run", Providers: []string{"google"}, UserIDPrefix: "team-1:", ExpiresIn: 3600,
	})
	if err != nil {
		t.Fatal(err)
	}
	if out.Plaintext != "dk_abcd1234_secret" || out.Prefix != "abcd1234" || *out.MintedFrom != "admin123" {
		t.Errorf("answer %+v", out)
	}
	if out.Providers == nil || (*out.Providers)[0] != "google" || out.UserIDs != nil {
		t.Errorf("restrictions %+v", out.Key)
	}
	got := (*seen)[0]
	if got.method != "POST" || got.path != "/v1/keys" {
		t.Errorf("sent %s %s", got.method, got.path)
	}
	want := map[string]any{"name": "run", "providers": []any{"google"}, "user_id_prefix": "team-1:", "expires_in": 3600.0}
	if b, w := mustJSON(got.body), mustJSON(want); b != w {
		t.Errorf("body %s, want %s", b, w)
	}
}

func TestCreateKeyWithAnExpiryDate(t *testing.T) {
	srv, seen := manageServer(t, 201, "application/json", keyJSON+`, "key": "dk_x"}`)
	c, _ := newTestClient(t, srv.URL, RetryPolicy{})
	at := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	if _, err := c.CreateKey(context.Background(), CreateKeyInput{Name: "k", ExpiresAt: at}); err != nil {
		t.Fatal(err)
	}
	if got := (*seen)[0].body["expires_at"]; got != "2027-01-01T00:00:00Z" {
		t.Errorf("expires_at %v", got)
	}
}

func TestManagementPaths(t *testing.T) {
	const hook, delivery = "0f8fad5b-d9cb-469f-a165-70867728950e", "7c9e6679-7425-40de-944b-e07fc1f90ae7"
	ctx := context.Background()
	cases := []struct {
		name, method, path string
		call               func(c *Client) error
	}{
		{"get key", "GET", "/v1/keys/abcd1234", func(c *Client) error { _, err := c.GetKey(ctx, "abcd1234"); return err }},
		{"revoke key", "DELETE", "/v1/keys/abcd1234", func(c *Client) error { _, err := c.RevokeKey(ctx, "abcd1234"); return err }},
		{"delete webhook", "DELETE", "/v1/webhooks/" + hook, func(c *Client) error { _, err := c.DeleteWebhook(ctx, hook); return err }},
		{"rotate", "POST", "/v1/webhooks/" + hook + "/rotate-secret", func(c *Client) error { _, err := c.RotateWebhookSecret(ctx, hook); return err }},
		{"redeliver", "POST", "/v1/webhooks/" + hook + "/deliveries/" + delivery + "/redeliver", func(c *Client) error {
			_, err := c.RedeliverWebhookDelivery(ctx, hook, delivery)
			return err
		}},
	}
	for _, tc := range cases {
		srv, seen := manageServer(t, 200, "application/json", `{"id": "`+hook+`", "prefix": "abcd1234"}`)
		c, _ := newTestClient(t, srv.URL, RetryPolicy{})
		if err := tc.call(c); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := (*seen)[0]; got.method != tc.method || got.path != tc.path {
			t.Errorf("%s: sent %s %s", tc.name, got.method, got.path)
		}
	}
}

func TestAuditPagesAndExport(t *testing.T) {
	srv, seen := manageServer(t, 200, "application/json",
		`{"next": "https://gw.example/v1/audit?limit=2&cursor=41", "results": [{"id": 42, "created_at": "2026-11-29T20:00:00Z",
		 "connection_id": "c_1", "actor": "system", "action": "token.read", "ip": null, "detail": {}}]}`)
	c, _ := newTestClient(t, srv.URL, RetryPolicy{})
	page, err := c.ListAuditEvents(context.Background(), AuditQuery{Action: "token.read", Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	if page.Results[0].ID != 42 || page.NextCursor() != "41" {
		t.Errorf("page %+v, cursor %q", page, page.NextCursor())
	}
	if q := (*seen)[0].query; q != "action=token.read&limit=2" {
		t.Errorf("query %q", q)
	}

	srv, seen = manageServer(t, 200, "application/x-ndjson", "{\"id\":1,\"action\":\"a\"}\n{\"id\":2,\"action\":\"b\"}\n")
	c, _ = newTestClient(t, srv.URL, RetryPolicy{})
	rows, err := c.ExportAuditEvents(context.Background(), AuditQuery{Since: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[1]["action"] != "b" {
		t.Errorf("rows %v", rows)
	}
	if got := (*seen)[0]; got.path != "/v1/audit/export" || got.query != "since=2026-11-01T00%3A00%3A00Z" {
		t.Errorf("sent %s?%s", got.path, got.query)
	}
	if _, err := c.ExportAuditEvents(context.Background(), AuditQuery{}); err == nil {
		t.Error("an export without Since must fail before any request")
	}
}

func TestANonAdminKeyGetsA403(t *testing.T) {
	srv, _ := manageServer(t, 403, "application/json", `{"error": "forbidden", "message": "not allowed"}`)
	c, _ := newTestClient(t, srv.URL, RetryPolicy{})
	_, err := c.ListKeys(context.Background(), false, 0, 0)
	ae, ok := apiErrorOf(err)
	if !ok || ae.StatusCode != 403 || ae.Code != "forbidden" {
		t.Fatalf("err %v", err)
	}
}

func mustJSON(v any) string {
	data, _ := json.Marshal(v)
	return string(data)
}

func TestWorkspaceProviders(t *testing.T) {
	srv, seen := manageServer(t, 201, "application/json", `{"name": "google", "shared": false, "client_secret_set": true}`)
	c, _ := newTestClient(t, srv.URL, RetryPolicy{})
	id, secret := "c", "s"
	out, err := c.UpsertWorkspaceProvider(context.Background(), "google", ProviderUpsertInput{ClientID: &id, ClientSecret: &secret})
	if err != nil {
		t.Fatal(err)
	}
	if !out.ClientSecretSet || out.Shared {
		t.Errorf("answer %+v", out)
	}
	got := (*seen)[0]
	if got.method != "PUT" || got.path != "/v1/workspace-providers/google" || mustJSON(got.body) != `{"client_id":"c","client_secret":"s"}` {
		t.Errorf("sent %s %s %v", got.method, got.path, got.body)
	}
	srv, seen = manageServer(t, 204, "", "")
	c, _ = newTestClient(t, srv.URL, RetryPolicy{})
	if err := c.DeleteWorkspaceProvider(context.Background(), "google"); err != nil {
		t.Fatal(err)
	}
	if (*seen)[0].method != "DELETE" {
		t.Errorf("sent %v", (*seen)[0])
	}
}
