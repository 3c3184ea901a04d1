//go:build linux

package test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// These tests run CoreDNS's kubernetes plugin against a real control plane:
// etcd and kube-apiserver, built by tools/k8s/build.sh and started here on
// loopback ports. There is no controller-manager, scheduler or kubelet:
// the tests create EndpointSlices themselves, as the EndpointSlice
// controller would, and nothing ever runs a pod.

// k8sBinDir finds the control plane binaries: $LLQ_K8S_BIN (where CI's
// build puts them; they must be there), else build.sh's default directory
// (skipping the test when they are not).
func k8sBinDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("LLQ_K8S_BIN")
	explicit := dir != ""
	if !explicit {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Skipf("LLQ_K8S_BIN is not set and there is no home directory: %v", err)
		}
		dir = filepath.Join(home, ".cache", "llq-k8s", "bin")
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil {
			if explicit {
				t.Fatalf("LLQ_K8S_BIN=%s has no %s (build it with tools/k8s/build.sh): %v", dir, bin, err)
			}
			t.Skipf("no Kubernetes control plane: LLQ_K8S_BIN is not set and %s has no %s; run tools/k8s/build.sh (about 10 minutes the first time), as .ci/run does", dir, bin)
		}
	}
	return dir
}

// controlPlane is etcd plus kube-apiserver on loopback.
type controlPlane struct {
	dir        string
	url        string
	caPEM      []byte
	token      string // static admin token (group system:masters)
	kubeconfig string // admin kubeconfig, context kubeContext
	config     *rest.Config
	client     kubernetes.Interface
	dynamic    dynamic.Interface

	mu       sync.Mutex
	warnings []string // every API warning since the last takeWarnings
}

const kubeContext = "llq-test"

func (cp *controlPlane) HandleWarningHeader(code int, agent, text string) {
	cp.mu.Lock()
	cp.warnings = append(cp.warnings, text)
	cp.mu.Unlock()
}

func (cp *controlPlane) takeWarnings() []string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	w := cp.warnings
	cp.warnings = nil
	return w
}

// startControlPlane starts etcd and kube-apiserver, waits until the API
// server is ready, and kills both (by PID) when the test ends.
func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	bin := k8sBinDir(t)
	dir := t.TempDir()
	cp := &controlPlane{dir: dir}

	certFile, keyFile := filepath.Join(dir, "apiserver.crt"), filepath.Join(dir, "apiserver.key")
	cp.caPEM = writeServingCert(t, certFile, keyFile)
	saKey, saPub := filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	writeRSAKeyPair(t, saKey, saPub)
	cp.token = randomHex(t, 16)
	tokens := filepath.Join(dir, "tokens.csv")
	writeFile(t, tokens, cp.token+",llq-admin,llq-admin,system:masters\n")

	etcdClient, etcdPeer, api := freePort(t), freePort(t), freePort(t)
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)
	etcd := startProcess(t, dir, filepath.Join(bin, "etcd"),
		"--name=llq",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL,
		"--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=llq="+peerURL,
		"--unsafe-no-fsync",
		"--log-level=warn",
	)

	cp.url = fmt.Sprintf("https://127.0.0.1:%d", api)
	apiserver := startProcess(t, dir, filepath.Join(bin, "kube-apiserver"),
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(int(api)),
		"--cert-dir="+dir,
		"--tls-cert-file="+certFile,
		"--tls-private-key-file="+keyFile,
		"--client-ca-file="+certFile,
		"--token-auth-file="+tokens,
		// RBAC rather than AlwaysAllow, so that the deployment test can
		// check that the manifest's ClusterRole is enough for CoreDNS.
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--service-account-issuer="+cp.url,
		"--service-account-key-file="+saPub,
		"--service-account-signing-key-file="+saKey,
		// No controller-manager makes service account tokens.
		"--disable-admission-plugins=ServiceAccount",
		"--endpoint-reconciler-type=none",
		"--profiling=false",
	)

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cp.caPEM)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := readyz(hc, cp.url, cp.token); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("kube-apiserver not ready after 60 s: %v\n%s\n%s", err, apiserver.tail(), etcd.tail())
		}
		if apiserver.exited() || etcd.exited() {
			t.Fatalf("the control plane died:\n%s\n%s", apiserver.tail(), etcd.tail())
		}
		time.Sleep(100 * time.Millisecond)
	}

	cp.kubeconfig = filepath.Join(dir, "kubeconfig")
	cp.writeKubeconfig(t, cp.kubeconfig, cp.token)
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.WarningHandler = cp
	cp.config = cfg
	if cp.client, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if cp.dynamic, err = dynamic.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	return cp
}

