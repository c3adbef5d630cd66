package bpf_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"sort"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/xdpgate/xdpgate/internal/decision"
	"github.com/xdpgate/xdpgate/internal/loader"
)

// benchSizes hold 1M exact bans of either family.
var benchSizes = loader.Sizes{V4Exact: 1 << 20, V6Exact: 1 << 20, V4Ranges: 1 << 16, V6Ranges: 1 << 16, Allow: 4096}

func randV4(r *rand.Rand) netip.Addr {
	for {
		var b [4]byte
		v := r.Uint32()
		b[0], b[1], b[2], b[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
		a := netip.AddrFrom4(b)
		if a.IsGlobalUnicast() && !a.IsPrivate() {
			return a
		}
	}
}

func randV6(r *rand.Rand) netip.Addr {
	var b [16]byte
	hi, lo := r.Uint64(), r.Uint64()
	for i := 0; i < 8; i++ {
		b[i], b[8+i] = byte(hi>>(56-8*i)), byte(lo>>(56-8*i))
	}
	b[0] = 0x20 | b[0]&0x0f // 2000::/4, global unicast
	return netip.AddrFrom16(b)
}

// banSet is n exact bans plus ranges of one family, with a way to draw
// addresses that hit and that miss.
type banSet struct {
	exact  []decision.Entry
	ranges []decision.Entry
}

func makeBans(r *rand.Rand, v6 bool, n, nRanges int) banSet {
	var s banSet
	seen := map[netip.Addr]bool{}
	for len(s.exact) < n {
		a := randV4(r)
		if v6 {
			a = randV6(r)
		}
		if seen[a] {
			continue
		}
		seen[a] = true
		s.exact = append(s.exact, decision.Entry{Prefix: netip.PrefixFrom(a, a.BitLen()), Origin: "CAPI", Expiry: benchExpiry()})
	}
	for len(s.ranges) < nRanges {
		var p netip.Prefix
		if v6 {
			p = netip.PrefixFrom(randV6(r), 32+r.IntN(33)).Masked() // /32../64
		} else {
			p = netip.PrefixFrom(randV4(r), 16+r.IntN(15)).Masked() // /16../30
		}
		s.ranges = append(s.ranges, decision.Entry{Prefix: p, Origin: "crowdsec", Expiry: time.Now().Add(4 * time.Hour)})
	}
	return s
}

func (s banSet) banned(a netip.Addr) bool {
	for _, e := range s.ranges {
		if e.Prefix.Contains(a) {
			return true
		}
	}
	return false
}

// frames returns k frames from sources that hit or miss the set.
func (s banSet) frames(r *rand.Rand, v6, hit bool, k int) [][]byte {
	var out [][]byte
	for len(out) < k {
		var a netip.Addr
		if hit {
			a = s.exact[r.IntN(len(s.exact))].Prefix.Addr()
		} else {
			a = randV4(r)
			if v6 {
				a = randV6(r)
			}
			if s.banned(a) {
				continue
			}
		}
		out = append(out, pkt(a.String()))
	}
	return out
}

// runFrames returns the program's mean cost per packet over frames.
func runFrames(b *testing.B, e *env, frames [][]byte) float64 {
	var total time.Duration
	done := 0
	for i := 0; done < b.N; i++ {
		n := min(b.N-done, 20000)
		_, d, err := e.dp.Program.Benchmark(frames[i%len(frames)], n, nil)
		if err != nil {
			b.Fatal(err)
		}
		total += d * time.Duration(n)
		done += n
	}
	return float64(total.Nanoseconds()) / float64(b.N)
}

// BenchmarkDataplane measures the cost per packet of the parse-only
// baseline and of the full program on miss and hit, for both families and
// growing ban lists, then prints them as one table with the ratios the
// design goals are stated in.
func BenchmarkDataplane(b *testing.B) {
	sizes := []int{1_000, 100_000, 1_000_000}
	if testing.Short() {
		sizes = []int{1_000, 10_000}
	}
	results := map[string]float64{}
	fill := map[string]time.Duration{}
	r := rand.New(rand.NewPCG(1, 2))

	base := newEnv(b, loader.Options{ParseOnly: true, Sizes: benchSizes})
	for _, fam := range []string{"v4", "v6"} {
		v6 := fam == "v6"
		set := makeBans(r, v6, 1, 0)
		frames := set.frames(r, v6, false, 64)
		b.Run(fmt.Sprintf("baseline/%s", fam), func(b *testing.B) {
			results["baseline/"+fam] = runFrames(b, base, frames)
			b.ReportMetric(results["baseline/"+fam], "ns/pkt")
		})
	}

	for _, fam := range []string{"v4", "v6"} {
		v6 := fam == "v6"
		for _, n := range sizes {
			e := newEnv(b, loader.Options{Sizes: benchSizes})
			e.allow(b, "10.0.0.0/8", "192.168.0.0/16", "fd00::/8")
			set := makeBans(r, v6, n, 5000)
			start := time.Now()
			if err := e.m.Apply(context.Background(), set.exact, nil); err != nil {
				b.Fatal(err)
			}
			fill[fmt.Sprintf("%s/%d", fam, n)] = time.Since(start)
			if err := e.m.Apply(context.Background(), set.ranges, nil); err != nil {
				b.Fatal(err)
			}
			for _, hit := range []bool{false, true} {
				kind := "miss"
				if hit {
					kind = "hit"
				}
				frames := set.frames(r, v6, hit, 256)
				name := fmt.Sprintf("%s/%s/%d", fam, kind, n)
				b.Run(name, func(b *testing.B) {
					results[name] = runFrames(b, e, frames)
					b.ReportMetric(results[name], "ns/pkt")
				})
			}
			e.dp.Close()
		}
	}
	printTable(results, fill, sizes)
}

func printTable(res map[string]float64, fill map[string]time.Duration, sizes []int) {
	if len(res) == 0 {
		return
	}
	var sb strings.Builder
	w := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(&sb, "\nxdpgate per-packet cost, BPF_PROG_TEST_RUN, 64-byte frames (%s)\n", time.Now().Format("2006-01-02"))
	fmt.Fprintln(w, "family\tpath\tbans\tns/pkt\t× baseline\t× at 1k\t")
	keys := make([]string, 0, len(res))
	for k := range res {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, fam := range []string{"v4", "v6"} {
		bl := res["baseline/"+fam]
		fmt.Fprintf(w, "%s\tparse-only baseline\t-\t%.1f\t1.00\t-\t\n", fam, bl)
		for _, kind := range []string{"miss", "hit"} {
			first := res[fmt.Sprintf("%s/%s/%d", fam, kind, sizes[0])]
			for _, n := range sizes {
				v, ok := res[fmt.Sprintf("%s/%s/%d", fam, kind, n)]
				if !ok {
					continue
				}
				fmt.Fprintf(w, "%s\t%s\t%d+5k ranges\t%.1f\t%.2f\t%.2f\t\n", fam, kind, n, v, v/bl, v/first)
			}
		}
	}
	w.Flush()
	fmt.Fprintln(&sb, "\nfill time (exact bans, batch updates):")
	for _, fam := range []string{"v4", "v6"} {
		for _, n := range sizes {
			if d, ok := fill[fmt.Sprintf("%s/%d", fam, n)]; ok {
				fmt.Fprintf(&sb, "  %s %8d bans: %v\n", fam, n, d.Round(time.Millisecond))
			}
		}
	}
	fmt.Fprint(os.Stdout, sb.String())
}

func benchExpiry() time.Time {
	if os.Getenv("XDPG_NOEXP") != "" {
		return time.Time{}
	}
	return time.Now().Add(4 * time.Hour)
}
