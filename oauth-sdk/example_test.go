package oauthsdk_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	oauthsdk "github.com/dromos-labs/oauth-framework/oauth-sdk"
)

// The whole flow: request a connection, send the user to consent, wait for
// the connection to become active, fetch a token, and finally delete the
// connection. A fake gateway (an httptest server) stands in for Dromos.
func Example() {
	gw := newFakeGateway()
	defer gw.Close()
	ctx := context.Background()

	client := oauthsdk.New(gw.URL,
		oauthsdk.WithAPIKey("example-key"), // or set DROMOS_API_KEY
		oauthsdk.WithRetry(oauthsdk.RetryPolicy{Retries: 3}),
	)

	rc, err := client.RequestConnection(ctx, oauthsdk.RequestConnectionInput{
		UserID:       "user-42",
		ProviderName: "google",
		Scopes:       []string{"openid", "email"},
		ReturnURL:    "https://app.example.com/oauth/return",
	})
	if err != nil {
		fmt.Println("request-connection:", err)
		return
	}
	fmt.Println("connection:", rc.ConnectionID)

	// A web application redirects the user's browser to rc.AuthURL; after
	// consent the browser comes back to the return URL.
	landing, _ := url.Parse(browserVisit(rc.AuthURL))
	fmt.Println("back on:", landing.Path, "status:", landing.Query().Get("status"))

	waitCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := client.WaitForActive(waitCtx, rc.ConnectionID)
	if err != nil {
		fmt.Println("consent did not complete:", err)
		return
	}
	fmt.Println("status:", conn.Status)

	tok, err := client.GetToken(ctx, conn.ConnectionID)
	if err != nil {
		fmt.Println("token:", err)
		return
	}
	fmt.Println("token:", tok.TokenType, tok.AccessToken)

	deleted, err := client.DeleteConnection(ctx, conn.ConnectionID)
	if err != nil {
		fmt.Println("delete:", err)
		return
	}
	fmt.Println("after delete:", deleted.Status)
	// Output:
	// connection: c_1
	// back on: /oauth/return status: success
	// status: active
	// token: Bearer ya29.token-1
	// after delete: revoked
}

