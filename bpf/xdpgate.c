// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/*
 * xdpgate: drop packets whose source address is banned, before the stack
 * (and so before netfilter and kube-proxy's DNAT) sees them.
 *
 * Fail open: anything this program cannot parse, and everything not banned,
 * passes. The only verdict it ever returns besides XDP_PASS is XDP_DROP for a
 * source that matches an unexpired ban and no allowlist entry.
 *
 * Lookup design (see docs/ARCHITECTURE.md for the measurements behind it):
 * legitimate traffic is the miss path, so it must stay flat as the ban list
 * grows. Every ban table sits behind a "summary": a bitmap in an mmapable
 * array that user space keeps a superset of. A clear bit proves the address
 * cannot be banned by that table, so a miss costs one inlined array load per
 * table instead of a hash or LPM-trie walk. A set bit only means "maybe":
 * the real table decides.
 *
 * Exact IPv4 bans, the bulk of any ban list (a community blocklist is tens
 * of thousands of single addresses), have a cache in front instead: an
 * array of 64-byte buckets holding up to four bans each, with their expiry
 * and origin, so that a miss and a hit alike cost one cache line and no
 * helper call. Under a flood from many banned sources, the summary word,
 * the hash bucket and the hash element were three cache (and TLB) misses
 * a packet. A bucket that could not hold every ban hashed to it says so,
 * and only then is the hash consulted.
 *
 *   bans_v4      hash  exact /32          exact_v4: bucket hash64(addr)
 *   ranges_v4    trie  /8../31 (any len)  summary_v4_range: bit (addr >> 8)
 *   bans_v6      hash  exact /128         summary_v6: bit hash64(addr)
 *   ranges_v6    trie  any len < 128      summary_v6_range: bits of the
 *                                         covering /32 and /48
 *   allow_v4/v6  trie  allowlist          summary_allow_v4/v6: bit of /16
 *
 * The allowlist is only consulted once a ban matched: it always wins, but
 * it costs nothing on the miss path.
 *
 * Byte order: every address in a key is in network byte order, exactly as
 * it is on the wire. Prefix lengths in LPM keys are host byte order, as the
 * kernel requires. Hashes read the address bytes as a little-endian integer
 * (the program is built for bpfel only); internal/maps mirrors them.
 */

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* How many expired LPM matches to step over before giving up. A match that
 * has expired may hide a shorter, still valid range; each retry asks the
 * trie for the next shorter match. User space prunes expired entries, so
 * chains longer than this only exist for a moment. */
#define MAX_EXPIRED_RETRIES 8

/* Origins are small integers assigned by user space; names live in the
 * "origins" map so that bpftool and the CLI can print them. */
#define MAX_ORIGINS 256

/* ---- Settings the verifier sees: set at load time through spec.Variables. */

/* Count what would be dropped, but pass everything. */
volatile const __u8 count_only = 0;
/* Benchmark baseline: parse the headers and pass, no lookups, no counters. */
volatile const __u8 parse_only = 0;
/* log2 of the number of bits in the hashed summaries; the arrays behind
 * them hold 2^(bits-6) u64 words. */
volatile const __u32 summary_v6_bits = 24;
/* log2 of the number of buckets of exact_v4. */
volatile const __u32 exact_v4_bits = 19;
volatile const __u32 summary_v6_range_bits = 24;

/* ---- Map values and keys. */

/* A ban. Shared by the exact hashes and the range tries. */
struct ban {
	/* CLOCK_BOOTTIME (bpf_ktime_get_boot_ns) nanoseconds after which the
	 * ban no longer drops; 0 = never expires. */
	__u64 expires_ns;
	/* Origin id, an index into the origins map (< MAX_ORIGINS). */
	__u16 origin;
	/* Prefix length of the entry, so an expired range match can ask the
	 * trie for the next shorter one. 32 or 128 in the exact hashes. */
	__u8 prefixlen;
	__u8 flags; /* reserved, 0 */
	__u32 reserved;
};

/* A bucket of the exact IPv4 ban cache: the bans of up to EXACT_SLOTS
 * addresses hashed to it, each also in bans_v4 (which stays the complete
 * table that user space lists and bpftool dumps). An empty slot has
 * address 0.0.0.0; a ban of 0.0.0.0 itself lives in bans_v4 only. One
 * bucket is one 64-byte cache line. */
#define EXACT_SLOTS 4
struct exact_v4_bucket {
	__u8 addr[EXACT_SLOTS][4];     /* network byte order, as on the wire */
	__u64 expires_ns[EXACT_SLOTS]; /* as in struct ban */
	__u16 origin[EXACT_SLOTS];     /* as in struct ban */
	/* Nonzero when some ban hashed here is in no slot: the program must
	 * then look in bans_v4 too. It can be stale (set with nothing left
	 * in bans_v4): a lookup for nothing, never a wrong verdict. */
	__u32 overflow;
	__u32 pad;
};

/* Addresses are byte arrays, not integers, so that bpftool prints them as
 * the dotted bytes they are ([203,0,113,7]) rather than as a number. */
struct v4_addr {
	__u8 addr[4]; /* network byte order */
};

struct lpm_v4_key {
	__u32 prefixlen; /* host byte order, as the LPM trie requires */
	__u8 addr[4];    /* network byte order */
};

struct lpm_v6_key {
	__u32 prefixlen;  /* host byte order, as the LPM trie requires */
	__u8 addr[16];    /* network byte order */
};

struct v6_addr {
	__u8 addr[16]; /* network byte order */
};

struct allow {
	__u32 id; /* user space's handle for the entry; unused by the program */
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct origin_name {
	char name[32]; /* NUL-terminated LAPI origin, e.g. "crowdsec", "CAPI" */
};

/* Indexes of the stats map. Every packet is counted exactly once. */
enum stat {
	STAT_PASS_V4 = 0,      /* IPv4 source not banned */
	STAT_PASS_V6,          /* IPv6 source not banned */
	STAT_DROP_V4,          /* dropped: banned IPv4 source */
	STAT_DROP_V6,          /* dropped: banned IPv6 source */
	STAT_ALLOWED_V4,       /* banned but allowlisted: passed */
	STAT_ALLOWED_V6,
	STAT_WOULD_DROP_V4,    /* count-only mode: would have dropped */
	STAT_WOULD_DROP_V6,
	STAT_PASS_NOT_IP,      /* ARP, LLDP, ...: not ours to judge */
	STAT_PASS_MALFORMED,   /* cut short or bad header: fail open */
	STAT_MAX,
};

enum family {
	FAMILY_V4 = 0,
	FAMILY_V6 = 1,
};

/* ---- Maps. Sizes are defaults; the loader sets them from the config. */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct v4_addr);
	__type(value, struct ban);
} bans_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct v6_addr);
	__type(value, struct ban);
} bans_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4_key);
	__type(value, struct ban);
} ranges_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v6_key);
	__type(value, struct ban);
} ranges_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4_key);
	__type(value, struct allow);
} allow_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v6_key);
	__type(value, struct allow);
} allow_v6 SEC(".maps");