func readyz(hc *http.Client, url, token string) error {
	req, err := http.NewRequest(http.MethodGet, url+"/readyz", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/readyz: %s: %s", resp.Status, body)
	}
	return nil
}

// writeKubeconfig writes a kubeconfig for the API server that
// authenticates with token, its one context named kubeContext.
func (cp *controlPlane) writeKubeconfig(t *testing.T, path, token string) {
	t.Helper()
	c := clientcmdapi.NewConfig()
	c.Clusters["llq"] = &clientcmdapi.Cluster{Server: cp.url, CertificateAuthorityData: cp.caPEM}
	c.AuthInfos["llq"] = &clientcmdapi.AuthInfo{Token: token}
	c.Contexts[kubeContext] = &clientcmdapi.Context{Cluster: "llq", AuthInfo: "llq"}
	c.CurrentContext = kubeContext
	if err := clientcmd.WriteToFile(*c, path); err != nil {
		t.Fatal(err)
	}
}

// writeServingCert writes a self-signed certificate for 127.0.0.1 and
// localhost and its key, and returns the certificate in PEM. It is also the
// API server's client CA (no client presents a certificate).
func writeServingCert(t *testing.T, certFile, keyFile string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "llq-test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	writeFile(t, certFile, string(certPEM))
	writeFile(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})))
	return certPEM
}

// writeRSAKeyPair writes the service account signing key and its public
// half.
func writeRSAKeyPair(t *testing.T, keyFile, pubFile string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})))
	writeFile(t, pubFile, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})))
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// ---- Kubernetes objects ----

// namespace creates a namespace with a unique name. Without a
// controller-manager a deleted namespace never goes away, so tests delete
// objects, never namespaces.
func (cp *controlPlane) namespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "llq-" + randomHex(t, 4)}}
	if _, err := cp.client.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// headless creates a headless Service with one named port and no selector:
// its endpoints are whatever EndpointSlices say.
func (cp *controlPlane) headless(t *testing.T, ns, name, port string, number int32, proto corev1.Protocol) {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{
			ClusterIP: corev1.ClusterIPNone,
			Ports:     []corev1.ServicePort{{Name: port, Port: number, Protocol: proto}},
		},
	}
	if _, err := cp.client.CoreV1().Services(ns).Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// endpoint is one ready address of an EndpointSlice, with an optional
// hostname (what a StatefulSet's pods get).
type endpoint struct {
	ip, hostname string
}

// setEndpoints creates or replaces the EndpointSlice of service svc, as the
// EndpointSlice controller would for pods with these addresses.
func (cp *controlPlane) setEndpoints(t *testing.T, ns, svc, port string, number int32, proto corev1.Protocol, eps ...endpoint) {
	t.Helper()
	ready := true
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      svc + "-llq",
			Namespace: ns,
			Labels:    map[string]string{discoveryv1.LabelServiceName: svc},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &port, Port: &number, Protocol: &proto}},
	}
	for _, ep := range eps {
		e := discoveryv1.Endpoint{Addresses: []string{ep.ip}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}
		if ep.hostname != "" {
			e.Hostname = &ep.hostname
		}
		slice.Endpoints = append(slice.Endpoints, e)
	}
	api := cp.client.DiscoveryV1().EndpointSlices(ns)
	ctx := context.Background()
	if old, err := api.Get(ctx, slice.Name, metav1.GetOptions{}); err == nil {
		slice.ResourceVersion = old.ResourceVersion
		_, err = api.Update(ctx, slice, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return
	} else if !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	if _, err := api.Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// ---- CoreDNS ----

// startCoreDNS starts an in-process CoreDNS and returns its ordinary DNS
// address. ShutdownCallbacks runs before Stop: it stops the kubernetes
// plugin's informers, whose open watches would otherwise keep the API
// server busy.
func startCoreDNS(t *testing.T, corefile string) string {
	t.Helper()
	awaitInformersGone(t)
	s := &server{t: t}
	s.start(corefile)
	return s.dns
}

// awaitInformersGone waits, for up to 10 s, until no client-go reflector of
// an earlier in-process CoreDNS still runs. The kubernetes plugin's setup
// replaces klog's global logger, which those reflectors read as they wind
// down after their CoreDNS stopped: a race the detector reports, in klog,
// not in llq. Past the wait the test goes on, as before.
func awaitInformersGone(t *testing.T) {
	t.Helper()
	buf := make([]byte, 8<<20)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if n := runtime.Stack(buf, true); n < len(buf) && !bytes.Contains(buf[:n], []byte("tools/cache.(*Reflector)")) {
			return
		}
	}
	t.Log("informers of an earlier CoreDNS still run; starting anyway")
}