// Ask the gateway to refresh the token first when it expires within five
// minutes, so that it stays usable for at least that long.
func ExampleClient_GetTokenWithOptions() {
	gw := newFakeGateway()
	defer gw.Close()
	ctx := context.Background()
	client := oauthsdk.New(gw.URL, oauthsdk.WithAPIKey("example-key"))
	connectionID := connectedUser(ctx, client)

	tok, err := client.GetTokenWithOptions(ctx, connectionID, oauthsdk.GetTokenOptions{
		AutoRefresh: true,
		MinTTL:      5 * time.Minute,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(tok.AccessToken, tok.ExpiresWithin(5*time.Minute))
	// Output:
	// ya29.token-1 false
}

// Printing a token never shows its secret values.
func ExampleToken_String() {
	exp := time.Date(2026, 11, 26, 21, 0, 0, 0, time.UTC)
	tok := oauthsdk.Token{AccessToken: "ya29.secret", TokenType: "Bearer", ExpiresAt: &exp,
		ProviderName: "google", ConnectionID: "c_1"}
	fmt.Println(tok)
	// Output:
	// oauthsdk.Token{connection_id=c_1 provider=google type=Bearer expires_at=2026-11-26T21:00:00Z access_token=[redacted]}
}

// Once a connection is deleted (or failed), asking for its token answers 409
// connection_not_active: the user has to connect again.
func ExampleIsNotActive() {
	gw := newFakeGateway()
	defer gw.Close()
	ctx := context.Background()
	client := oauthsdk.New(gw.URL, oauthsdk.WithAPIKey("example-key"))
	connectionID := connectedUser(ctx, client)
	if _, err := client.DeleteConnection(ctx, connectionID); err != nil {
		fmt.Println(err)
		return
	}

	_, err := client.GetToken(ctx, connectionID)
	switch {
	case oauthsdk.IsNotActive(err):
		var apiErr *oauthsdk.APIError
		errors.As(err, &apiErr)
		fmt.Println("reconnect needed; connection is", apiErr.Status)
	case oauthsdk.IsNotFound(err):
		fmt.Println("unknown connection")
	case err != nil:
		fmt.Println("other error:", err)
	}
	fmt.Println(err)
	// Output:
	// reconnect needed; connection is revoked
	// oauthsdk: 409 connection_not_active: connection is not active (connection status: revoked)
}

// A 400 answer carries the per-field messages of the gateway.
func ExampleIsInvalidRequest() {
	gw := newFakeGateway()
	defer gw.Close()
	client := oauthsdk.New(gw.URL, oauthsdk.WithAPIKey("example-key"))

	_, err := client.RequestConnection(context.Background(), oauthsdk.RequestConnectionInput{
		UserID:       "user-42",
		ProviderName: "myspace",
		ReturnURL:    "https://app.example.com/oauth/return",
	})
	var apiErr *oauthsdk.APIError
	if oauthsdk.IsInvalidRequest(err) && errors.As(err, &apiErr) {
		fmt.Println(apiErr.StatusCode, apiErr.Code, apiErr.Details["provider_name"])
	}
	// Output:
	// 400 invalid_request [unknown provider]
}

// A wrong API key answers 401 and is never retried.
func ExampleIsUnauthorized() {
	gw := newFakeGateway()
	defer gw.Close()
	client := oauthsdk.New(gw.URL, oauthsdk.WithAPIKey("wrong-key"))

	_, err := client.ListProviders(context.Background())
	fmt.Println(oauthsdk.IsUnauthorized(err), err)
	// Output:
	// true oauthsdk: 401 unauthorized: invalid API key
}

// List the providers configured in the broker, to offer them to users.
func ExampleClient_ListProviders() {
	gw := newFakeGateway()
	defer gw.Close()
	client := oauthsdk.New(gw.URL, oauthsdk.WithAPIKey("example-key"))

	providers, err := client.ListProviders(context.Background())
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, p := range providers {
		fmt.Println(p.Name, p.DisplayName, p.DefaultScopes, p.SupportsRefresh)
	}
	// Output:
	// google Google [openid email] true
}

// List a user's active connections.
func ExampleClient_ListConnections() {
	gw := newFakeGateway()
	defer gw.Close()
	ctx := context.Background()
	client := oauthsdk.New(gw.URL, oauthsdk.WithAPIKey("example-key"))
	connectedUser(ctx, client)

	page, err := client.ListConnections(ctx, oauthsdk.ListConnectionsInput{
		UserID: "user-42",
		Status: oauthsdk.StatusActive,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("count:", page.Count, "more pages:", page.Next != "")
	for _, c := range page.Results {
		fmt.Println(c.ConnectionID, c.ProviderName, c.Status, c.ActivatedAt.Format(time.RFC3339))
	}
	// Output:
	// count: 1 more pages: false
	// c_1 google active 2026-11-26T20:00:10Z
}

// Retry 429, 502, 503 and connection errors up to five times, starting at
// 500ms and never waiting more than 10s between two attempts.
func ExampleWithRetry() {
	client := oauthsdk.New("https://gateway.example.com",
		oauthsdk.WithRetry(oauthsdk.RetryPolicy{
			Retries:   5,
			BaseDelay: 500 * time.Millisecond,
			MaxDelay:  10 * time.Second,
		}),
	)
	fmt.Println(client.BaseURL())
	// Output:
	// https://gateway.example.com
}

// connectedUser gives user-42 an active Google connection and returns its id.
func connectedUser(ctx context.Context, client *oauthsdk.Client) string {
	rc, err := client.RequestConnection(ctx, oauthsdk.RequestConnectionInput{
		UserID: "user-42", ProviderName: "google", Scopes: []string{"openid"},
		ReturnURL: "https://app.example.com/oauth/return",
	})
	if err != nil {
		panic(err)
	}
	browserVisit(rc.AuthURL)
	return rc.ConnectionID
}