/* The exact IPv4 ban cache. Index (host order): hash64(addr, exact_v4_bits).
 * User space writes it with map updates, never through a mapping. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 19); /* 2^exact_v4_bits */
	__type(key, __u32);
	__type(value, struct exact_v4_bucket);
} exact_v4 SEC(".maps");

/* Summaries: bitmaps, word i holds bits 64i..64i+63. Index is host order. */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 18); /* one bit per /24: 2^24 / 64 */
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} summary_v4_range SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 18); /* 2^summary_v6_bits / 64 */
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} summary_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 18); /* 2^summary_v6_range_bits / 64 */
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} summary_v6_range SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 10); /* one bit per /16: 2^16 / 64 */
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} summary_allow_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 10); /* one bit per /16: 2^16 / 64 */
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} summary_allow_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32); /* enum stat */
	__type(value, struct counter);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_ORIGINS * 2);
	__type(key, __u32); /* origin id * 2 + enum family */
	__type(value, struct counter);
} origin_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_ORIGINS);
	__type(key, __u32); /* origin id */
	__type(value, struct origin_name);
} origins SEC(".maps");

/* Make the enums visible in BTF so bpf2go generates Go constants. */
const enum stat __stat_unused __attribute__((unused));
const enum family __family_unused __attribute__((unused));