// addKubeconfig puts a kubeconfig line into the Corefile's kubernetes
// block.
func addKubeconfig(t *testing.T, corefile, kubeconfig string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^(\s*)kubernetes (.*)\{$`)
	if !re.MatchString(corefile) {
		t.Fatalf("no kubernetes block in\n%s", corefile)
	}
	return re.ReplaceAllString(corefile, "${0}\n${1}    kubeconfig "+kubeconfig+" "+kubeContext)
}

// aRecords is the rrSet of name's A records for the addresses.
func aRecords(t *testing.T, name string, ips ...string) []string {
	t.Helper()
	var lines []string
	for _, ip := range ips {
		lines = append(lines, name+" IN A "+ip)
	}
	return rrSetOf(t, lines...)
}

// srvTargets lists the target:port of sub's SRV answers, sorted. (The
// weights depend on how many there are, so the records themselves change
// with every endpoint added or removed.)
func srvTargets(sub *client.Subscription) []string {
	var out []string
	for _, rr := range sub.Answers() {
		if srv, ok := rr.(*dns.SRV); ok {
			out = append(out, fmt.Sprintf("%s:%d", strings.ToLower(srv.Target), srv.Port))
		}
	}
	slices.Sort(out)
	return out
}

func convergeSRV(t *testing.T, sub *client.Subscription, want ...string) {
	t.Helper()
	slices.Sort(want)
	eventually(t, fmt.Sprintf("%s SRV to converge on %q", sub.Question().Name, want), func() bool {
		return slices.Equal(srvTargets(sub), want)
	})
}

// changes drains sub's events and returns what they added and removed.
func changes(sub *client.Subscription) (added, removed []string) {
	var a, r []dns.RR
	for _, ev := range drain(sub) {
		a = append(a, ev.Added...)
		r = append(r, ev.Removed...)
	}
	return rrSet(a), rrSet(r)
}

func expectChanges(t *testing.T, sub *client.Subscription, added, removed []string) {
	t.Helper()
	gotA, gotR := changes(sub)
	if !slices.Equal(gotA, added) || !slices.Equal(gotR, removed) {
		t.Errorf("%s: events added %q removed %q; want added %q removed %q", sub.Question().Name, gotA, gotR, added, removed)
	}
}

// ---- the tests ----

// TestKubernetes starts one control plane for its subtests.
func TestKubernetes(t *testing.T) {
	cp := startControlPlane(t)
	t.Run("Events", func(t *testing.T) { testKubernetesEvents(t, cp) })
	t.Run("Deployment", func(t *testing.T) { testKubernetesDeployment(t, cp) })
	t.Run("Precise", func(t *testing.T) { testKubernetesPrecise(t, cp) })
}

// testKubernetesEvents: changes to a headless Service's endpoints reach LLQ
// subscribers of its A and SRV records through the kubernetes trigger,
// with the poll off.
func testKubernetesEvents(t *testing.T, cp *controlPlane) {
	ns := cp.namespace(t)
	const svc, port = "web", "http"
	cp.headless(t, ns, svc, port, 80, corev1.ProtocolTCP)
	set := func(ips ...string) {
		t.Helper()
		var eps []endpoint
		for _, ip := range ips {
			eps = append(eps, endpoint{ip: ip})
		}
		cp.setEndpoints(t, ns, svc, port, 80, corev1.ProtocolTCP, eps...)
	}

	llqPort := freePort(t)
	startCoreDNS(t, fmt.Sprintf(`cluster.local:0 {
    bind 127.0.0.1
    llq {
        listen 127.0.0.1:%d
        lease 2 60
        retransmit 200ms 3
        poll 0
    }
    cache 30
    kubernetes cluster.local {
        kubeconfig %s %s
    }
}
`, llqPort, cp.kubeconfig, kubeContext))

	name := svc + "." + ns + ".svc.cluster.local."
	c := dial(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), llqPort), client.Options{})
	a := subscribe(t, c, name, dns.TypeA)
	srv := subscribe(t, c, "_"+port+"._tcp."+name, dns.TypeSRV)
	if len(a.Answers()) != 0 || len(srv.Answers()) != 0 {
		t.Fatalf("answers before any endpoint: %v %v", a.Answers(), srv.Answers())
	}
	marks := counter(t, "trigger_changes_total", "trigger", "kubernetes")
	target := func(ip string) string {
		return strings.ReplaceAll(ip, ".", "-") + "." + name + ":80"
	}

	// The first endpoint, then a second: ADD events.
	set("10.1.0.1")
	converge(t, a, aRecords(t, name, "10.1.0.1"))
	convergeSRV(t, srv, target("10.1.0.1"))
	expectChanges(t, a, aRecords(t, name, "10.1.0.1"), nil)
	set("10.1.0.1", "10.1.0.2")
	converge(t, a, aRecords(t, name, "10.1.0.1", "10.1.0.2"))
	convergeSRV(t, srv, target("10.1.0.1"), target("10.1.0.2"))
	expectChanges(t, a, aRecords(t, name, "10.1.0.2"), nil)

	// Scale down: a REMOVE event.
	set("10.1.0.2")
	converge(t, a, aRecords(t, name, "10.1.0.2"))
	convergeSRV(t, srv, target("10.1.0.2"))
	expectChanges(t, a, nil, aRecords(t, name, "10.1.0.1"))

	// Two changes in one second: the kubernetes plugin records the second
	// of the latest change, so the second change leaves that time as it
	// was. llq sees it by the informer's resource version; were that not
	// readable, its second look after the second has passed would.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second + 20*time.Millisecond)))
	start := time.Now()
	set("10.1.0.2", "10.1.0.3")
	converge(t, a, aRecords(t, name, "10.1.0.2", "10.1.0.3"))
	set("10.1.0.2", "10.1.0.3", "10.1.0.4")
	sameSecond := time.Now().Unix() == start.Unix()
	eventuallyWithin(t, 3*time.Second, "the second change of a second", func() bool {
		return slices.Equal(rrSet(a.Answers()), aRecords(t, name, "10.1.0.2", "10.1.0.3", "10.1.0.4"))
	})
	t.Logf("second change in the same second as the first: %v; seen %v after the first", sameSecond, time.Since(start).Round(time.Millisecond))
	convergeSRV(t, srv, target("10.1.0.2"), target("10.1.0.3"), target("10.1.0.4"))
	expectChanges(t, a, aRecords(t, name, "10.1.0.3", "10.1.0.4"), nil)

	// Delete the EndpointSlice, then the Service: everything is removed.
	ctx := context.Background()
	if err := cp.client.DiscoveryV1().EndpointSlices(ns).Delete(ctx, svc+"-llq", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	converge(t, a, nil)
	convergeSRV(t, srv)
	expectChanges(t, a, nil, aRecords(t, name, "10.1.0.2", "10.1.0.3", "10.1.0.4"))
	if err := cp.client.CoreV1().Services(ns).Delete(ctx, svc, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The Service coming back with an endpoint is an ADD again.
	cp.headless(t, ns, svc, port, 80, corev1.ProtocolTCP)
	set("10.1.0.9")
	converge(t, a, aRecords(t, name, "10.1.0.9"))
	convergeSRV(t, srv, target("10.1.0.9"))

	if marks() < 1 {
		t.Error("trigger_changes_total{trigger=kubernetes} did not grow")
	}
}

// llqManifest is deploy/kubernetes/llq.yaml with its placeholders filled in.
func llqManifest(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "kubernetes", "llq.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.NewReplacer(
		"CLUSTER_DOMAIN", "cluster.local",
		"REVERSE_CIDRS", "in-addr.arpa ip6.arpa",
		"UPSTREAMNAMESERVER", "/etc/resolv.conf",
		"IMAGE", "llq-coredns:test",
	).Replace(string(b))
}

// manifestObjects decodes a multi-document YAML manifest.
func manifestObjects(t *testing.T, manifest string) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifest), 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("deploy/kubernetes/llq.yaml: %v", err)
		}
		if len(m) > 0 {
			out = append(out, &unstructured.Unstructured{Object: m})
		}
	}
}

// testKubernetesDeployment checks deploy/kubernetes/llq.yaml against the
// API server (a strict server-side dry run of every object, then a real
// create, with no warnings), then runs CoreDNS with the ConfigMap's
// Corefile as the llq-0 replica, authenticated as the manifest's service
// account, and discovers its LLQ listener the way a client in the cluster
// would, then uses it.
func testKubernetesDeployment(t *testing.T, cp *controlPlane) {
	ctx := context.Background()
	objs := manifestObjects(t, llqManifest(t))
	groups, err := restmapper.GetAPIGroupResources(cp.client.Discovery())
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	kinds := map[string]int{}
	var corefile string
	cp.takeWarnings()
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		kinds[gvk.Kind]++
		what := gvk.Kind + " " + obj.GetName()
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		var api dynamic.ResourceInterface = cp.dynamic.Resource(mapping.Resource)
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			if obj.GetNamespace() == "" {
				t.Errorf("%s has no namespace", what)
			}
			api = cp.dynamic.Resource(mapping.Resource).Namespace(obj.GetNamespace())
		}
		if _, err := api.Create(ctx, obj, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"}); err != nil {
			t.Fatalf("dry run of %s: %v", what, err)
		}
		if w := cp.takeWarnings(); len(w) > 0 {
			t.Errorf("dry run of %s: warnings %q", what, w)
		}
		// Create it for real: the namespace for the objects in it, the
		// service account and its role for CoreDNS below.
		if _, err := api.Create(ctx, obj, metav1.CreateOptions{FieldValidation: "Strict"}); err != nil {
			t.Fatalf("creating %s: %v", what, err)
		}
		cp.takeWarnings() // the same as the dry run's
		if gvk.Kind == "ConfigMap" {
			corefile, _, _ = unstructured.NestedString(obj.Object, "data", "Corefile")
		}
	}
	want := map[string]int{"Namespace": 1, "ServiceAccount": 1, "ClusterRole": 1, "ClusterRoleBinding": 1, "ConfigMap": 1, "StatefulSet": 1, "Service": 2}
	for k, n := range want {
		if kinds[k] != n {
			t.Errorf("the manifest has %d %s, want %d", kinds[k], k, n)
		}
	}
	if corefile == "" {
		t.Fatal("no Corefile in the manifest's ConfigMap")
	}

	// What the StatefulSet and the EndpointSlice controller would make of
	// replica llq-0: the pod's address under its hostname in the headless
	// Service llq. The API server refuses loopback addresses in an
	// EndpointSlice, and there is no pod network here: the "pod" address
	// stands in for the one the client would use, and the client below
	// talks to the loopback listener on the same port.
	const ns, pod, podIP = "llq", "llq-0", "10.9.0.10"
	cp.setEndpoints(t, ns, "llq", "llq", 5352, corev1.ProtocolUDP, endpoint{ip: podIP, hostname: pod})
	t.Setenv("POD_NAME", pod)
	t.Setenv("POD_NAMESPACE", ns)

	// CoreDNS authenticates as the manifest's service account, with nothing
	// but what its ClusterRole grants.
	tr, err := cp.client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "llq", &authv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	saConfig := filepath.Join(cp.dir, "kubeconfig-llq")
	cp.writeKubeconfig(t, saConfig, tr.Status.Token)

	// Loopback ports instead of the pod's fixed ones.
	llqPort := freePort(t)
	corefile = addKubeconfig(t, corefile, saConfig)
	for _, r := range [][2]string{
		{".:53 {", ".:0 {\n    bind 127.0.0.1"},
		{"listen :5352", fmt.Sprintf("listen 127.0.0.1:%d", llqPort)},
		{"health {", fmt.Sprintf("health 127.0.0.1:%d {", freePort(t))},
		{"lameduck 5s", "lameduck 100ms"},
		{"\n    ready\n", "\n    ready 127.0.0.1:0\n"},
		{"prometheus :9153", "prometheus 127.0.0.1:0"},
		{"state /var/lib/llq/state", "state " + filepath.Join(t.TempDir(), "state")},
	} {
		if !strings.Contains(corefile, r[0]) {
			t.Fatalf("the manifest's Corefile has no %q:\n%s", r[0], corefile)
		}
		corefile = strings.Replace(corefile, r[0], r[1], 1)
	}
	resolver := startCoreDNS(t, corefile)

	// A service to watch, in a namespace of its own.
	web := cp.namespace(t)
	cp.headless(t, web, "web", "http", 80, corev1.ProtocolTCP)
	cp.setEndpoints(t, web, "web", "http", 80, corev1.ProtocolTCP, endpoint{ip: "10.3.0.1"})
	name := "web." + web + ".svc.cluster.local."

	// Discovery through CoreDNS: SOA, then the SRV naming this replica, then
	// its address from the headless Service.
	m := new(dns.Msg)
	m.SetQuestion("_dns-llq._udp.cluster.local.", dns.TypeSRV)
	r, err := dns.Exchange(m, resolver)
	if err != nil {
		t.Fatal(err)
	}
	wantTarget := pod + ".llq." + ns + ".svc.cluster.local."
	if len(r.Answer) != 1 || r.Answer[0].(*dns.SRV).Target != wantTarget || r.Answer[0].(*dns.SRV).Port != llqPort {
		t.Fatalf("_dns-llq._udp.cluster.local SRV: want %s port %d, got\n%v", wantTarget, llqPort, r)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	server, zone, err := client.Discover(dctx, resolver, name)
	if err != nil {
		t.Fatalf("discovering the LLQ server for %s: %v", name, err)
	}
	if want := netip.AddrPortFrom(netip.MustParseAddr(podIP), llqPort); server != want || zone != "cluster.local." {
		t.Fatalf("discovered %s in zone %s, want %s in cluster.local.", server, zone, want)
	}

	c := dial(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), llqPort), client.Options{})
	sub := subscribe(t, c, name, dns.TypeA)
	converge(t, sub, aRecords(t, name, "10.3.0.1"))
	// The set-up may have raced CoreDNS's cache and learnt of 10.3.0.1 by an
	// event; only what comes after it matters here.
	drain(sub)
	cp.setEndpoints(t, web, "web", "http", 80, corev1.ProtocolTCP, endpoint{ip: "10.3.0.1"}, endpoint{ip: "10.3.0.2"})
	converge(t, sub, aRecords(t, name, "10.3.0.1", "10.3.0.2"))
	expectChanges(t, sub, aRecords(t, name, "10.3.0.2"), nil)
}

// TestKubernetesTriggerLatency measures the kubernetes trigger's latency:
// from an EndpointSlice Update call returning (the change committed in the
// API server) to the event packet reaching the client's socket, in its
// OnPacket hook. It is a measurement, not a check, so it only runs with
// LLQ_TRIGGER_LATENCY=1 (see bench/trigger-latency.md); LLQ_TRIGGER_LATENCY_N
// sets the number of changes (default 100).
func TestKubernetesTriggerLatency(t *testing.T) {
	if os.Getenv("LLQ_TRIGGER_LATENCY") != "1" {
		t.Skip("a measurement: set LLQ_TRIGGER_LATENCY=1 to run it")
	}
	n := 100
	if s := os.Getenv("LLQ_TRIGGER_LATENCY_N"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			t.Fatalf("LLQ_TRIGGER_LATENCY_N=%q", s)
		}
	}
	cp := startControlPlane(t)
	ns := cp.namespace(t)
	const svc, port = "web", "http"
	cp.headless(t, ns, svc, port, 80, corev1.ProtocolTCP)
	cp.setEndpoints(t, ns, svc, port, 80, corev1.ProtocolTCP, endpoint{ip: "10.1.0.1"})

	llqPort := freePort(t)
	startCoreDNS(t, fmt.Sprintf(`cluster.local:0 {
    bind 127.0.0.1
    llq {
        listen 127.0.0.1:%d
        poll 0
    }
    kubernetes cluster.local {
        kubeconfig %s %s
    }
}
`, llqPort, cp.kubeconfig, kubeContext))

	// Arrival times of event packets, stamped before any parsing beyond
	// telling an event from the rest.
	events := make(chan time.Time, 16)
	hook := func(dir client.Direction, _ netip.AddrPort, b []byte) {
		if dir != client.Received {
			return
		}
		now := time.Now()
		m := new(dns.Msg)
		if m.Unpack(b) != nil {
			return
		}
		if opts := wire.Options(m); len(opts) != 1 || opts[0].Opcode != wire.OpEvent {
			return
		}
		select {
		case events <- now:
		default:
		}
	}
	name := svc + "." + ns + ".svc.cluster.local."
	c := dial(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), llqPort), client.Options{OnPacket: hook})
	a := subscribe(t, c, name, dns.TypeA)
	converge(t, a, aRecords(t, name, "10.1.0.1"))

	api := cp.client.DiscoveryV1().EndpointSlices(ns)
	ctx := context.Background()
	slice, err := api.Get(ctx, svc+"-llq", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := true
	var issued, returned []time.Duration
	lost := 0
	for i := range n {
		// A random pause, so that changes land at random points of the
		// second (the plugin's Modified() has 1 s resolution).
		var r [2]byte
		rand.Read(r[:])
		time.Sleep(time.Duration(int(r[0])<<8|int(r[1])) * 1200 * time.Millisecond / 65536)
		drainTimes(events)
		// Alternately two endpoints and one.
		eps := []discoveryv1.Endpoint{{Addresses: []string{"10.1.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}}
		want := []string{"10.1.0.1"}
		if i%2 == 0 {
			eps = append(eps, discoveryv1.Endpoint{Addresses: []string{"10.1.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
			want = append(want, "10.1.0.2")
		}
		slice.Endpoints = eps
		t0 := time.Now()
		slice, err = api.Update(ctx, slice, metav1.UpdateOptions{})
		t1 := time.Now()
		if err != nil {
			t.Fatal(err)
		}
		select {
		case at := <-events:
			issued = append(issued, at.Sub(t0))
			returned = append(returned, at.Sub(t1))
		case <-time.After(5 * time.Second):
			lost++
		}
		// The client's view must follow, before the next change.
		converge(t, a, aRecords(t, name, want...))
	}
	t.Logf("kubernetes trigger, %d changes, %d lost (no event within 5 s)", n, lost)
	for _, s := range []struct {
		from string
		lat  []time.Duration
	}{{"issued", issued}, {"returned", returned}} {
		slices.Sort(s.lat)
		var sum time.Duration
		for _, d := range s.lat {
			sum += d
		}
		if len(s.lat) == 0 {
			continue
		}
		// The quantiles as bench/trigger-latency computes them.
		q := func(p float64) time.Duration { return s.lat[min(len(s.lat)-1, int(p*float64(len(s.lat))))] }
		t.Logf("from %-8s min %v p50 %v p90 %v p99 %v max %v mean %v", s.from,
			q(0).Round(10*time.Microsecond), q(0.5).Round(10*time.Microsecond), q(0.9).Round(10*time.Microsecond),
			q(0.99).Round(10*time.Microsecond), q(1).Round(10*time.Microsecond), (sum / time.Duration(len(s.lat))).Round(10*time.Microsecond))
	}
	if lost > 0 {
		t.Errorf("%d of %d changes produced no event within 5 s", lost, n)
	}
}

func drainTimes(ch chan time.Time) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}
