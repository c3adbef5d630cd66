package edgesync

import (
	"fmt"
	"io"
)

// PrintReport writes a plan or the outcome of a sync for people: with
// DryRun, every item to add and delete and every rule change.
func PrintReport(w io.Writer, rep Report, listName string) {
	p := rep.Plan
	mode := "sync"
	if rep.DryRun {
		mode = "dry run, nothing written"
	}
	fmt.Fprintf(w, "edgesync %s\n", mode)
	if rep.ListCreated {
		fmt.Fprintf(w, "list %s: does not exist, created with kind ip\n", listName)
	}
	fmt.Fprintf(w, "list %s: %d items now, %d to add, %d to delete (%d stale, %d of them expired, %d duplicate, %d invalid), %d kept\n",
		listName, p.Current, len(p.Add), len(p.Delete), p.Stale, p.Expired, p.Duplicate, p.Invalid, p.Keep)
	if rep.DryRun {
		for _, it := range p.Delete {
			fmt.Fprintf(w, "  - %s\t%s\n", it.IP, it.Comment)
		}
		for _, it := range p.Add {
			fmt.Fprintf(w, "  + %s\t%s\n", it.IP, it.Comment)
		}
	} else {
		fmt.Fprintf(w, "applied: %d added, %d deleted in %d bulk operations (%d polls)\n",
			rep.Added, rep.Deleted, rep.Operations, rep.Polls)
	}
	for _, r := range rep.Rules {
		switch r.Action {
		case RuleUpdate:
			fmt.Fprintf(w, "zone %s: rule update\n  from %s\n  to   %s\n", r.Zone, r.From, r.To)
		case RuleUnchanged:
			fmt.Fprintf(w, "zone %s: rule unchanged: %s\n", r.Zone, r.To)
		default:
			fmt.Fprintf(w, "zone %s: rule %s: %s\n", r.Zone, r.Action, r.To)
		}
	}
}
