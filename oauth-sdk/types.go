package oauthsdk

import (
	"fmt"
	"time"
)

// Connection statuses, as found in [Connection.Status], [APIError.Status] and
// [ListConnectionsInput.Status].
const (
	// StatusPending: the connection waits for the user's consent.
	StatusPending = "pending"
	// StatusActive: the user consented; tokens can be fetched.
	StatusActive = "active"
	// StatusFailed: consent was denied, the callback failed, or a refresh
	// answered invalid_grant. The user must connect again.
	StatusFailed = "failed"
	// StatusRevoked: the connection was deleted and its tokens wiped.
	StatusRevoked = "revoked"
)

// RequestConnectionInput is the body of POST /v1/request-connection.
type RequestConnectionInput struct {
	// UserID identifies the end user (or workspace) in the caller's system.
	UserID string `json:"user_id"`
	// ProviderName names a configured provider, as listed by
	// [Client.ListProviders].
	ProviderName string `json:"provider_name"`
	// Scopes are the OAuth scopes to ask for. When empty the field is not
	// sent and the gateway decides (it may use the provider's defaults or
	// reject the request).
	Scopes []string `json:"scopes,omitempty"`
	// ReturnURL is where the user's browser lands after consent, with
	// status=success&connection_id=… (or status=error&error=…) appended.
	// Not sent for the device flow.
	ReturnURL string `json:"return_url,omitempty"`
	// Params holds extra provider parameters (see [Provider.Params]), such
	// as a Microsoft tenant. Optional.
	Params map[string]string `json:"params,omitempty"`
	// Flow is "code" (the default: consent at AuthURL), "device" (RFC 8628;
	// use [Client.RequestDeviceConnection]) or a machine flow:
	// "client_credentials", "jwt_bearer" or "github_app" (use
	// [Client.RequestMachineConnection]).
	Flow string `json:"flow,omitempty"`
	// The fields below are for the machine flows only. ClientID is the
	// connection's own client (client_credentials) or JWT issuer (jwt_bearer:
	// the service account's client_email; github_app: the app's client id or
	// app id); empty: the provider's.
	ClientID string `json:"client_id,omitempty"`
	// ClientSecret goes with ClientID (client_credentials). Stored encrypted,
	// never returned.
	ClientSecret string `json:"client_secret,omitempty"`
	// PrivateKey is a PEM RSA private key (jwt_bearer, github_app); empty:
	// the provider's. Stored encrypted, never returned.
	PrivateKey string `json:"private_key,omitempty"`
	// Audience and Resource (RFC 8707) are sent with client_credentials
	// where the provider needs them (Auth0: audience).
	Audience string `json:"audience,omitempty"`
	Resource string `json:"resource,omitempty"`
	// Subject is the user a service account impersonates (jwt_bearer).
	Subject string `json:"subject,omitempty"`
}

// DeviceConnectionOutput is the answer of POST /v1/request-connection with
// flow "device" (RFC 8628): show the user UserCode and VerificationURI (or
// VerificationURIComplete); the broker polls the provider, and the connection
// turns active (or failed with access_denied / expired_token).
type DeviceConnectionOutput struct {
	ConnectionID            string    `json:"connection_id"`
	ProviderID              string    `json:"provider_id"`
	Scopes                  []string  `json:"scopes"`
	UserCode                string    `json:"user_code"`
	VerificationURI         string    `json:"verification_uri"`
	VerificationURIComplete string    `json:"verification_uri_complete,omitempty"`
	ExpiresAt               time.Time `json:"expires_at"`
	Interval                int       `json:"interval"`
}

// Credentials is a static credential: Type "api_key" with APIKey, or Type
// "basic" with Username and Password.
type Credentials struct {
	Type     string `json:"type"`
	APIKey   string `json:"api_key,omitempty"`
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
}

// String never reveals the secret parts.
func (c Credentials) String() string { return "oauthsdk.Credentials{type=" + c.Type + " [redacted]}" }

