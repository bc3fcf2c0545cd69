package oauthsdk_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	oauthsdk "github.com/dromos-labs/oauth-framework/oauth-sdk"
)

// TestIntegrationFlow runs the whole flow against a live gateway.
//
// Environment:
//
//	DROMOS_GATEWAY_URL     gateway base URL; the test is skipped when unset
//	DROMOS_API_KEY         gateway API key (read by the SDK itself)
//	DROMOS_E2E_PROVIDER    name of a configured provider that issues refresh tokens
//	DROMOS_E2E_RETURN_URL  return URL the gateway accepts
//	DROMOS_E2E_CONSENT_CMD shell command run as `sh -c 'CMD "$1"' sh AUTH_URL`;
//	                       it completes the browser consent and exits 0
func TestIntegrationFlow(t *testing.T) {
	gatewayURL := os.Getenv("DROMOS_GATEWAY_URL")
	if gatewayURL == "" {
		t.Skip("DROMOS_GATEWAY_URL is not set: no live gateway to test against " +
			"(set it with DROMOS_API_KEY, DROMOS_E2E_PROVIDER, DROMOS_E2E_RETURN_URL and DROMOS_E2E_CONSENT_CMD)")
	}
	var missing []string
	env := map[string]string{}
	for _, name := range []string{"DROMOS_API_KEY", "DROMOS_E2E_PROVIDER", "DROMOS_E2E_RETURN_URL", "DROMOS_E2E_CONSENT_CMD"} {
		env[name] = os.Getenv(name)
		if env[name] == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("DROMOS_GATEWAY_URL is set but %s not: the integration test needs them all", strings.Join(missing, ", "))
	}
	providerName := env["DROMOS_E2E_PROVIDER"]

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The API key comes from DROMOS_API_KEY, as without WithAPIKey.
	client := oauthsdk.New(gatewayURL, oauthsdk.WithRetry(oauthsdk.RetryPolicy{Retries: 3}))

	// Error paths first: a bad key, an unknown connection.
	if _, err := oauthsdk.New(gatewayURL, oauthsdk.WithAPIKey("dromos-e2e-wrong-key")).ListProviders(ctx); !oauthsdk.IsUnauthorized(err) {
		t.Fatalf("ListProviders with a wrong key: want 401, got %v", err)
	}
	if _, err := client.CheckConnection(ctx, "c_does_not_exist_e2e"); !oauthsdk.IsNotFound(err) {
		t.Fatalf("CheckConnection of an unknown id: want 404, got %v", err)
	}

	// 1. The provider is configured.
	providers, err := client.ListProviders(ctx)
	if err != nil {
		t.Fatalf("ListProviders: %v", err)
	}
	var provider *oauthsdk.Provider
	var names []string
	for i := range providers {
		names = append(names, providers[i].Name)
		if strings.EqualFold(providers[i].Name, providerName) {
			provider = &providers[i]
		}
	}
	if provider == nil {
		t.Fatalf("ListProviders: %q not among %v", providerName, names)
	}

	// 2. Request a connection.
	userID := fmt.Sprintf("sdk-go-e2e-%d", time.Now().UnixNano())
	rc, err := client.RequestConnection(ctx, oauthsdk.RequestConnectionInput{
		UserID:       userID,
		ProviderName: providerName,
		Scopes:       provider.DefaultScopes,
		ReturnURL:    env["DROMOS_E2E_RETURN_URL"],
	})
	if err != nil {
		t.Fatalf("RequestConnection: %v", err)
	}
	if rc.AuthURL == "" || rc.ConnectionID == "" || rc.State == "" {
		t.Fatalf("RequestConnection answered %+v", rc)
	}
	id := rc.ConnectionID
	t.Logf("connection %s requested for %s", id, userID)
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer ccancel()
			_, _ = client.DeleteConnection(cctx, id)
		}
	})
	if conn, err := client.CheckConnection(ctx, id); err != nil || conn.Status != oauthsdk.StatusPending {
		t.Fatalf("CheckConnection before consent: %+v, %v (want pending)", conn, err)
	}
	if _, err := client.GetToken(ctx, id); !oauthsdk.IsNotActive(err) {
		t.Fatalf("GetToken before consent: want 409, got %v", err)
	}

	// 3. The user consents.
	cmd := exec.CommandContext(ctx, "sh", "-c", env["DROMOS_E2E_CONSENT_CMD"]+` "$1"`, "sh", rc.AuthURL)
	if out, err := cmd.CombinedOutput(); err != nil {
		const limit = 4000
		if len(out) > limit {
			out = out[len(out)-limit:]
		}
		t.Fatalf("consent command failed: %v\n%s", err, out)
	}

	// 4. The connection becomes active.
	conn, err := client.WaitForActiveWithOptions(ctx, id, oauthsdk.WaitOptions{
		MinInterval: 200 * time.Millisecond, MaxInterval: 2 * time.Second})
	if err != nil {
		t.Fatalf("WaitForActive: %v", err)
	}
	if conn.ConnectionID != id || conn.Status != oauthsdk.StatusActive || conn.ActivatedAt == nil || conn.CreatedAt == nil {
		t.Fatalf("active connection %+v", conn)
	}

	// 5. A token.
	tok, err := client.GetToken(ctx, id)
	if err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	if tok.AccessToken == "" || tok.ConnectionID != id || tok.TokenType == "" {
		t.Fatalf("GetToken answered %v", tok)
	}

	// 6. A refresh.
	refreshed, err := client.Refresh(ctx, id)
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if refreshed.AccessToken == "" || refreshed.ConnectionID != id {
		t.Fatalf("Refresh answered %v", refreshed)
	}

	// 7. A token with auto-refresh.
	auto, err := client.GetTokenWithOptions(ctx, id, oauthsdk.GetTokenOptions{AutoRefresh: true, MinTTL: 60 * time.Second})
	if err != nil {
		t.Fatalf("GetToken with AutoRefresh: %v", err)
	}
	if auto.AccessToken == "" || auto.ConnectionID != id {
		t.Fatalf("GetToken with AutoRefresh answered %v", auto)
	}

	// 7b. A provider API call through the gateway's proxy (the local OIDC provider's
	// userinfo endpoint, /me, when the provider has an API base URL): no token here.
	if provider.APIBaseURL != "" && provider.Template == "oidc" {
		resp, err := client.Proxy(ctx, id, oauthsdk.ProxyRequest{Method: "GET", Path: "/me"})
		if err != nil {
			t.Fatalf("Proxy: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Dromos-Connection-Id") != id || !strings.Contains(string(body), `"sub"`) {
			t.Fatalf("Proxy answered %d %s", resp.StatusCode, body)
		}
	}

	// 8. The connection is listed.
	list, err := client.ListConnections(ctx, oauthsdk.ListConnectionsInput{UserID: userID, PageSize: 200})
	if err != nil {
		t.Fatalf("ListConnections: %v", err)
	}
	found := false
	for _, c := range list.Results {
		if c.ConnectionID == id {
			found = c.Status == oauthsdk.StatusActive
		}
		if c.UserID != userID {
			t.Errorf("ListConnections(user_id=%s) returned %s of user %s", userID, c.ConnectionID, c.UserID)
		}
	}
	if !found || list.Count < 1 {
		t.Fatalf("ListConnections(user_id=%s): %s not listed as active in %+v", userID, id, list)
	}

	// 9. Delete.
	del, err := client.DeleteConnection(ctx, id)
	if err != nil {
		t.Fatalf("DeleteConnection: %v", err)
	}
	deleted = true
	if del.Status != oauthsdk.StatusRevoked {
		t.Fatalf("DeleteConnection: status %q, want revoked", del.Status)
	}
	if conn, err := client.CheckConnection(ctx, id); err != nil || conn.Status != oauthsdk.StatusRevoked {
		t.Fatalf("CheckConnection after delete: %+v, %v (want revoked)", conn, err)
	}

	// 10. No token after delete.
	_, err = client.GetToken(ctx, id)
	if !oauthsdk.IsNotActive(err) {
		t.Fatalf("GetToken after delete: want 409 connection_not_active, got %v", err)
	}
	var apiErr *oauthsdk.APIError
	if errors.As(err, &apiErr) && apiErr.Status != oauthsdk.StatusRevoked {
		t.Errorf("GetToken after delete: connection status %q, want revoked", apiErr.Status)
	}
}
