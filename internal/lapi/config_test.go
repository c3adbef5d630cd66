package lapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNewRejects(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no URL", Config{APIKey: "k"}, "no URL"},
		{"bad scheme", Config{URL: "ftp://127.0.0.1:8080", APIKey: "k"}, "scheme must be http or https"},
		{"no host", Config{URL: "http:///v1", APIKey: "k"}, "no host"},
		{"credentials in URL", Config{URL: "http://u:p@127.0.0.1:8080", APIKey: "k"}, "must not hold credentials"},
		{"no credentials", Config{URL: "http://127.0.0.1:8080"}, "neither an API key nor a client certificate"},
		{"key and cert", Config{URL: "https://127.0.0.1:8080", APIKey: "k", CertPath: "c", KeyPath: "k"}, "use one"},
		{"cert without key", Config{URL: "https://127.0.0.1:8080", CertPath: "c"}, "both cert_path and key_path"},
		{"cert over http", Config{URL: "http://127.0.0.1:8080", CertPath: "c", KeyPath: "k"}, "needs an https URL"},
		{"missing cert files", Config{URL: "https://127.0.0.1:8080", CertPath: filepath.Join(dir, "c"), KeyPath: filepath.Join(dir, "k")}, "client certificate"},
		{"missing CA file", Config{URL: "https://127.0.0.1:8080", APIKey: "k", CACertPath: filepath.Join(dir, "none.pem")}, "CA certificates"},
		{"CA file without PEM", Config{URL: "https://127.0.0.1:8080", APIKey: "k", CACertPath: notPEM}, "no PEM certificate"},
		{"negative frequency", Config{URL: "http://127.0.0.1:8080", APIKey: "k", UpdateFrequency: -time.Second}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want an error with %q", err, tt.want)
			}
		})
	}
	if _, err := New(Config{URL: "http://127.0.0.1:8080", APIKey: "k"}, WithBackoff(time.Minute, time.Second)); err == nil {
		t.Error("New accepted a backoff cap below its start")
	}
	c, err := New(Config{URL: "http://127.0.0.1:8080/crowdsec", APIKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if c.cfg.UpdateFrequency != DefaultUpdateFrequency || c.baseURL != "http://127.0.0.1:8080/crowdsec/" {
		t.Errorf("defaults: frequency %v, base URL %q", c.cfg.UpdateFrequency, c.baseURL)
	}
}

func TestBackoff(t *testing.T) {
	c, err := New(Config{URL: "http://127.0.0.1:8080", APIKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		n        int
		min, max time.Duration
	}{
		{1, 500 * time.Millisecond, time.Second},
		{2, time.Second, 2 * time.Second},
		{3, 2 * time.Second, 4 * time.Second},
		{7, 30 * time.Second, time.Minute},
		{1000, 30 * time.Second, time.Minute},
	}
	for _, tt := range tests {
		seen := map[time.Duration]bool{}
		for range 200 {
			d := c.backoff(tt.n)
			if d < tt.min || d > tt.max {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", tt.n, d, tt.min, tt.max)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Errorf("backoff(%d) has no jitter: %v", tt.n, seen)
		}
	}
}

// pki is a CA with a server and a client certificate, in files.
type pki struct {
	caFile, certFile, keyFile string
	pool                      *x509.CertPool
	server                    tls.Certificate
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn, OrganizationalUnit: []string{"bouncer-ou"}},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, key
	}
	writePEM := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := &pki{pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.caFile = writePEM("ca.pem", "CERTIFICATE", caDER)
	sDER, sKey := issue(2, "lapi", x509.ExtKeyUsageServerAuth)
	p.server = tls.Certificate{Certificate: [][]byte{sDER}, PrivateKey: sKey}
	cDER, cKey := issue(3, "xdpgate-node", x509.ExtKeyUsageClientAuth)
	p.certFile = writePEM("client.pem", "CERTIFICATE", cDER)
	kDER, _ := x509.MarshalECPrivateKey(cKey)
	p.keyFile = writePEM("client-key.pem", "EC PRIVATE KEY", kDER)
	return p
}

// TestTLS checks the transport settings against a TLS server that
// verifies client certificates as LAPI does. The server only answers the
// stream request; the real LAPI tests cover the stream itself.
func TestTLS(t *testing.T) {
	p := newPKI(t)
	var seen []string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who := "key:" + r.Header.Get("X-Api-Key")
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			who = "cert:" + r.TLS.PeerCertificates[0].Subject.CommonName
		}
		seen = append(seen, who)
		if r.URL.Path != "/v1/decisions/stream" || r.URL.Query().Get("startup") != "true" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"new":[{"id":1,"origin":"cscli","scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.1","duration":"1h"}],"deleted":null}`))
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the unknown-CA case fails the handshake
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.server}, ClientCAs: p.pool, ClientAuth: tls.VerifyClientCertIfGiven}
	srv.StartTLS()
	defer srv.Close()

	tests := []struct {
		name    string
		cfg     Config
		wantErr string
		who     string
	}{
		{"client certificate", Config{CertPath: p.certFile, KeyPath: p.keyFile, CACertPath: p.caFile}, "", "cert:xdpgate-node"},
		{"API key over TLS", Config{APIKey: "k3y", CACertPath: p.caFile}, "", "key:k3y"},
		{"unknown CA", Config{APIKey: "k3y"}, "certificate signed by unknown authority", ""},
		{"unknown CA, verification off", Config{APIKey: "k3y", InsecureSkipVerify: true}, "", "key:k3y"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen = nil
			tt.cfg.URL = srv.URL
			c, err := New(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.FullPull(context.Background())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("FullPull = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("FullPull: %v", err)
			}
			if len(got) != 1 || !slices.Equal(seen, []string{tt.who}) {
				t.Errorf("got %d decisions, server saw %v, want %s", len(got), seen, tt.who)
			}
		})
	}
}
