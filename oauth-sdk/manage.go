package oauthsdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The management API: calls for keys with the "admin" scope. A key without it
// gets a 403 APIError; another workspace's key, webhook or delivery is a 404.

// CreateKey creates a key in the admin key's workspace: POST /v1/keys. The
// answer's Plaintext is the key itself, shown this once.
func (c *Client) CreateKey(ctx context.Context, in CreateKeyInput) (*KeyCreated, error) {
	body := map[string]any{}
	encoded, err := json.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("oauthsdk: encoding request: %w", err)
	}
	if err := json.Unmarshal(encoded, &body); err != nil {
		return nil, fmt.Errorf("oauthsdk: encoding request: %w", err)
	}
	if !in.ExpiresAt.IsZero() {
		body["expires_at"] = in.ExpiresAt.UTC().Format(time.RFC3339)
	}
	var out KeyCreated
	if err := c.do(ctx, http.MethodPost, "/v1/keys", nil, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListKeys lists the workspace's keys (revoked ones too with includeRevoked):
// GET /v1/keys. Page and pageSize 0 leave the gateway's defaults.
func (c *Client) ListKeys(ctx context.Context, includeRevoked bool, page, pageSize int) (*KeyList, error) {
	q := url.Values{}
	if includeRevoked {
		q.Set("include_revoked", "true")
	}
	if page > 0 {
		q.Set("page", fmt.Sprint(page))
	}
	if pageSize > 0 {
		q.Set("page_size", fmt.Sprint(pageSize))
	}
	var out KeyList
	if err := c.do(ctx, http.MethodGet, "/v1/keys", q, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// GetKey reads one key by its prefix: GET /v1/keys/{prefix}.
func (c *Client) GetKey(ctx context.Context, prefix string) (*Key, error) {
	if prefix == "" {
		return nil, errEmpty("prefix")
	}
	var out Key
	if err := c.do(ctx, http.MethodGet, "/v1/keys/"+url.PathEscape(prefix), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RevokeKey revokes a key and every key minted from it: DELETE /v1/keys/{prefix}.
func (c *Client) RevokeKey(ctx context.Context, prefix string) (*Key, error) {
	if prefix == "" {
		return nil, errEmpty("prefix")
	}
	var out Key
	if err := c.do(ctx, http.MethodDelete, "/v1/keys/"+url.PathEscape(prefix), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateWebhook adds a webhook endpoint (events nil: every event): POST
// /v1/webhooks. The answer's Secret is shown this once.
func (c *Client) CreateWebhook(ctx context.Context, endpoint string, events []string) (*WebhookCreated, error) {
	body := map[string]any{"url": endpoint}
	if events != nil {
		body["events"] = events
	}
	var out WebhookCreated
	if err := c.do(ctx, http.MethodPost, "/v1/webhooks", nil, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListWebhooks lists the workspace's webhook endpoints: GET /v1/webhooks.
func (c *Client) ListWebhooks(ctx context.Context) ([]Webhook, error) {
	var out struct {
		Results []Webhook `json:"results"`
	}
	if err := c.do(ctx, http.MethodGet, "/v1/webhooks", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Results, nil
}

// DeleteWebhook deletes an endpoint and its delivery history: DELETE /v1/webhooks/{id}.
func (c *Client) DeleteWebhook(ctx context.Context, webhookID string) (*Webhook, error) {
	if webhookID == "" {
		return nil, errEmpty("webhook id")
	}
	var out Webhook
	if err := c.do(ctx, http.MethodDelete, "/v1/webhooks/"+url.PathEscape(webhookID), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RotateWebhookSecret gives the endpoint a new signing secret (shown once):
// POST /v1/webhooks/{id}/rotate-secret.
func (c *Client) RotateWebhookSecret(ctx context.Context, webhookID string) (*WebhookSecret, error) {
	if webhookID == "" {
		return nil, errEmpty("webhook id")
	}
	var out WebhookSecret
	if err := c.do(ctx, http.MethodPost, "/v1/webhooks/"+url.PathEscape(webhookID)+"/rotate-secret", nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListWebhookDeliveries lists an endpoint's deliveries, newest first (status ""
// for every status): GET /v1/webhooks/{id}/deliveries.
func (c *Client) ListWebhookDeliveries(ctx context.Context, webhookID, status string, page, pageSize int) (*WebhookDeliveryList, error) {
	if webhookID == "" {
		return nil, errEmpty("webhook id")
	}
	q := url.Values{}
	if status != "" {
		q.Set("status", status)
	}
	if page > 0 {
		q.Set("page", fmt.Sprint(page))
	}
	if pageSize > 0 {
		q.Set("page_size", fmt.Sprint(pageSize))
	}
	var out WebhookDeliveryList
	if err := c.do(ctx, http.MethodGet, "/v1/webhooks/"+url.PathEscape(webhookID)+"/deliveries", q, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RedeliverWebhookDelivery queues a failed delivery again from scratch: POST
// /v1/webhooks/{id}/deliveries/{delivery_id}/redeliver (409 unless it failed).
func (c *Client) RedeliverWebhookDelivery(ctx context.Context, webhookID, deliveryID string) (*WebhookDelivery, error) {
	if webhookID == "" || deliveryID == "" {
		return nil, errEmpty("webhook or delivery id")
	}
	var out WebhookDelivery
	if err := c.do(ctx, http.MethodPost, "/v1/webhooks/"+url.PathEscape(webhookID)+"/deliveries/"+url.PathEscape(deliveryID)+"/redeliver", nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func (q AuditQuery) values(paged bool) url.Values {
	v := url.Values{}
	set := func(name, value string) {
		if value != "" {
			v.Set(name, value)
		}
	}
	set("connection_id", q.ConnectionID)
	set("actor", q.Actor)
	set("action", q.Action)
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if !q.Until.IsZero() {
		v.Set("until", q.Until.UTC().Format(time.RFC3339Nano))
	}
	if paged {
		if q.Limit > 0 {
			v.Set("limit", fmt.Sprint(q.Limit))
		}
		set("cursor", q.Cursor)
	}
	return v
}

// ListAuditEvents reads one page of the workspace's audit log, newest first:
// GET /v1/audit. For the next page pass [AuditPage.NextCursor] as q.Cursor.
func (c *Client) ListAuditEvents(ctx context.Context, q AuditQuery) (*AuditPage, error) {
	var out AuditPage
	if err := c.do(ctx, http.MethodGet, "/v1/audit", q.values(true), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// NextCursor is the cursor of the older page (from Next), or "" on the last page.
func (p *AuditPage) NextCursor() string {
	if p == nil || p.Next == nil {
		return ""
	}
	next, err := url.Parse(*p.Next)
	if err != nil {
		return ""
	}
	return next.Query().Get("cursor")
}

// ExportAuditEvents reads the rows created in [q.Since, q.Until), oldest
// first, from the NDJSON export (GET /v1/audit/export; Since is required). Each
// row is one decoded line, with the export's chain_hash and prev_id.
func (c *Client) ExportAuditEvents(ctx context.Context, q AuditQuery) ([]map[string]any, error) {
	if q.Since.IsZero() {
		return nil, errEmpty("since")
	}
	var raw []byte
	if err := c.do(ctx, http.MethodGet, "/v1/audit/export", q.values(false), nil, &raw); err != nil {
		return nil, err
	}
	var rows []map[string]any
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var row map[string]any
		if err := json.Unmarshal([]byte(line), &row); err != nil {
			return nil, fmt.Errorf("oauthsdk: decoding the audit export: %w", err)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

func errEmpty(what string) error {
	return errors.New("oauthsdk: empty " + what)
}

// ListWorkspaceProviders lists, per name, the provider app the workspace uses:
// its own or the shared one (Shared true). Never a secret: GET /v1/workspace-providers.
func (c *Client) ListWorkspaceProviders(ctx context.Context) ([]ProviderAdmin, error) {
	var out ProviderAdminList
	if err := c.do(ctx, http.MethodGet, "/v1/workspace-providers", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Providers, nil
}

// GetWorkspaceProvider reads the workspace's own provider app (a shared one is
// not the workspace's: 404): GET /v1/workspace-providers/{name}.
func (c *Client) GetWorkspaceProvider(ctx context.Context, name string) (*ProviderAdmin, error) {
	if name == "" {
		return nil, errEmpty("provider name")
	}
	var out ProviderAdmin
	if err := c.do(ctx, http.MethodGet, "/v1/workspace-providers/"+url.PathEscape(name), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// UpsertWorkspaceProvider creates or updates the workspace's own provider app:
// PUT /v1/workspace-providers/{name}. Fields left nil keep their value;
// ClientSecret is write-only.
func (c *Client) UpsertWorkspaceProvider(ctx context.Context, name string, in ProviderUpsertInput) (*ProviderAdmin, error) {
	if name == "" {
		return nil, errEmpty("provider name")
	}
	var out ProviderAdmin
	if err := c.do(ctx, http.MethodPut, "/v1/workspace-providers/"+url.PathEscape(name), nil, in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteWorkspaceProvider deletes the workspace's own provider app: DELETE
// /v1/workspace-providers/{name}; 409 provider_in_use while it has connections.
func (c *Client) DeleteWorkspaceProvider(ctx context.Context, name string) error {
	if name == "" {
		return errEmpty("provider name")
	}
	return c.do(ctx, http.MethodDelete, "/v1/workspace-providers/"+url.PathEscape(name), nil, nil, nil)
}
