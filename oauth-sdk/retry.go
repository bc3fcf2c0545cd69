package oauthsdk

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Default retry settings, used for the zero fields of a [RetryPolicy] and
// when [WithRetry] is not given.
const (
	// DefaultRetries is the number of retries of a client built without
	// [WithRetry].
	DefaultRetries = 2
	// DefaultBaseDelay is the backoff before the first retry.
	DefaultBaseDelay = 200 * time.Millisecond
	// DefaultMaxDelay caps the backoff and the Retry-After delay honoured.
	DefaultMaxDelay = 30 * time.Second
)

// RetryPolicy says how a call is retried after a 429, 502 or 503 answer or a
// connection error. No other failure is ever retried.
//
// The n-th retry (n = 0, 1, …) waits a random delay between half and all of
// min(MaxDelay, BaseDelay·2ⁿ) ("equal jitter"), or the answer's Retry-After
// delay when that is longer. A Retry-After longer than MaxDelay is not waited
// for: the call returns the [*APIError] at once, with RetryAfter set, so the
// caller can schedule the retry. Neither is a delay that would outlast the
// context's deadline. The wait ends early, returning the context's error,
// when the context is done.
type RetryPolicy struct {
	// Retries is the number of retries after the first attempt; zero or
	// less disables retries.
	Retries int
	// BaseDelay is the backoff before the first retry; zero means
	// DefaultBaseDelay.
	BaseDelay time.Duration
	// MaxDelay caps the backoff and the Retry-After delay honoured; zero
	// means DefaultMaxDelay.
	MaxDelay time.Duration
}

// normalized returns the policy with defaults in place of zero fields.
func (p RetryPolicy) normalized() RetryPolicy {
	if p.Retries < 0 {
		p.Retries = 0
	}
	if p.BaseDelay <= 0 {
		p.BaseDelay = DefaultBaseDelay
	}
	if p.MaxDelay <= 0 {
		p.MaxDelay = DefaultMaxDelay
	}
	if p.BaseDelay > p.MaxDelay {
		p.BaseDelay = p.MaxDelay
	}
	return p
}

// backoff returns the jittered delay before retry n (0-based).
func (p RetryPolicy) backoff(n int) time.Duration {
	d := p.BaseDelay
	for i := 0; i < n && d < p.MaxDelay; i++ {
		d *= 2
	}
	if d > p.MaxDelay {
		d = p.MaxDelay
	}
	half := d / 2
	return half + rand.N(d-half+1)
}

// retryableStatus reports whether an answer with this status may be retried:
// per the gateway contract, 429, 502 and 503 leave no state behind.
func retryableStatus(code int) bool {
	switch code {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable:
		return true
	}
	return false
}

// retryableTransportError reports whether err, returned by the HTTP client or
// while reading a body, is a connection problem worth another attempt:
// refused, reset, closed early, timed out. Certificate problems and malformed
// requests are not.
func retryableTransportError(err error) bool {
	if err == nil {
		return false
	}
	var (
		unknownAuth x509.UnknownAuthorityError
		hostname    x509.HostnameError
		certInvalid x509.CertificateInvalidError
		verifyErr   *tls.CertificateVerificationError
		recordErr   tls.RecordHeaderError
	)
	if errors.As(err, &unknownAuth) || errors.As(err, &hostname) || errors.As(err, &certInvalid) ||
		errors.As(err, &verifyErr) || errors.As(err, &recordErr) {
		return false
	}
	// *url.Error implements net.Error itself, so look inside it.
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne)
}

// isRetryable reports whether err is one the retry policy would retry.
func isRetryable(err error) bool {
	if ae, ok := apiErrorOf(err); ok {
		return retryableStatus(ae.StatusCode)
	}
	return retryableTransportError(err)
}

// parseRetryAfter reads a Retry-After header: delay-seconds (what the gateway
// sends) or an HTTP date. It returns zero when absent or unreadable.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if secs <= 0 || secs > 1e9 {
			return 0
		}
		return time.Duration(secs * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}

// sleepCtx waits d or until ctx is done, whichever comes first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