/* ---- Header cursor. */

struct cursor {
	void *pos;
	void *end;
};

/* take returns a pointer to the next len bytes and advances, or NULL when
 * the frame is shorter than that. */
#define take(c, len)                                                        \
	({                                                                  \
		void *__p = (c)->pos;                                       \
		if (__p + (len) > (c)->end)                                 \
			__p = NULL;                                         \
		else                                                        \
			(c)->pos = __p + (len);                             \
		__p;                                                        \
	})

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* ---- Summaries. */

#define HASH_MUL 0x9E3779B97F4A7C15ULL

static __always_inline __u32 hash64(__u64 x, __u32 bits)
{
	return (__u32)((x * HASH_MUL) >> (64 - bits));
}

static __always_inline int bit_test(void *map, __u32 bit)
{
	__u32 idx = bit >> 6;
	__u64 *word = bpf_map_lookup_elem(map, &idx);

	if (!word)
		return 0;
	return (*word >> (bit & 63)) & 1;
}

/* ---- Ban lookups. */

struct verdict {
	struct ban *ban;
	__u64 now; /* lazily read clock, 0 until needed */
};

/*
 * boot_now estimates CLOCK_BOOTTIME from jiffies. bpf_ktime_get_boot_ns()
 * is a real call, and on CPUs with return-stack mitigations (SRSO safe-RET,
 * retbleed) a helper call costs tens of nanoseconds: more than the rest of
 * the hit path. The verifier inlines bpf_jiffies64() into a single load.
 *
 * The loader samples jiffies and CLOCK_BOOTTIME together and sets the
 * constants below; clock_base_ns is taken one tick early, so the estimate
 * never runs ahead of the real clock and a ban never expires early. It can
 * expire late by at most one tick, plus any time the host spent suspended
 * (jiffies stop during suspend; CLOCK_BOOTTIME does not). The agent prunes
 * expired bans by wall clock anyway; this check is the backstop for when it
 * is gone.
 */
volatile const __u64 clock_base_jiffies = 0;
volatile const __u64 clock_base_ns = 0;
volatile const __u64 clock_ns_per_jiffy = 0;

static __always_inline __u64 boot_now(void)
{
	return clock_base_ns + (bpf_jiffies64() - clock_base_jiffies) * clock_ns_per_jiffy;
}

static __always_inline int expired(const struct ban *b, __u64 *now)
{
	if (!b->expires_ns)
		return 0;
	if (!*now)
		*now = boot_now();
	return b->expires_ns <= *now;
}

static __always_inline struct ban *find_range_v4(__be32 addr, __u64 *now)
{
	struct lpm_v4_key key = { .prefixlen = 32 };
	struct ban *b;

	__builtin_memcpy(key.addr, &addr, 4);
	for (int i = 0; i < MAX_EXPIRED_RETRIES; i++) {
		b = bpf_map_lookup_elem(&ranges_v4, &key);
		if (!b)
			return NULL;
		if (!expired(b, now))
			return b;
		/* Expired: a shorter range may still cover the address. */
		if (b->prefixlen == 0)
			return NULL;
		key.prefixlen = b->prefixlen - 1;
	}
	return NULL;
}

/* find_exact_v4 looks addr up in its cache bucket, and in bans_v4 when
 * the bucket overflowed. A ban found in a slot is copied to *tmp, the
 * caller's, since the slot holds no struct ban. */
