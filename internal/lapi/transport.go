package lapi

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"

	"github.com/xdpgate/xdpgate/internal/configfile"
)

// httpClient builds the HTTP client for cfg: TLS settings, and the API key
// header. It has no overall timeout: each pull carries its own deadline.
func httpClient(cfg Config, u *url.URL) (*http.Client, error) {
	hasKey := cfg.APIKey != ""
	hasCert := cfg.CertPath != "" || cfg.KeyPath != ""
	switch {
	case hasKey && hasCert:
		return nil, errors.New("lapi: both an API key and a client certificate are set: use one")
	case !hasKey && !hasCert:
		return nil, errors.New("lapi: neither an API key nor a client certificate is set")
	case hasCert && (cfg.CertPath == "" || cfg.KeyPath == ""):
		return nil, errors.New("lapi: a client certificate needs both cert_path and key_path")
	case hasCert && u.Scheme != "https":
		return nil, fmt.Errorf("lapi: a client certificate needs an https URL, not %s", u.Scheme)
	}

	tr := http.DefaultTransport.(*http.Transport).Clone()
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.InsecureSkipVerify}
	if cfg.CACertPath != "" {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(cfg.CACertPath)
		if err != nil {
			return nil, fmt.Errorf("lapi: CA certificates: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("lapi: CA certificates: no PEM certificate in %s", cfg.CACertPath)
		}
		tc.RootCAs = pool
	}
	if hasCert {
		cert, err := tls.LoadX509KeyPair(cfg.CertPath, cfg.KeyPath)
		if err != nil {
			return nil, fmt.Errorf("lapi: client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	tr.TLSClientConfig = tc

	var rt http.RoundTripper = tr
	if hasKey {
		rt = &keyTransport{key: cfg.APIKey, next: tr}
	}
	return &http.Client{Transport: rt}, nil
}

// keyTransport adds the API key header. Unlike apiclient.APIKeyTransport it
// logs nothing: a LAPI outage would otherwise print an error per request
// through the global logrus logger.
type keyTransport struct {
	key  configfile.Secret
	next http.RoundTripper
}

func (t *keyTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set("X-Api-Key", t.key.Reveal())
	return t.next.RoundTrip(req)
}