// CreateStaticConnectionInput is the body of POST /v1/connections.
type CreateStaticConnectionInput struct {
	UserID       string            `json:"user_id"`
	ProviderName string            `json:"provider_name"`
	Params       map[string]string `json:"params,omitempty"`
	Credentials  Credentials       `json:"credentials"`
}

// RequestConnectionOutput is the answer of POST /v1/request-connection.
type RequestConnectionOutput struct {
	// AuthURL is where to send the user's browser to consent.
	AuthURL string `json:"authUrl"`
	// State is the OAuth state bound to this connection.
	State string `json:"state"`
	// Scopes are the scopes requested from the provider.
	Scopes []string `json:"scopes"`
	// ProviderID identifies the provider configuration.
	ProviderID string `json:"provider_id"`
	// ConnectionID is the opaque handle to store; it is all a caller keeps.
	ConnectionID string `json:"connection_id"`
}

// Connection describes a connection, as answered by check-connection, the
// connection list and delete.
type Connection struct {
	// ConnectionID is the opaque connection handle.
	ConnectionID string `json:"connection_id"`
	// Status is one of StatusPending, StatusActive, StatusFailed,
	// StatusRevoked.
	Status string `json:"status"`
	// Flow says how the connection was made: code, device, api_key, basic,
	// client_credentials, jwt_bearer or github_app.
	Flow string `json:"flow"`
	// ProviderName is the provider's name, e.g. "google".
	ProviderName string `json:"provider_name"`
	// ProviderID identifies the provider configuration.
	ProviderID string `json:"provider_id"`
	// UserID is the user id given when the connection was requested.
	UserID string `json:"user_id"`
	// Scopes are the scopes that were requested.
	Scopes []string `json:"scopes"`
	// GrantedScopes are the scopes the provider granted.
	GrantedScopes []string `json:"granted_scopes"`
	// ScopesNarrowed reports that the provider granted fewer scopes than
	// requested.
	ScopesNarrowed bool `json:"scopes_narrowed"`
	// MissingScopes are the requested scopes the provider did not grant.
	MissingScopes []string `json:"missing_scopes"`
	// Warnings name conditions the caller should act on before they break
	// the connection: "refresh_token_expires_soon", "refresh_token_expired",
	// "no_refresh_token", "scopes_narrowed".
	Warnings []string `json:"warnings"`
	// Error is the OAuth error that failed the connection (e.g.
	// "access_denied", "invalid_grant"); empty when none.
	Error string `json:"error"`
	// ErrorDescription is the human text of Error; empty when none.
	ErrorDescription string `json:"error_description"`
	// Account holds what is known of the provider account (e.g. "sub",
	// "email"); empty when nothing is known.
	Account map[string]any `json:"account"`
	// Metadata holds provider-specific values (e.g. "instance_url").
	Metadata map[string]any `json:"metadata"`
	// ExpiresAt is when the current access token expires; nil when unknown.
	ExpiresAt *time.Time `json:"expires_at"`
	// RefreshTokenExpiresAt is when the refresh token stops working for good
	// (the user must consent again after it); nil when the provider sets no
	// absolute limit.
	RefreshTokenExpiresAt *time.Time `json:"refresh_token_expires_at"`
	// CreatedAt is when the connection was requested.
	CreatedAt *time.Time `json:"created_at"`
	// UpdatedAt is when the connection last changed.
	UpdatedAt *time.Time `json:"updated_at"`
	// ActivatedAt is when the connection became active; nil before that.
	ActivatedAt *time.Time `json:"activated_at"`
	// LastRefreshedAt is when the tokens were last refreshed; nil if never.
	LastRefreshedAt *time.Time `json:"last_refreshed_at"`
	// Tags are the labels the connect session gave the connection.
	Tags map[string]string `json:"tags"`
	// ConnectSessionID is the connect session that produced the connection;
	// empty when it was requested directly.
	ConnectSessionID string `json:"connect_session_id"`
}

