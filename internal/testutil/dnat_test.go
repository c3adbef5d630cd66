package testutil

import (
	"testing"
	"time"
)

// TestDNAT checks the topology itself: client and attacker reach the pod
// through the service address, the pod sees their own addresses, and the
// DNAT counters count the connections.
func TestDNAT(t *testing.T) {
	d := NewDNAT(t)
	for _, tc := range []struct {
		name   string
		ns     *NetNS
		src    string
		family string
	}{
		{"client v4", d.Client, "10.99.0.2", "ip"},
		{"client v6", d.Client, "fd00:99::2", "ip6"},
		{"attacker v4", d.Attacker, AttackerV4, "ip"},
		{"attacker v6", d.Attacker, AttackerV6, "ip6"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := d.DNATPackets(t, tc.family)
			if err := d.Connect(tc.ns, tc.src, 2*time.Second); err != nil {
				t.Fatal(err)
			}
			if n := d.PodAccepted(tc.src); n != 1 {
				t.Errorf("the pod accepted %d connections from %s, want 1", n, tc.src)
			}
			if n := d.DNATPackets(t, tc.family) - before; n != 1 {
				t.Errorf("DNAT counter of %s moved by %d, want 1", tc.family, n)
			}
		})
	}
}
