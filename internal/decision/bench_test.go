package decision

import (
	"fmt"
	"testing"

	"github.com/crowdsecurity/crowdsec/pkg/models"
)

// benchDecisions builds n LAPI decisions shaped like a real startup set:
// mostly distinct IPv4 addresses with CAPI's fractional durations, some
// ranges, some IPv6, and a few values held by two decisions. The first
// decision's value is held by it alone.
func benchDecisions(n int) []*models.Decision {
	out := make([]*models.Decision, 0, n)
	origins := []string{"CAPI", "crowdsec", "cscli", "lists"}
	for i := range n {
		var scope, value string
		switch {
		case i%20 == 7:
			scope, value = "Range", fmt.Sprintf("10.%d.%d.0/24", i>>16&255, i>>8&255)
		case i%20 == 13:
			scope, value = "Ip", fmt.Sprintf("2001:db8:%x::%x", i>>16, i&0xffff)
		case i%50 == 49:
			scope, value = "Ip", fmt.Sprintf("100.%d.%d.%d", (i-1)>>16&255, (i-1)>>8&255, (i-1)&255) // same as i-1
		default:
			scope, value = "Ip", fmt.Sprintf("100.%d.%d.%d", i>>16&255, i>>8&255, i&255)
		}
		dur := fmt.Sprintf("%dh%dm%d.%09ds", 1+i%167, i%60, i%59, (i*7919)%1000000000)
		out = append(out, &models.Decision{
			ID:       int64(i + 1),
			Origin:   ptr(origins[i%len(origins)]),
			Scenario: ptr("crowdsecurity/http-probing"),
			Scope:    ptr(scope),
			Type:     ptr("ban"),
			Value:    ptr(value),
			Duration: ptr(dur),
		})
	}
	return out
}

func BenchmarkParse(b *testing.B) {
	raw := benchDecisions(100_000)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := Parse(raw[i%len(raw)], t0, defaultOpts); err != nil {
			b.Fatal(err)
		}
	}
}
