package nftfallback

import (
	"context"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// Ensure creates the tables, sets, counters, chains and rules that are
// missing, and repairs the ones that differ from the configuration (a hook
// removed, another priority, rules of an older version), in one
// transaction. Set elements are never touched, except those of a set that
// has to be recreated with other flags. It is idempotent: on tables in
// order it sends nothing. Apply, List and SetAllowlist call it when it has
// not succeeded yet.
func (b *Backend) Ensure(ctx context.Context) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err := b.ensure()
	return err
}

var policyAccept = nftables.ChainPolicyAccept

// ensure brings the tables in line and returns the families whose table
// it created. Their state is reset, unless the tables vanished under the
// backend (b.lost): the state then says what to write back.
func (b *Backend) ensure() ([]*family, error) {
	created, err := b.ensureTables()
	if err != nil {
		// Drop what was queued and not sent.
		b.redial()
	}
	return created, err
}

func (b *Backend) ensureTables() ([]*family, error) {
	b.ready = false
	changes := 0
	var created []*family
	setsChanged := false
	for _, f := range b.fams {
		n, fresh, sets, err := b.ensureFamily(f)
		if err != nil {
			return nil, err
		}
		changes += n
		setsChanged = setsChanged || sets
		if fresh {
			created = append(created, f)
		}
	}
	if b.cfg.DisableIPv6 {
		t := &nftables.Table{Name: b.cfg.Table6, Family: nftables.TableFamilyIPv6}
		ok, err := b.tableExists(t)
		if err != nil {
			return nil, err
		}
		if ok {
			b.log.Info("nftables: IPv6 disabled, removing the ip6 table", "table", t.Name)
			b.conn.DelTable(t)
			changes++
		}
	}
	if changes > 0 {
		if err := b.conn.Flush(); err != nil {
			return nil, fmt.Errorf("create nftables tables: %w", err)
		}
		b.stats.transactions.Add(1)
	}
	b.ready = true
	if !b.lost {
		for _, f := range created {
			f.reset()
		}
		// Tables created just now are empty: nothing to read back.
		if len(created) == len(b.fams) {
			b.loaded = true
		}
	}
	if setsChanged {
		b.loaded = false
	}
	return created, nil
}

func (b *Backend) tableExists(t *nftables.Table) (bool, error) {
	tables, err := b.conn.ListTablesOfFamily(t.Family)
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	return slices.ContainsFunc(tables, func(x *nftables.Table) bool { return x.Name == t.Name }), nil
}

func (f *family) sets() []*nftables.Set { return []*nftables.Set{f.allow, f.hosts, f.ranges} }

func (f *family) chain(hook string, prio int) *nftables.Chain {
	return &nftables.Chain{
		Name:     hook,
		Table:    f.table,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookRef(hookNums[hook]),
		Priority: nftables.ChainPriorityRef(nftables.ChainPriority(prio)),
		Policy:   &policyAccept,
	}
}

// ruleTags are the comments of a chain's rules, in order.
var ruleTags = []string{ruleTag + "allow", ruleTag + "hosts", ruleTag + "ranges"}

// rules are the rules of the chain at hook: accept the allowlist, then
// drop both ban sets through the hook's named counter.
func (f *family) rules(c *nftables.Chain, hook string) []*nftables.Rule {
	saddr := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}
	if f.v6 {
		saddr = &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 16}
	}
	lookup := func(s *nftables.Set) *expr.Lookup {
		return &expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID}
	}
	count := &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: counterName(hook)}
	rule := func(tag string, e ...expr.Any) *nftables.Rule {
		return &nftables.Rule{Table: f.table, Chain: c, Exprs: e,
			UserData: userdata.AppendString(nil, userdata.TypeComment, tag)}
	}
	return []*nftables.Rule{
		rule(ruleTags[0], saddr, lookup(f.allow), &expr.Verdict{Kind: expr.VerdictAccept}),
		rule(ruleTags[1], saddr, lookup(f.hosts), count, &expr.Verdict{Kind: expr.VerdictDrop}),
		rule(ruleTags[2], saddr, lookup(f.ranges), count, &expr.Verdict{Kind: expr.VerdictDrop}),
	}
}

func (b *Backend) addRules(f *family, c *nftables.Chain, hook string) {
	for _, r := range f.rules(c, hook) {
		b.conn.AddRule(r)
	}
}

