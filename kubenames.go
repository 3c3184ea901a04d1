package llq

import (
	"net/netip"
	"strings"

	"github.com/coredns/coredns/plugin/kubernetes/object"
	"github.com/miekg/dns"
)

// kubeKinds are the informers whose objects kubeNamer can name.
var kubeKinds = []string{"svc", "ep", "pod", "ns"}

// kubeNamer maps objects of the kubernetes plugin's caches to the names
// whose answers they feed, in the plugin's zones and k8s_external's:
//
//   - a Service: SERVICE.NAMESPACE.svc.ZONE and every name below it (ports'
//     SRV names, endpoint hostnames), SERVICE.NAMESPACE.EXTZONE and below,
//     the PTR names of its cluster and external IPs, the namespace name
//     NAMESPACE.svc.ZONE (whose NODATA depends on it), and the apex and
//     dns.ZONE, whose NS addresses are the DNS service's own;
//   - an EndpointSlice: the same names of its service, and the PTR names
//     of its addresses;
//   - a Pod: IP.NAMESPACE.pod.ZONE for each of its addresses, however the
//     address is written;
//   - a Namespace: everything below NAMESPACE.svc.ZONE, NAMESPACE.pod.ZONE
//     and NAMESPACE.EXTZONE.
//
// An ExternalName service's name is its own; the topics whose answers lead
// to a changed name through a CNAME are found by change.reaches.
type kubeNamer struct {
	zones []string // the kubernetes plugin's, lower case
	ext   []string // k8s_external's
}

// kubeNames is a set of names a change touches.
type kubeNames struct {
	under map[string]struct{} // these and every name below them
	exact map[string]struct{}
	pods  map[podKey]struct{}
	zones []string
}

type podKey struct {
	namespace string
	addr      netip.Addr
}

func (n kubeNamer) names(objs []kubeObject) *kubeNames {
	s := &kubeNames{under: make(map[string]struct{}), exact: make(map[string]struct{}), zones: n.zones}
	for _, o := range objs {
		switch o := o.(type) {
		case *object.Service:
			s.service(n, o.Name, o.Namespace)
			s.reverse(o.ClusterIPs...)
			s.reverse(o.ExternalIPs...)
		case *object.Endpoints:
			svc, ns, ok := strings.Cut(o.Index, ".")
			if ok && svc != "" {
				s.service(n, svc, ns)
			}
			for _, ss := range o.Subsets {
				for _, a := range ss.Addresses {
					s.reverse(a.IP)
				}
			}
		case *object.Pod:
			for _, ip := range o.PodIPs {
				if a, err := netip.ParseAddr(ip); err == nil {
					if s.pods == nil {
						s.pods = make(map[podKey]struct{})
					}
					s.pods[podKey{o.Namespace, a.Unmap()}] = struct{}{}
				}
			}
		case *object.Namespace:
			for _, z := range n.zones {
				s.under[o.Name+".svc."+z] = struct{}{}
				s.under[o.Name+".pod."+z] = struct{}{}
			}
			for _, z := range n.ext {
				s.under[o.Name+"."+z] = struct{}{}
			}
		}
	}
	return s
}

func (s *kubeNames) service(n kubeNamer, name, ns string) {
	for _, z := range n.zones {
		s.under[name+"."+ns+".svc."+z] = struct{}{}
		s.exact[ns+".svc."+z] = struct{}{}
		s.exact[z] = struct{}{}
		s.under["dns."+z] = struct{}{}
	}
	for _, z := range n.ext {
		s.under[name+"."+ns+"."+z] = struct{}{}
		s.exact[z] = struct{}{}
		s.under["dns."+z] = struct{}{}
	}
}

func (s *kubeNames) reverse(ips ...string) {
	for _, ip := range ips {
		if r, err := dns.ReverseAddr(ip); err == nil {
			s.exact[r] = struct{}{}
		}
	}
}

// affects reports whether name (lower case) is one of the names.
func (s *kubeNames) affects(name string) bool {
	if _, ok := s.exact[name]; ok {
		return true
	}
	for n := name; ; {
		if _, ok := s.under[n]; ok {
			return true
		}
		i := strings.IndexByte(n, '.')
		if i < 0 || i == len(n)-1 {
			break
		}
		n = n[i+1:]
	}
	if len(s.pods) == 0 {
		return false
	}
	k, ok := podOf(s.zones, name)
	if !ok {
		return false
	}
	_, ok = s.pods[k]
	return ok
}

// podOf reads a pod name, IP.NAMESPACE.pod.ZONE, as the kubernetes plugin
// does: dashes stand for the dots of an IPv4 address (exactly three, none
// doubled), else for the colons of an IPv6 one.
func podOf(zones []string, name string) (podKey, bool) {
	z := longestZone(zones, name)
	if z == "" {
		return podKey{}, false
	}
	labels := dns.SplitDomainName(name[:len(name)-len(z)])
	if len(labels) != 3 || labels[2] != "pod" {
		return podKey{}, false
	}
	ip := labels[0]
	if strings.Count(ip, "-") == 3 && !strings.Contains(ip, "--") {
		ip = strings.ReplaceAll(ip, "-", ".")
	} else {
		ip = strings.ReplaceAll(ip, "-", ":")
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return podKey{}, false
	}
	return podKey{labels[1], a.Unmap()}, true
}
