// Package testcert makes a throwaway certificate authority and a server
// certificate signed by it, for tests that run TLS on loopback: DNS Push
// clients and servers, with a real chain and a real name check.
package testcert

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
	"testing"
	"time"
)

// CA is a certificate authority and one server certificate it signed.
type CA struct {
	// Pool trusts the CA and nothing else.
	Pool *x509.CertPool
	// CAFile is the CA certificate in PEM.
	CAFile string
	// Cert is the server certificate, valid for the names given to New
	// and for 127.0.0.1 and ::1.
	Cert tls.Certificate
	// CertFile and KeyFile hold Cert and its key in PEM, as a Corefile's
	// tls directive takes them.
	CertFile, KeyFile string
}

// New makes a CA and a server certificate for names, valid from an hour
// ago for a day, with its files in a temporary directory of t.
func New(t testing.TB, names ...string) *CA {
	t.Helper()
	fail := func(err error) {
		if err != nil {
			t.Fatalf("testcert: %v", err)
		}
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	fail(err)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "llq test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	fail(err)
	ca, err := x509.ParseCertificate(caDER)
	fail(err)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	fail(err)
	cn := "localhost"
	if len(names) > 0 {
		cn = names[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     names,
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	fail(err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	fail(err)

	dir := t.TempDir()
	c := &CA{
		Pool:     x509.NewCertPool(),
		CAFile:   filepath.Join(dir, "ca.pem"),
		Cert:     tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		CertFile: filepath.Join(dir, "cert.pem"),
		KeyFile:  filepath.Join(dir, "key.pem"),
	}
	c.Pool.AddCert(ca)
	for path, block := range map[string]*pem.Block{
		c.CAFile:   {Type: "CERTIFICATE", Bytes: caDER},
		c.CertFile: {Type: "CERTIFICATE", Bytes: der},
		c.KeyFile:  {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		fail(os.WriteFile(path, pem.EncodeToMemory(block), 0o600))
	}
	return c
}

// ServerConfig is a TLS server configuration serving Cert.
func (c *CA) ServerConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{c.Cert}}
}

// ClientConfig is a TLS client configuration trusting only the CA.
func (c *CA) ClientConfig() *tls.Config {
	return &tls.Config{RootCAs: c.Pool}
}