static __always_inline struct ban *find_exact_v4(__be32 addr, __u64 *now, struct ban *tmp)
{
	__u32 idx = hash64(addr, exact_v4_bits);
	struct exact_v4_bucket *bk = bpf_map_lookup_elem(&exact_v4, &idx);
	struct v4_addr key;
	struct ban *b;

	if (!bk)
		return NULL;
	/* 0.0.0.0 marks an empty slot: a ban of it is in bans_v4 alone. */
	if (!addr)
		goto overflow;
#pragma unroll
	for (int i = 0; i < EXACT_SLOTS; i++) {
		/* Each slot's 4 bytes are 4-aligned: one load, no byte swap. */
		if (*(__be32 *)bk->addr[i] != addr)
			continue;
		tmp->expires_ns = bk->expires_ns[i];
		tmp->origin = bk->origin[i];
		tmp->prefixlen = 32;
		/* An expired exact ban falls through: a range may hold it. */
		return expired(tmp, now) ? NULL : tmp;
	}
overflow:
	if (!bk->overflow)
		return NULL;
	__builtin_memcpy(key.addr, &addr, 4);
	b = bpf_map_lookup_elem(&bans_v4, &key);
	if (b && !expired(b, now))
		return b;
	return NULL;
}

static __always_inline struct ban *find_v4(__be32 addr, __u64 *now, struct ban *tmp)
{
	struct ban *b = find_exact_v4(addr, now, tmp);

	if (b)
		return b;
	if (bit_test(&summary_v4_range, bpf_ntohl(addr) >> 8))
		return find_range_v4(addr, now);
	return NULL;
}

static __always_inline int allowed_v4(__be32 addr)
{
	struct lpm_v4_key key = { .prefixlen = 32 };

	__builtin_memcpy(key.addr, &addr, 4);
	if (!bit_test(&summary_allow_v4, bpf_ntohl(addr) >> 16))
		return 0;
	return bpf_map_lookup_elem(&allow_v4, &key) != NULL;
}

static __always_inline struct ban *find_range_v6(const __u8 *addr, __u64 *now)
{
	struct lpm_v6_key key = { .prefixlen = 128 };
	struct ban *b;

	__builtin_memcpy(key.addr, addr, 16);
	for (int i = 0; i < MAX_EXPIRED_RETRIES; i++) {
		b = bpf_map_lookup_elem(&ranges_v6, &key);
		if (!b)
			return NULL;
		if (!expired(b, now))
			return b;
		if (b->prefixlen == 0)
			return NULL;
		key.prefixlen = b->prefixlen - 1;
	}
	return NULL;
}

/* The first 4 and 6 bytes of an address as little-endian integers, tagged
 * with the prefix length so the two granularities hash apart. */
static __always_inline __u64 v6_bucket32(__u64 lo)
{
	return (lo & 0xffffffffULL) | (32ULL << 56);
}

static __always_inline __u64 v6_bucket48(__u64 lo)
{
	return (lo & 0xffffffffffffULL) | (48ULL << 56);
}

static __always_inline struct ban *find_v6(const struct v6_addr *a, __u64 *now)
{
	__u64 lo, hi;
	struct ban *b;

	__builtin_memcpy(&lo, &a->addr[0], 8);
	__builtin_memcpy(&hi, &a->addr[8], 8);

	if (bit_test(&summary_v6, hash64(lo * HASH_MUL + hi, summary_v6_bits))) {
		b = bpf_map_lookup_elem(&bans_v6, a);
		if (b && !expired(b, now))
			return b;
	}
	/* Ranges of /48 and longer mark their /48; shorter ones mark every
	 * /32 they cover (or their own /32 when /32../47). */
	if (bit_test(&summary_v6_range, hash64(v6_bucket48(lo), summary_v6_range_bits)) ||
	    bit_test(&summary_v6_range, hash64(v6_bucket32(lo), summary_v6_range_bits)))
		return find_range_v6(a->addr, now);
	return NULL;
}

static __always_inline int allowed_v6(const struct v6_addr *a)
{
	struct lpm_v6_key key = { .prefixlen = 128 };
	__u32 bucket = ((__u32)a->addr[0] << 8) | a->addr[1];

	if (!bit_test(&summary_allow_v6, bucket))
		return 0;
	__builtin_memcpy(key.addr, a->addr, 16);
	return bpf_map_lookup_elem(&allow_v6, &key) != NULL;
}

/* ---- Counting. */

