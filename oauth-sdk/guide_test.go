package oauthsdk_test

import (
	"context"
	"os"
	"os/exec"
	"testing"

	oauthsdk "github.com/dromos-labs/oauth-framework/oauth-sdk"
)

// consent completes the user's consent at authURL: by default at the fake
// gateway; TestGuideSnippetLive swaps in a real consent at a real provider.
var consent = func(authURL string) { browserVisit(authURL) }

// guideSnippet is the code of "Using the Go SDK (server-side)" in
// agent-integrations-guide.md, verbatim but for the base URL, made a function
// so that the compiler checks it against the SDK. It returns what the snippet
// computes so that the test can check that it works.
func guideSnippet(gatewayBaseURL string) (*oauthsdk.RequestConnectionOutput, *oauthsdk.Token) {
	client := oauthsdk.New(
		gatewayBaseURL,
		oauthsdk.WithRetry(oauthsdk.RetryPolicy{Retries: 3}),
	)

	rc, _ := client.RequestConnection(context.Background(), oauthsdk.RequestConnectionInput{
		UserID:       "workspace-123",
		ProviderName: "Google",
		Scopes:       []string{"openid", "email", "profile"},
		ReturnURL:    "https://app.example.com/oauth/return",
	})
	// Redirect user to rc.AuthURL
	consent(rc.AuthURL) // (not in the guide: the user consents)

	// Later, fetch token:
	tok, _ := client.GetToken(context.Background(), rc.ConnectionID)
	return rc, tok
}

// TestGuideSnippet runs the guide's snippet against a fake gateway, with the
// API key taken from DROMOS_API_KEY as the guide expects.
func TestGuideSnippet(t *testing.T) {
	gw := newFakeGateway()
	defer gw.Close()
	t.Setenv("DROMOS_API_KEY", "example-key")

	rc, tok := guideSnippet(gw.URL)
	if rc == nil || rc.AuthURL == "" || rc.ConnectionID == "" || rc.State == "" || rc.ProviderID == "" ||
		len(rc.Scopes) != 3 {
		t.Fatalf("request-connection answer %+v", rc)
	}
	if tok == nil || tok.AccessToken == "" || tok.ConnectionID != rc.ConnectionID {
		t.Fatalf("token %v", tok)
	}
}

// TestGuideSnippetLive runs the guide's snippet unchanged against the live
// gateway and broker that scripts/test.sh starts (devtools/stack.py
// --guide-provider registers its local OpenID Connect provider as "google";
// provider names match case-insensitively), consenting at that real provider.
func TestGuideSnippetLive(t *testing.T) {
	gatewayURL := os.Getenv("DROMOS_GATEWAY_URL")
	consentCmd := os.Getenv("DROMOS_E2E_CONSENT_CMD")
	if gatewayURL == "" || consentCmd == "" || os.Getenv("DROMOS_API_KEY") == "" {
		t.Skip("DROMOS_GATEWAY_URL, DROMOS_API_KEY and DROMOS_E2E_CONSENT_CMD are not set: no live gateway")
	}
	previous := consent
	defer func() { consent = previous }()
	consent = func(authURL string) {
		// Stop at the app's return URL (not reachable here): the broker's callback has run.
		cmd := exec.Command("sh", "-c", consentCmd+` "$1" --stop-at https://app.example.com/`, "sh", authURL)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("consent: %v\n%s", err, out)
		}
	}

	rc, tok := guideSnippet(gatewayURL)
	if rc == nil || rc.AuthURL == "" || rc.ConnectionID == "" {
		t.Fatalf("request-connection answer %+v", rc)
	}
	if tok == nil || tok.AccessToken == "" || tok.ConnectionID != rc.ConnectionID {
		t.Fatalf("token %v for connection %s", tok, rc.ConnectionID)
	}
	conn, err := oauthsdk.New(gatewayURL).CheckConnection(context.Background(), rc.ConnectionID)
	if err != nil || conn.Status != oauthsdk.StatusActive || conn.ProviderName != "google" {
		t.Fatalf("check-connection after the snippet: %+v, %v", conn, err)
	}
}
