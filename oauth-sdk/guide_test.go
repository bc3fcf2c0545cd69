package oauthsdk_test

import (
	"context"
	"testing"

	oauthsdk "github.com/dromos-labs/oauth-framework/oauth-sdk"
)

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
	browserVisit(rc.AuthURL) // (not in the guide: the fake user consents)

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