static __always_inline void count(__u32 idx, __u64 bytes)
{
	struct counter *c = bpf_map_lookup_elem(&stats, &idx);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static __always_inline void count_origin(__u16 origin, __u32 family, __u64 bytes)
{
	__u32 idx = (__u32)origin * 2 + family;
	struct counter *c = bpf_map_lookup_elem(&origin_drops, &idx);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

/* judge turns a lookup result into a verdict and counts it. */
static __always_inline int judge(struct ban *b, int allow, __u32 family, __u64 bytes)
{
	if (!b) {
		count(STAT_PASS_V4 + family, bytes);
		return XDP_PASS;
	}
	if (allow) {
		/* The allowlist always wins: never drop an allowlisted source. */
		count(STAT_ALLOWED_V4 + family, bytes);
		return XDP_PASS;
	}
	count_origin(b->origin, family, bytes);
	if (count_only) {
		count(STAT_WOULD_DROP_V4 + family, bytes);
		return XDP_PASS;
	}
	count(STAT_DROP_V4 + family, bytes);
	return XDP_DROP;
}

static __always_inline int is_v4_mapped(const struct v6_addr *a)
{
	__u64 lo;
	__u32 mid;

	__builtin_memcpy(&lo, &a->addr[0], 8);
	__builtin_memcpy(&mid, &a->addr[8], 4);
	/* ::ffff:a.b.c.d: 80 zero bits, then 0xffff. */
	return lo == 0 && mid == bpf_htonl(0x0000ffff);
}

SEC("xdp")
int xdpgate(struct xdp_md *ctx)
{
	struct cursor c = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	__u64 bytes = ctx->data_end - ctx->data;
	__u64 now = 0;
	struct ethhdr *eth;
	__be16 proto;

	eth = take(&c, sizeof(*eth));
	if (!eth)
		goto malformed;
	proto = eth->h_proto;

	/* Up to two tags: 802.1Q, or 802.1ad outer with 802.1Q inner (QinQ). */
#pragma unroll
	for (int i = 0; i < 2; i++) {
		struct vlan_hdr *vlan;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		vlan = take(&c, sizeof(*vlan));
		if (!vlan)
			goto malformed;
		proto = vlan->encap_proto;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = take(&c, sizeof(*ip));
		__u32 hlen;

		if (!ip)
			goto malformed;
		/* Options do not move the source address, but a header that
		 * claims more bytes than the frame holds is not a packet the
		 * stack would accept either: pass it untouched. Every fragment
		 * carries the source, so fragments are judged like the rest. */
		hlen = ip->ihl * 4;
		if (ip->version != 4 || hlen < sizeof(*ip))
			goto malformed;
		if ((void *)ip + hlen > c.end)
			goto malformed;
		if (parse_only)
			return XDP_PASS;

		struct ban tmp;
		struct ban *b = find_v4(ip->saddr, &now, &tmp);
		return judge(b, b ? allowed_v4(ip->saddr) : 0, FAMILY_V4, bytes);
	}

	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = take(&c, sizeof(*ip6));
		struct v6_addr src;

		if (!ip6)
			goto malformed;
		if (ip6->version != 6)
			goto malformed;
		if (parse_only)
			return XDP_PASS;

		__builtin_memcpy(src.addr, &ip6->saddr, 16);
		if (is_v4_mapped(&src)) {
			/* ::ffff:a.b.c.d is an IPv4 host: judge it by the IPv4
			 * tables, so a v4 ban cannot be dodged by mapping. */
			__be32 v4;

			__builtin_memcpy(&v4, &src.addr[12], 4);
			struct ban tmp;
			struct ban *b = find_v4(v4, &now, &tmp);
			return judge(b, b ? allowed_v4(v4) : 0, FAMILY_V4, bytes);
		}
		struct ban *b = find_v6(&src, &now);
		return judge(b, b ? allowed_v6(&src) : 0, FAMILY_V6, bytes);
	}

	/* Not IP (ARP, LLDP, MPLS, ...): there is no source address to judge. */
	if (!parse_only)
		count(STAT_PASS_NOT_IP, bytes);
	return XDP_PASS;

malformed:
	/* Fail open: a frame we cannot parse is the stack's business. */
	if (!parse_only)
		count(STAT_PASS_MALFORMED, bytes);
	return XDP_PASS;
}
