package bpf_test

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/xdpgate/xdpgate/internal/decision"
	"github.com/xdpgate/xdpgate/internal/frame"
	"github.com/xdpgate/xdpgate/internal/loader"
)

func randPrefix(r *rand.Rand, v6 bool) netip.Prefix {
	if v6 {
		return netip.PrefixFrom(randV6(r), r.IntN(129)).Masked()
	}
	return netip.PrefixFrom(randV4(r), r.IntN(33)).Masked()
}

// randInside returns a random address inside p.
func randInside(r *rand.Rand, p netip.Prefix) netip.Addr {
	a := p.Addr().AsSlice()
	for i := p.Bits(); i < len(a)*8; i++ {
		if r.IntN(2) == 1 {
			a[i/8] |= 0x80 >> (i % 8)
		}
	}
	out, _ := netip.AddrFromSlice(a)
	return out
}

// TestProperty checks the program against the reference model on random
// ban sets, allowlists and packets: prefixes of every length in both
// families, expired and live bans, nested ranges, and frames with tags,
// options, fragments, mapped addresses and truncation.
func TestProperty(t *testing.T) {
	const rounds, perRound = 200, 50
	e := newEnv(t, loader.Options{})
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	var prev []netip.Prefix
	cases, drops := 0, 0
	for round := 0; round < rounds; round++ {
		// Nest some prefixes inside others by deriving them from a few
		// roots, and scatter the rest.
		var m model
		seen := map[netip.Prefix]bool{}
		now := time.Now()
		for len(m.bans) < 1+r.IntN(30) {
			v6 := r.IntN(2) == 1
			p := randPrefix(r, v6)
			if len(m.bans) > 0 && r.IntN(2) == 0 {
				root := m.bans[r.IntN(len(m.bans))].Prefix
				bits := root.Bits() + r.IntN(root.Addr().BitLen()-root.Bits()+1)
				p = netip.PrefixFrom(randInside(r, root), bits).Masked()
			}
			if seen[p] {
				continue
			}
			seen[p] = true
			ent := decision.Entry{Prefix: p, Origin: []string{"crowdsec", "cscli", "CAPI"}[r.IntN(3)]}
			switch r.IntN(4) {
			case 0: // no expiry
			case 1:
				ent.Expiry = now.Add(-time.Duration(1+r.IntN(3600)) * time.Second)
			default:
				ent.Expiry = now.Add(time.Duration(60+r.IntN(3600)) * time.Second)
			}
			m.bans = append(m.bans, ent)
		}
		for range r.IntN(4) {
			if r.IntN(2) == 0 {
				root := m.bans[r.IntN(len(m.bans))].Prefix
				bits := root.Bits() + r.IntN(root.Addr().BitLen()-root.Bits()+1)
				m.allow = append(m.allow, netip.PrefixFrom(randInside(r, root), bits).Masked())
			} else {
				m.allow = append(m.allow, randPrefix(r, r.IntN(2) == 1))
			}
		}
		if err := e.m.Apply(context.Background(), m.bans, prev); err != nil {
			t.Fatal(err)
		}
		// Deletes ran after upserts: put back whatever this round reuses.
		if err := e.m.Apply(context.Background(), m.bans, nil); err != nil {
			t.Fatal(err)
		}
		if err := e.m.SetAllowlist(context.Background(), m.allow); err != nil {
			t.Fatal(err)
		}
		prev = prev[:0]
		for _, b := range m.bans {
			prev = append(prev, b.Prefix)
		}

		for range perRound {
			var src netip.Addr
			switch r.IntN(4) {
			case 0:
				src = randInside(r, m.bans[r.IntN(len(m.bans))].Prefix)
			case 1:
				if len(m.allow) > 0 {
					src = randInside(r, m.allow[r.IntN(len(m.allow))])
					break
				}
				fallthrough
			case 2:
				src = randV4(r)
			default:
				src = randV6(r)
			}
			spec := frame.Spec{Src: src, Dst: netip.MustParseAddr("192.0.2.1"), Pad: r.IntN(2) == 0}
			if src.Is6() {
				spec.Dst = netip.MustParseAddr("2001:db8::1")
			}
			if src.Is4() && r.IntN(8) == 0 {
				spec.Src = netip.AddrFrom16(src.As16()) // ::ffff:a.b.c.d in an IPv6 header
				spec.Dst = netip.MustParseAddr("2001:db8::1")
				spec.EtherType = frame.EtherTypeIPv6
			}
			switch r.IntN(6) {
			case 0:
				spec.Tags = []frame.Tag{frame.Tag8021Q(uint16(r.IntN(4096)))}
			case 1:
				spec.Tags = []frame.Tag{frame.Tag8021AD(uint16(r.IntN(4096))), frame.Tag8021Q(uint16(r.IntN(4096)))}
			}
			if spec.EtherType == 0 && src.Is4() {
				spec.OptionWords = r.IntN(11)
				spec.Fragment = r.IntN(4) == 0
			}
			b := frame.Build(spec)
			if r.IntN(10) == 0 {
				b = b[:14+r.IntN(len(b)-13)]
			}
			want := m.judge(b, time.Now())
			got := e.mustRun(t, b)
			if got != want {
				t.Fatalf("round %d: source %v (frame %d bytes): program says %v, model says %v\nbans: %v\nallow: %v", round, src, len(b), got, want, m.bans, m.allow)
			}
			if got == vDrop {
				drops++
			}
			cases++
		}
	}
	t.Logf("%d cases, %d drops, all agree with the model", cases, drops)
	if drops < cases/10 {
		t.Errorf("only %d of %d cases dropped: the generator does not exercise bans", drops, cases)
	}
}

// FuzzProgram feeds arbitrary frames through the program and checks each
// verdict against the model, over a fixed set of bans.
func FuzzProgram(f *testing.F) {
	e := newEnv(f, loader.Options{})
	m := model{
		bans: []decision.Entry{
			ban("203.0.113.7/32"), ban("198.51.100.0/24"), ban("10.0.0.0/8"),
			ban("2001:db8:bad::1/128"), ban("2001:db8:dead::/48"),
			{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Origin: "cscli", Expiry: time.Now().Add(-time.Hour)},
		},
		allow: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")},
	}
	if err := e.m.Apply(context.Background(), m.bans, nil); err != nil {
		f.Fatal(err)
	}
	if err := e.m.SetAllowlist(context.Background(), m.allow); err != nil {
		f.Fatal(err)
	}
	for _, b := range [][]byte{
		pkt("203.0.113.7"), pkt("10.1.2.3"), pkt("2001:db8:dead::5"),
		pkt("198.51.100.9", tags(frame.Tag8021AD(1), frame.Tag8021Q(2)), options(4)),
		pkt("::ffff:203.0.113.7", ethertype(frame.EtherTypeIPv6)),
		pkt("192.0.2.1", fragment), pkt("1.2.3.4", ethertype(frame.EtherTypeARP)),
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 14 || len(b) > 1500 {
			t.Skip("BPF_PROG_TEST_RUN takes Ethernet frames of 14 to 1500 bytes here")
		}
		want := m.judge(b, time.Now())
		if got := e.mustRun(t, b); got != want {
			t.Fatalf("frame %x: program says %v, model says %v", b, got, want)
		}
	})
}
