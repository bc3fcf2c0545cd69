// Package oauthsdk is the Go client of the Dromos gateway API (/v1).
//
// Dromos lets agents and backend services use their end users' third-party
// accounts without storing OAuth tokens: the service asks for a connection,
// sends the user to consent, keeps only the opaque connection id, and fetches a
// fresh access token whenever it needs one.
//
//	client := oauthsdk.New("https://gateway.example.com",
//		oauthsdk.WithRetry(oauthsdk.RetryPolicy{Retries: 3}),
//	)
//	rc, err := client.RequestConnection(ctx, oauthsdk.RequestConnectionInput{
//		UserID:       "user-123",
//		ProviderName: "google",
//		Scopes:       []string{"openid", "email"},
//		ReturnURL:    "https://app.example.com/oauth/return",
//	})
//	// Redirect the user's browser to rc.AuthURL; keep rc.ConnectionID.
//	tok, err := client.GetToken(ctx, rc.ConnectionID)
//
// # Authentication
//
// Every call carries "Authorization: Bearer <api key>". The key comes from
// [WithAPIKey] or, when that option is not given, from the environment
// variable DROMOS_API_KEY at the time [New] is called.
//
// # Errors
//
// An answer that is not 2xx becomes an [*APIError] carrying the HTTP status
// code, the gateway's error code and message, the connection status of a 409,
// and the Retry-After delay of a 429 or 503. Test for the common cases with
// [IsNotFound], [IsNotActive], [IsUnauthorized], [IsForbidden],
// [IsRateLimited] and [IsInvalidRequest], or use [errors.As].
//
// # Retries
//
// A call is retried, following the client's [RetryPolicy], only when retrying
// is safe: on 429, 502 and 503 answers (the gateway has done nothing in those
// cases) and on connection errors (refused, reset, timed out). No other 4xx or
// 5xx answer is ever retried. Delays grow exponentially with jitter, never
// undercut a Retry-After header, and stop as soon as the context is done.
//
// POST /v1/request-connection is not idempotent. A connection error after the
// request was written may hide a connection the gateway did create; retrying
// it then leaves one extra connection in the "pending" state, which is
// harmless: it is never activated (nobody visits its authUrl), holds no
// tokens, and can be removed with [Client.DeleteConnection]. The SDK therefore
// retries it like every other call. WithRetry(RetryPolicy{}) disables
// retries entirely.
//
// A [Client] is safe for concurrent use by multiple goroutines.
package oauthsdk
