package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/dso"
	"github.com/miekg/dns"
)

// makeCert writes a self-signed ECDSA P-256 certificate for 127.0.0.1 and
// its key into dir, for llq's TLS listener, and returns their paths and a
// client configuration that trusts it.
func makeCert(dir string) (cert, key string, conf *tls.Config, err error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "trigger-latency"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return "", "", nil, err
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return "", "", nil, err
	}
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return "", "", nil, err
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return "", "", nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return "", "", nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return cert, key, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}, nil
}

// pushHook is the DNS Push client's OnMessage hook: a received PUSH that
// adds an address hands its arrival time to the channel of the address's
// owner name. Every change adds an address (and removes the last one):
// a message with removes only would be the tail of an earlier change.
func (a *arrivals) pushHook(dir client.Direction, b []byte) {
	if dir != client.Received {
		return
	}
	now := time.Now()
	m, err := dso.Parse(b)
	if err != nil || m.ID != 0 {
		return
	}
	p, ok := m.Primary()
	if !ok || p.Type != dso.TypePush {
		return
	}
	rrs, err := dso.ParsePush(m, p, nil)
	if err != nil {
		return
	}
	done := map[string]bool{}
	for _, rr := range rrs {
		if _, ok := rr.(*dns.A); !ok || dso.OpOf(rr) != dso.OpAdd {
			continue
		}
		name := strings.ToLower(rr.Header().Name)
		if done[name] {
			continue
		}
		done[name] = true
		a.mu.Lock()
		ch := a.ch[name]
		a.mu.Unlock()
		select {
		case ch <- now:
		default:
		}
	}
}
