package nftfallback

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The kernel dumps a set a few kilobytes at a time, and for each chunk
// walks the set from its first element, skipping what it already sent: a
// dump costs n²/(2·chunk). It sizes a chunk after the largest buffer the
// reader has passed to recvmsg, up to 32 KiB. nftables.Conn reads with
// page-sized buffers (about 50 elements a chunk); dumping with 64 KiB
// buffers, as below, makes chunks 8 times larger and a 100k-element set
// that many times faster to read.
//
// A hash set that grows or shrinks between two chunks is walked in another
// order by the next one, which then repeats some elements and misses as
// many others; elements read twice mean the dump must be taken again.

// errInconsistentDump is returned for a dump taken while the set was
// resized.
var errInconsistentDump = errors.New("set dump inconsistent (resized while read)")

const dumpBuf = 64 << 10

type dumper struct {
	conn *netlink.Conn
	buf  []byte
}

func dialDumper(netns int) (*dumper, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	return &dumper{conn: c, buf: make([]byte, dumpBuf)}, nil
}

func (d *dumper) close() error { return d.conn.Close() }

// elements returns the elements of a set, taking the dump again (a few
// times) when it was inconsistent.
func (d *dumper) elements(s *nftables.Set) ([]nftables.SetElement, error) {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 100 * time.Millisecond)
		}
		var els []nftables.SetElement
		els, err = d.dump(s)
		if err == nil {
			seen := make(map[string]struct{}, len(els))
			for _, e := range els {
				k := string(e.Key)
				if e.IntervalEnd {
					k += "\x00end"
				}
				if _, dup := seen[k]; dup {
					err = errInconsistentDump
					break
				}
				seen[k] = struct{}{}
			}
		}
		if !errors.Is(err, errInconsistentDump) {
			return els, err
		}
	}
	return nil, fmt.Errorf("%w, 5 times", err)
}

func (d *dumper) dump(s *nftables.Set) ([]nftables.SetElement, error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(s.Table.Name + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(s.Name + "\x00")},
	})
	if err != nil {
		return nil, err
	}
	req, err := d.conn.Send(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{byte(s.Table.Family), unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return nil, fmt.Errorf("request set elements: %w", err)
	}
	rc, err := d.conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var (
		out  []nftables.SetElement
		intr bool
	)
	for {
		var (
			n    int
			rerr error
		)
		if err := rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), d.buf, 0)
			return rerr != unix.EAGAIN
		}); err != nil {
			return nil, err
		}
		if rerr != nil {
			return nil, fmt.Errorf("receive set elements: %w", rerr)
		}
		msgs, err := syscall.ParseNetlinkMessage(d.buf[:n])
		if err != nil {
			return nil, fmt.Errorf("parse set elements: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != req.Header.Sequence {
				continue // a late reply to an earlier request
			}
			intr = intr || m.Header.Flags&unix.NLM_F_DUMP_INTR != 0
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				if intr {
					return nil, errInconsistentDump
				}
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return nil, errors.New("short netlink error")
				}
				if errno := -int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
					return nil, fmt.Errorf("dump set elements: %w", syscall.Errno(errno))
				}
			default:
				if len(m.Data) < 4 {
					continue
				}
				out, err = decodeElements(out, m.Data[4:])
				if err != nil {
					return nil, err
				}
			}
		}
	}
}

// decodeElements appends the elements of one NFT_MSG_NEWSETELEM payload.
func decodeElements(out []nftables.SetElement, b []byte) ([]nftables.SetElement, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return out, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			continue
		}
		ad.Nested(func(list *netlink.AttributeDecoder) error {
			for list.Next() {
				if list.Type() != unix.NFTA_LIST_ELEM {
					continue
				}
				var e nftables.SetElement
				list.Nested(func(el *netlink.AttributeDecoder) error {
					el.ByteOrder = binary.BigEndian
					for el.Next() {
						switch el.Type() {
						case unix.NFTA_SET_ELEM_KEY:
							el.Nested(func(k *netlink.AttributeDecoder) error {
								for k.Next() {
									if k.Type() == unix.NFTA_DATA_VALUE {
										e.Key = k.Bytes()
									}
								}
								return nil
							})
						case unix.NFTA_SET_ELEM_FLAGS:
							e.IntervalEnd = el.Uint32()&unix.NFT_SET_ELEM_INTERVAL_END != 0
						case unix.NFTA_SET_ELEM_TIMEOUT:
							e.Timeout = time.Duration(el.Uint64()) * time.Millisecond
						case unix.NFTA_SET_ELEM_EXPIRATION:
							e.Expires = time.Duration(el.Uint64()) * time.Millisecond
						case unix.NFTA_SET_ELEM_USERDATA:
							e.Comment, _ = udataString(el.Bytes(), byte(userdata.NFTNL_UDATA_SET_ELEM_COMMENT))
						}
					}
					return nil
				})
				out = append(out, e)
			}
			return nil
		})
	}
	return out, ad.Err()
}

// udataString returns the string of type typ in a user data TLV list, as
// nft writes it (NUL-terminated). Unlike the userdata package it does not
// trust the lengths: the data may have been written by anyone.
func udataString(b []byte, typ byte) (string, bool) {
	for len(b) >= 2 {
		t, n := b[0], int(b[1])
		if len(b) < 2+n {
			return "", false
		}
		if t == typ {
			v := b[2 : 2+n]
			if len(v) > 0 && v[len(v)-1] == 0 {
				v = v[:len(v)-1]
			}
			return string(v), true
		}
		b = b[2+n:]
	}
	return "", false
}
