package decision

// Names interns strings that repeat across many decisions (origins, scopes,
// types): each distinct one is kept once and stands for a small number. The
// zero Names is empty and ready to use; it is not safe for concurrent use.
type Names struct {
	list []string
	ix   map[string]uint32
}

// ID returns the number of name, adding it when new.
func (n *Names) ID(name string) uint32 {
	if i, ok := n.ix[name]; ok {
		return i
	}
	if n.ix == nil {
		n.ix = map[string]uint32{}
	}
	i := uint32(len(n.list))
	n.list = append(n.list, name)
	n.ix[name] = i
	return i
}

// Name returns the name of a number ID gave.
func (n *Names) Name(id uint32) string { return n.list[id] }