func (b *Backend) counterObj(f *family, hook string) *nftables.NamedObj {
	return &nftables.NamedObj{Table: f.table, Name: counterName(hook), Type: nftables.ObjTypeCounter, Obj: &expr.Counter{}}
}

// ensureFamily queues what the family's table lacks and returns how many
// changes it queued, whether it creates the table, and whether it creates
// or recreates sets of an existing one.
func (b *Backend) ensureFamily(f *family) (changes int, created, setsChanged bool, err error) {
	ok, err := b.tableExists(f.table)
	if err != nil {
		return 0, false, false, err
	}
	if !ok {
		b.conn.AddTable(f.table)
		for _, s := range f.sets() {
			s.ID = 0
			if err := b.conn.AddSet(s, nil); err != nil {
				return 0, false, false, fmt.Errorf("add set %s: %w", s.Name, err)
			}
		}
		for _, h := range b.cfg.Hooks {
			b.conn.AddObj(b.counterObj(f, h))
			c := b.conn.AddChain(f.chain(h, b.cfg.Priority))
			b.addRules(f, c, h)
		}
		b.log.Info("nftables: creating table", "family", f.name(), "table", f.table.Name, "hooks", b.cfg.Hooks)
		return 1, true, false, nil
	}

	what := func(msg string, args ...any) {
		changes++
		b.log.Info("nftables: "+msg, append([]any{"family", f.name(), "table", f.table.Name}, args...)...)
	}

	// Sets: create the missing ones; recreate the ones with other flags
	// (their rules are rewritten below).
	have, err := b.conn.GetSets(f.table)
	if err != nil {
		return 0, false, false, fmt.Errorf("list sets of %s: %w", f.table.Name, err)
	}
	var missing, rebuild []*nftables.Set
	for _, s := range f.sets() {
		s.ID = 0
		i := slices.IndexFunc(have, func(x *nftables.Set) bool { return x.Name == s.Name })
		switch {
		case i < 0:
			missing = append(missing, s)
		case have[i].KeyType.Name != s.KeyType.Name || have[i].Interval != s.Interval || have[i].HasTimeout != s.HasTimeout:
			rebuild = append(rebuild, s)
		}
	}

	// Counters.
	objs, err := b.conn.GetNamedObjects(f.table)
	if err != nil {
		return 0, false, false, fmt.Errorf("list objects of %s: %w", f.table.Name, err)
	}
	for _, h := range b.cfg.Hooks {
		name := counterName(h)
		if !slices.ContainsFunc(objs, func(o nftables.Obj) bool {
			n, ok := o.(*nftables.NamedObj)
			return ok && n.Name == name && n.Type == nftables.ObjTypeCounter
		}) {
			b.conn.AddObj(b.counterObj(f, h))
			what("adding counter", "counter", name)
		}
	}

	// Chains.
	chains, err := b.conn.ListChainsOfTableFamily(f.table.Family)
	if err != nil {
		return 0, false, false, fmt.Errorf("list chains: %w", err)
	}
	type chainPlan struct {
		hook    string
		exists  bool
		replace bool // other hook, priority, type or policy
		rewrite bool // rules differ
	}
	var plans []chainPlan
	for _, h := range b.cfg.Hooks {
		want := f.chain(h, b.cfg.Priority)
		p := chainPlan{hook: h}
		if i := slices.IndexFunc(chains, func(c *nftables.Chain) bool { return c.Table.Name == f.table.Name && c.Name == h }); i >= 0 {
			c := chains[i]
			p.exists = true
			p.replace = c.Hooknum == nil || *c.Hooknum != *want.Hooknum || c.Priority == nil || *c.Priority != *want.Priority ||
				c.Type != want.Type || c.Policy == nil || *c.Policy != *want.Policy
			if !p.replace {
				rules, err := b.conn.GetRules(f.table, want)
				if err != nil {
					return 0, false, false, fmt.Errorf("list rules of %s %s: %w", f.table.Name, h, err)
				}
				var tags []string
				for _, r := range rules {
					tag, _ := udataString(r.UserData, byte(userdata.TypeComment))
					tags = append(tags, tag)
				}
				p.rewrite = !slices.Equal(tags, ruleTags)
			}
		}
		plans = append(plans, p)
	}
	// Chains of hooks no longer configured go.
	for _, c := range chains {
		if c.Table.Name != f.table.Name || slices.Contains(b.cfg.Hooks, c.Name) {
			continue
		}
		if _, ours := hookNums[c.Name]; ours && c.Hooknum != nil {
			b.conn.FlushChain(c)
			b.conn.DelChain(c)
			what("removing chain of a hook no longer configured", "chain", c.Name)
		}
	}
	flushed := map[string]bool{}
	if len(rebuild) > 0 {
		// Rules reference the sets: empty the chains first.
		for _, p := range plans {
			if p.exists {
				b.conn.FlushChain(&nftables.Chain{Name: p.hook, Table: f.table})
				flushed[p.hook] = true
			}
		}
		for _, s := range rebuild {
			b.conn.DelSet(s)
			what("recreating set with other flags; its elements are lost until the next reconcile", "set", s.Name)
		}
		missing = append(missing, rebuild...)
	}
	for _, s := range missing {
		if err := b.conn.AddSet(s, nil); err != nil {
			return 0, false, false, fmt.Errorf("add set %s: %w", s.Name, err)
		}
		what("adding set", "set", s.Name)
	}
	for _, p := range plans {
		want := f.chain(p.hook, b.cfg.Priority)
		old := &nftables.Chain{Name: p.hook, Table: f.table}
		switch {
		case !p.exists:
			b.conn.AddChain(want)
			what("adding chain", "chain", p.hook)
		case p.replace:
			if !flushed[p.hook] {
				b.conn.FlushChain(old)
			}
			b.conn.DelChain(old)
			b.conn.AddChain(want)
			what("replacing chain (hook, priority, type or policy changed)", "chain", p.hook, "priority", b.cfg.Priority)
		case p.rewrite || flushed[p.hook]:
			if !flushed[p.hook] {
				b.conn.FlushChain(old)
			}
			what("rewriting rules", "chain", p.hook)
		default:
			continue
		}
		b.addRules(f, want, p.hook)
	}
	return changes, false, len(missing) > 0, nil
}