// Token is an access token fetched through the gateway. Its String and
// GoString methods hide the token values so that printing or logging a Token
// does not leak them; read the fields to use them.
type Token struct {
	// AccessToken is the provider access token to send to the provider API.
	AccessToken string `json:"access_token"`
	// TokenType is the token type, usually "Bearer".
	TokenType string `json:"token_type"`
	// ExpiresAt is when AccessToken expires; nil when the provider did not
	// say.
	ExpiresAt *time.Time `json:"expires_at"`
	// IDToken is the OpenID Connect id_token; empty when the provider issued
	// none.
	IDToken string `json:"id_token,omitempty"`
	// Scopes are the scopes the token carries.
	Scopes []string `json:"scopes"`
	// ProviderName is the provider's name.
	ProviderName string `json:"provider_name"`
	// Username and Password are set for TokenType "basic" (a static login;
	// AccessToken is then base64(username:password)).
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// ConnectionID is the connection the token belongs to.
	ConnectionID string `json:"connection_id"`
	// Warnings holds "min_ttl_not_met" when auto_refresh gave a token living
	// less than min_ttl (refreshed moments ago, or a refresh is in progress or
	// unavailable); it is valid until ExpiresAt.
	Warnings []string `json:"warnings,omitempty"`
}

// String describes the token without revealing AccessToken or IDToken.
func (t Token) String() string {
	exp := "unknown"
	if t.ExpiresAt != nil {
		exp = t.ExpiresAt.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("oauthsdk.Token{connection_id=%s provider=%s type=%s expires_at=%s access_token=[redacted]}",
		t.ConnectionID, t.ProviderName, t.TokenType, exp)
}

// GoString is like String, so that %#v does not reveal the tokens either.
func (t Token) GoString() string { return t.String() }

// ExpiresWithin reports whether the token expires within d from now. A token
// without an expiry time never does.
func (t Token) ExpiresWithin(d time.Duration) bool {
	return t.ExpiresAt != nil && time.Until(*t.ExpiresAt) < d
}

// Provider is a provider configured in the broker.
type Provider struct {
	// Name is the provider name to use in [RequestConnectionInput].
	Name string `json:"name"`
	// DisplayName is a human name, e.g. "Google".
	DisplayName string `json:"display_name"`
	// ProviderID identifies the provider configuration.
	ProviderID string `json:"provider_id"`
	// DefaultScopes are the scopes configured as the provider's defaults.
	DefaultScopes []string `json:"default_scopes"`
	// SupportsRefresh reports whether the provider issues refresh tokens.
	SupportsRefresh bool `json:"supports_refresh"`
	// SupportsPKCE reports whether the provider supports PKCE.
	SupportsPKCE bool `json:"supports_pkce"`
	// DocsURL points at the provider's documentation.
	DocsURL string `json:"docs_url"`
	// Params names the extra parameters accepted in
	// [RequestConnectionInput.Params].
	Params []string `json:"params"`
	// Template is the catalog entry the provider is configured from, e.g.
	// "google" or "oidc".
	Template string `json:"template"`
	// OIDC reports whether id_tokens are issued and verified.
	OIDC bool `json:"oidc"`
	// ScopesURL points at the provider's list of scopes; empty when unknown.
	ScopesURL string `json:"scopes_url"`
	// SupportsRevocation reports whether deleting a connection revokes the
	// grant at the provider; nil when the provider's discovery document
	// decides.
	SupportsRevocation *bool `json:"supports_revocation"`
	// RefreshTokenRotation reports whether each refresh issues a new refresh
	// token.
	RefreshTokenRotation bool `json:"refresh_token_rotation"`
	// RefreshTokenLifetimeDays is the refresh token's documented absolute
	// lifetime; nil when it has none.
	RefreshTokenLifetimeDays *int `json:"refresh_token_lifetime_days"`
	// ParamFormats describes each of Params: the pattern a value must match,
	// an example, and whether it is required.
	ParamFormats map[string]ParamFormat `json:"param_formats"`
	// APIBaseURL is where [Client.Proxy] calls go; empty when the provider
	// is not configured for the proxy.
	APIBaseURL string `json:"api_base_url"`
}

// ParamFormat describes one provider parameter (see [Provider.ParamFormats]).
type ParamFormat struct {
	// Pattern is the regular expression a value must match.
	Pattern string `json:"pattern"`
	// Example is a valid value.
	Example string `json:"example"`
	// Required reports whether a connection request must set it.
	Required bool `json:"required"`
}

// ListConnectionsInput filters and pages GET /v1/connections. Zero fields are
// not sent.
type ListConnectionsInput struct {
	// UserID keeps only this user's connections.
	UserID string
	// ProviderName keeps only this provider's connections.
	ProviderName string
	// Status keeps only connections in this status (see StatusActive…).
	Status string
	// Page is the 1-based page number; 0 means the first page.
	Page int
	// PageSize is the page length; 0 means the gateway default (50). The
	// gateway caps it at 200.
	PageSize int
	// Tags keeps only connections carrying every one of these tags
	// (sent as ?tag=key:value, repeated).
	Tags map[string]string
}

// ConnectionList is one page of GET /v1/connections.
type ConnectionList struct {
	// Count is the total number of matching connections, over all pages.
	Count int `json:"count"`
	// Page is this page's 1-based number.
	Page int `json:"page"`
	// PageSize is the page length used.
	PageSize int `json:"page_size"`
	// Next is the URL of the next page; empty on the last page.
	Next string `json:"next"`
	// Previous is the URL of the previous page; empty on the first page.
	Previous string `json:"previous"`
	// Results are this page's connections.
	Results []Connection `json:"results"`
}

// GetTokenOptions tunes [Client.GetTokenWithOptions].
type GetTokenOptions struct {
	// AutoRefresh asks the gateway to refresh the token first when it
	// expires within MinTTL.
	AutoRefresh bool
	// MinTTL is the least remaining lifetime accepted with AutoRefresh,
	// rounded up to whole seconds. Zero means the gateway default (60s).
	MinTTL time.Duration
}

// WaitOptions tunes [Client.WaitForActiveWithOptions].
type WaitOptions struct {
	// MinInterval is the first delay between two checks (default 1s).
	MinInterval time.Duration
	// MaxInterval caps the delay between two checks (default 5s).
	MaxInterval time.Duration
}

// CreateConnectSessionInput is the body of POST /v1/connect-sessions.
type CreateConnectSessionInput struct {
	// UserID is the end user the connection is for (required unless
	// Reconnect is set).
	UserID string `json:"user_id,omitempty"`
	// AllowedProviders are the provider names the hosted page offers; empty
	// means every configured provider.
	AllowedProviders []string `json:"allowed_providers,omitempty"`
	// Scopes maps a provider name to the scopes to request from it.
	Scopes map[string][]string `json:"scopes,omitempty"`
	// ReturnURL is where the browser lands with status and connection_id.
	ReturnURL string `json:"return_url"`
	// Tags are copied onto the connection (at most 20).
	Tags map[string]string `json:"tags,omitempty"`
	// ExpiresIn is the link's lifetime in seconds (default 1800, max 86400).
	ExpiresIn int `json:"expires_in,omitempty"`
	// Reconnect names a connection the page reconnects in place.
	Reconnect string `json:"reconnect,omitempty"`
}

// ConnectSessionCreated is the answer of POST /v1/connect-sessions: send the
// end user's browser to ConnectURL (single use, expires at ExpiresAt).
type ConnectSessionCreated struct {
	ConnectURL string     `json:"connect_url"`
	SessionID  string     `json:"session_id"`
	ExpiresAt  *time.Time `json:"expires_at"`
}

// ConnectSession is GET /v1/connect-sessions/{id}: its state ("pending",
// "started", "completed", "failed", "expired") and the connections it
// produced.
type ConnectSession struct {
	SessionID        string              `json:"session_id"`
	Status           string              `json:"status"`
	UserID           string              `json:"user_id"`
	AllowedProviders []string            `json:"allowed_providers"`
	Scopes           map[string][]string `json:"scopes"`
	ReturnURL        string              `json:"return_url"`
	Tags             map[string]string   `json:"tags"`
	Reconnect        string              `json:"reconnect"`
	Error            string              `json:"error"`
	ExpiresAt        *time.Time          `json:"expires_at"`
	CreatedAt        *time.Time          `json:"created_at"`
	UsedAt           *time.Time          `json:"used_at"`
	CompletedAt      *time.Time          `json:"completed_at"`
	Connections      []Connection        `json:"connections"`
}

// ReconnectInput is the body of POST /v1/connections/{id}/reconnect.
type ReconnectInput struct {
	// Scopes are added to the connection's scopes (incremental consent).
	Scopes []string `json:"scopes,omitempty"`
	// ReturnURL defaults to the connection's own.
	ReturnURL string `json:"return_url,omitempty"`
}

// ReconnectOutput carries the consent URL for the same connection id. A
// consent by another account ends in status=error&error=account_mismatch and
// changes nothing.
type ReconnectOutput struct {
	AuthURL      string   `json:"authUrl"`
	ConnectionID string   `json:"connection_id"`
	Scopes       []string `json:"scopes"`
}

// The management API (keys with the "admin" scope): see [Client.CreateKey].

// Key is an API key as the management API shows it: never the key itself nor its
// digest. A nil restriction means unrestricted.
type Key struct {
	Prefix       string            `json:"prefix"`
	Name         string            `json:"name"`
	Scopes       []string          `json:"scopes"`
	Providers    *[]string         `json:"providers"`
	UserIDs      *[]string         `json:"user_ids"`
	UserIDPrefix *string           `json:"user_id_prefix"`
	AllowedCIDRs *[]string         `json:"allowed_cidrs"`
	EgressPolicy *[]map[string]any `json:"egress_policy"`
	CreatedAt    time.Time         `json:"created_at"`
	LastUsedAt   *time.Time        `json:"last_used_at"`
	ExpiresAt    *time.Time        `json:"expires_at"`
	RevokedAt    *time.Time        `json:"revoked_at"`
	// MintedFrom is the parent key's prefix for a minted key (revoked with it).
	MintedFrom *string `json:"minted_from"`
	// CreatedBy is the prefix of the admin key that created it.
	CreatedBy *string `json:"created_by"`
}

// KeyCreated is the answer of [Client.CreateKey]: Plaintext is the key itself,
// shown in this answer only.
type KeyCreated struct {
	Key
	Plaintext string `json:"key"`
}

// CreateKeyInput is the body of POST /v1/keys. Every restriction is optional;
// the new key never holds more than the admin key creating it (400 otherwise).
type CreateKeyInput struct {
	Name         string   `json:"name"`
	Scopes       []string `json:"scopes,omitempty"`
	Providers    []string `json:"providers,omitempty"`
	UserIDs      []string `json:"user_ids,omitempty"`
	UserIDPrefix string   `json:"user_id_prefix,omitempty"`
	AllowedCIDRs []string `json:"allowed_cidrs,omitempty"`
	// EgressPolicy holds proxy rules: "PROVIDER METHODS PATH_GLOB" strings or
	// {"provider", "methods", "path"} objects.
	EgressPolicy []any     `json:"egress_policy,omitempty"`
	ExpiresAt    time.Time `json:"-"`
	// ExpiresIn (seconds, 60-604800) mints a short-lived key: revoked with the
	// admin key that minted it.
	ExpiresIn int `json:"expires_in,omitempty"`
}

// KeyList is one page of GET /v1/keys.
type KeyList struct {
	Count    int     `json:"count"`
	Next     *string `json:"next"`
	Previous *string `json:"previous"`
	Results  []Key   `json:"results"`
}

// Webhook is a webhook endpoint (never its secret).
type Webhook struct {
	ID        string    `json:"id"`
	URL       string    `json:"url"`
	Events    []string  `json:"events"`
	Enabled   bool      `json:"enabled"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// WebhookCreated is the answer of [Client.CreateWebhook]: Secret signs the
// deliveries and is shown in this answer only.
type WebhookCreated struct {
	Webhook
	Secret string `json:"secret"`
}

// WebhookSecret is the answer of [Client.RotateWebhookSecret]: the new secret,
// shown once; the old one stops signing at once.
type WebhookSecret struct {
	ID     string `json:"id"`
	Secret string `json:"secret"`
}

// WebhookDelivery is one event sent (or being sent) to an endpoint.
type WebhookDelivery struct {
	ID             string     `json:"id"`
	Event          string     `json:"event"`
	ConnectionID   string     `json:"connection_id"`
	Status         string     `json:"status"`
	Attempts       int        `json:"attempts"`
	LastStatusCode *int       `json:"last_status_code"`
	LastError      string     `json:"last_error"`
	NextAttemptAt  *time.Time `json:"next_attempt_at"`
	CreatedAt      time.Time  `json:"created_at"`
	DeliveredAt    *time.Time `json:"delivered_at"`
}

// WebhookDeliveryList is one page of a webhook's deliveries, newest first.
type WebhookDeliveryList struct {
	Count    int               `json:"count"`
	Next     *string           `json:"next"`
	Previous *string           `json:"previous"`
	Results  []WebhookDelivery `json:"results"`
}

// AuditEvent is one row of the workspace's audit log. Never a token.
type AuditEvent struct {
	ID           int            `json:"id"`
	CreatedAt    time.Time      `json:"created_at"`
	ConnectionID string         `json:"connection_id"`
	Actor        string         `json:"actor"`
	Action       string         `json:"action"`
	IP           *string        `json:"ip"`
	Detail       map[string]any `json:"detail"`
}

// AuditPage is one page of GET /v1/audit, newest first; Next (a URL) is the
// older page, nil on the last. Pass its cursor as [AuditQuery.Cursor].
type AuditPage struct {
	Next    *string      `json:"next"`
	Results []AuditEvent `json:"results"`
}

// AuditQuery filters the audit log. Zero values are not sent.
type AuditQuery struct {
	ConnectionID string
	Actor        string
	Action       string
	Since        time.Time
	Until        time.Time
	// Limit and Cursor page GET /v1/audit (not the export).
	Limit  int
	Cursor string
}

// ProviderAdmin is a provider app as its workspace manages it: never the
// secret, only whether one is set.
type ProviderAdmin struct {
	Name            string            `json:"name"`
	Shared          bool              `json:"shared"`
	Environment     *string           `json:"environment"`
	Template        string            `json:"template"`
	DisplayName     string            `json:"display_name"`
	ClientID        string            `json:"client_id"`
	ClientSecretSet bool              `json:"client_secret_set"`
	DefaultScopes   []string          `json:"default_scopes"`
	AuthorizeParams map[string]string `json:"authorize_params"`
	Settings        map[string]any    `json:"settings"`
	TokenAuth       string            `json:"token_auth"`
	Enabled         bool              `json:"enabled"`
	CreatedAt       time.Time         `json:"created_at"`
	UpdatedAt       time.Time         `json:"updated_at"`
}

// ProviderAdminList is the answer of GET /v1/workspace-providers.
type ProviderAdminList struct {
	Providers []ProviderAdmin `json:"providers"`
}

// ProviderUpsertInput is the body of PUT /v1/workspace-providers/{name}: nil
// fields are not sent (they keep their value).
type ProviderUpsertInput struct {
	Template        *string           `json:"template,omitempty"`
	DisplayName     *string           `json:"display_name,omitempty"`
	ClientID        *string           `json:"client_id,omitempty"`
	ClientSecret    *string           `json:"client_secret,omitempty"`
	DefaultScopes   []string          `json:"default_scopes,omitempty"`
	AuthorizeParams map[string]string `json:"authorize_params,omitempty"`
	Settings        map[string]any    `json:"settings,omitempty"`
	TokenAuth       *string           `json:"token_auth,omitempty"`
	Enabled         *bool             `json:"enabled,omitempty"`
}