// Uninstall removes the backend's tables, both families whatever the
// configuration, with their sets, chains and counters, in one transaction.
// Nothing else in the ruleset is touched. The backend can be used again:
// the next call recreates the tables. It returns how many tables it
// removed: 0 when there were none.
func (b *Backend) Uninstall() (int, error) {
	if err := b.lock(); err != nil {
		return 0, err
	}
	defer b.mu.Unlock()
	n := 0
	for _, t := range []*nftables.Table{
		{Name: b.cfg.Table4, Family: nftables.TableFamilyIPv4},
		{Name: b.cfg.Table6, Family: nftables.TableFamilyIPv6},
	} {
		ok, err := b.tableExists(t)
		if err != nil {
			return 0, err
		}
		if ok {
			b.conn.DelTable(t)
			n++
		}
	}
	b.ready, b.loaded = false, false
	for _, f := range b.fams {
		f.reset()
	}
	if n == 0 {
		return 0, nil
	}
	if err := b.conn.Flush(); err != nil {
		b.redial()
		return 0, fmt.Errorf("remove nftables tables: %w", err)
	}
	b.stats.transactions.Add(1)
	b.log.Info("nftables: tables removed", "ipv4_table", b.cfg.Table4, "ipv6_table", b.cfg.Table6)
	return n, nil
}

// Counter is what a drop chain dropped.
type Counter struct {
	Family  string // "ip" or "ip6"
	Hook    string // "prerouting", "input" or "forward"
	Packets uint64
	Bytes   uint64
}

// Counters holds one Counter per family and configured hook.
type Counters []Counter

// Total sums the counters.
func (cs Counters) Total() (packets, bytes uint64) {
	for _, c := range cs {
		packets += c.Packets
		bytes += c.Bytes
	}
	return packets, bytes
}

// Counters reads the named counters of the drop rules.
func (b *Backend) Counters() (Counters, error) {
	if err := b.lock(); err != nil {
		return nil, err
	}
	defer b.mu.Unlock()
	var out Counters
	for _, f := range b.fams {
		objs, err := b.conn.GetNamedObjects(f.table)
		if err != nil {
			return nil, fmt.Errorf("read counters of %s %s: %w", f.name(), f.table.Name, err)
		}
		for _, h := range b.cfg.Hooks {
			c := Counter{Family: f.name(), Hook: h}
			for _, o := range objs {
				n, ok := o.(*nftables.NamedObj)
				if !ok || n.Type != nftables.ObjTypeCounter || n.Name != counterName(h) {
					continue
				}
				if v, ok := n.Obj.(*expr.Counter); ok {
					c.Packets, c.Bytes = v.Packets, v.Bytes
				}
			}
			out = append(out, c)
		}
	}
	return out, nil
}
