// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * pwru's kernel side: one event per skb seen at a probe, sent through the `events` ring buffer.
 *
 * Every program below is a thin wrapper that finds the skb (and drop reason, location, address) for its hook
 * type and calls the one shared handler, handle_skb(), which filters, then reserves and fills a struct event
 * (pwru.h), a record with the common header. Program families:
 *   kprobe/skb_N           skb at argument N (1..5); also loaded as kprobe-multi by the loader
 *                          (expected attach type BPF_TRACE_KPROBE_MULTI), same code
 *   kprobe/skb_1_reason_2  kfree_skb_reason(skb, reason)
 *   kprobe/skb_2_reason_3  sk_skb_reason_drop(sk, skb, reason)
 *   fentry/...             the same set for fentry; the attach target is chosen at load time
 *   netfilter              nf_skb: loaded once for the first and once for the last priority, for every hook
 *                          (pf, hook, netns are chosen at attach time, the hook's probe id read from a per-load
 *                          table); only bpf_base_func_proto helpers there (see CALLER_NONE)
 *   tp_btf/...             one program for every skb tracepoint; argument positions come from per-load
 *                          constants (cfg_tp_*), read in a switch so the verifier sees constant ctx offsets
 *
 * The packet filter: filter_pcap_l2/l3 are stubs whose instructions user space replaces with a translated
 * pcap expression (R1 = data, R2 = data_end, R3 = the skb, R0 != 0 accepts); filter_pcap_tunnel_l2/l3
 * likewise, for the inner packet of an encapsulated skb (--filter-tunnel-pcap-l2/l3).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#include "pwru.h"

/* The kernel only accepts GPL-compatible strings for the GPL-only helpers used here (probe_read_kernel...). */
char __license[] SEC("license") = "GPL";

#define SKB_HDR_UNSET ((__u16)~0U)
#define STACK_DEPTH 127 /* PERF_MAX_STACK_DEPTH */
#define CALLER_FRAMES 8  /* frames bpf_get_stack fetches to find the caller (fentry, tp_btf) */

/* ---- configuration, set by user space before load (.rodata, frozen) ---- */
const volatile __u32 cfg_netns = 0;        /* 0: any; else the netns inode number */
const volatile __u32 cfg_mark = 0;         /* with cfg_mark_mask != 0: (skb->mark & mask) == mark */
const volatile __u32 cfg_mark_mask = 0;    /* 0: no mark filter */
const volatile __u32 cfg_ifindex = 0;      /* 0: any device */
const volatile __u8 cfg_has_pcap = 0;      /* call filter_pcap_l2/l3 */
const volatile __u8 cfg_output_meta = 0;
const volatile __u8 cfg_output_tuple = 0;
const volatile __u8 cfg_output_stack = 0;
const volatile __u8 cfg_output_caller = 0;
const volatile __u8 cfg_has_tunnel_pcap_l2 = 0; /* call filter_pcap_tunnel_l2 on encapsulated skbs */
const volatile __u8 cfg_has_tunnel_pcap_l3 = 0; /* call filter_pcap_tunnel_l3 on encapsulated skbs */
const volatile __u8 cfg_output_tunnel = 0;
const volatile __u8 cfg_output_skb = 0;     /* --output-skb: a struct skb_dump of struct sk_buff before each event */
const volatile __u8 cfg_output_shinfo = 0;  /* --output-skb-shared-info: one of struct skb_shared_info */
const volatile __u8 cfg_output_cb = 0;      /* --output-skb-cb: meta.cb */
const volatile __u32 cfg_percpu_buf = 4096; /* --set-percpu-buf: dump_buf's value size (user space sizes the map) */
const volatile __u8 cfg_output_pcap = 0;          /* --output-pcap: a struct packet before each event */
const volatile __u32 cfg_pcap_snaplen = 256;      /* --output-pcap-snaplen, at most PWRU_PCAP_SNAPLEN_MAX */
const volatile __u8 cfg_track_skb = 0;         /* --filter-track-skb: the tracked set decides before the filters */
const volatile __u8 cfg_track_stackid = 0;     /* --filter-track-skb-by-stackid: the call chain's skb too */
const volatile __u8 cfg_has_skb_expr = 0;      /* call filter_skb_expr (--filter-skb-expr) */
const volatile __u8 cfg_has_xdp_expr = 0;      /* call filter_xdp_expr (--filter-xdp-expr) */
const volatile __u8 cfg_xdp_metadata = 0;     /* call set_xdp_metadata in XDP events (--output-xdp-metadata) */
const volatile __u32 cfg_metadata_size = 0;    /* bytes set_skb_metadata writes after the event (multiple of 8) */
/* tp_btf (and fentry fallback) per-load constants; positions are 1-based, without the tracepoint's void * */
const volatile __u32 cfg_tp_skb_pos = 1;
const volatile __u32 cfg_tp_reason_pos = 0;   /* 0: the tracepoint has no drop reason */
const volatile __u32 cfg_tp_location_pos = 0; /* 0: no location argument */
const volatile __u64 cfg_probe_id = 0;        /* tp_btf, netfilter: header.probe; fentry: address without get_func_ip */
const volatile __u8 cfg_tp_frees = 0;         /* tp_btf: the tracepoint marks its skb's end (kfree_skb, consume_skb) */
const volatile __u8 cfg_output_journey = 0;  /* --output-journey: send struct skb_copy records */
const volatile __u32 cfg_ret_pos = 0;         /* fexit: 1-based ctx slot of the return value (argument count + 1) */
const volatile __u8 cfg_tp_verdict = 0;       /* tp_btf: the tracepoint ends its skb with this enum pwru_verdict */
const volatile __u8 cfg_emit = 1;             /* 0: the program writes no event (kernel state only, or counts only) */
/* Netfilter drop attribution: nf_skb at a hook's first point remembers (pf, hook) for the skb, at its last
 * forgets it; a drop with reason cfg_nf_drop_reason (SKB_DROP_REASON_NETFILTER_DROP's value on this kernel, 0:
 * none) looks it up. */
const volatile __u8 cfg_nf_attrib = 0;        /* the netfilter points are attached: look drops up */
const volatile __u32 cfg_nf_drop_reason = 0;
const volatile __u8 cfg_nf_rules = 0;         /* table/chain probes attached: 1 drop events (a reason) look them
					       * up, 2 the skb's next event (kernels without drop reasons) */
const volatile __u32 cfg_nf_skb_pos = 0;      /* fexit_nf_verdict, per load: the skb's (nft: the pktinfo's) slot */
const volatile __u32 cfg_nf_priv_pos = 0;     /* and the table's (nft: the chain's) */
const volatile __u8 cfg_nf_kind = 0;          /* enum nf_walk_kind */
/* Member offsets of the table walks' structs, from their modules' BTF (x_tables, nf_tables): the loader
 * relocates CO-RE reads against vmlinux's BTF only, where these types are not. */
const volatile __u32 cfg_off_xt_table_name = 0;   /* struct xt_table: name (char[32]) */
const volatile __u32 cfg_off_nft_pkt_skb = 0;     /* struct nft_pktinfo: skb */
const volatile __u32 cfg_off_nft_chain_table = 0; /* struct nft_chain: table */
const volatile __u32 cfg_off_nft_chain_name = 0;  /* struct nft_chain: name (char *) */
const volatile __u32 cfg_off_nft_table_name = 0;  /* struct nft_table: name (char *) */
const volatile __u8 cfg_nf_point = 0;         /* netfilter, per load: NF_POINT_FIRST or NF_POINT_LAST */
#define NF_POINT_FIRST 1
#define NF_POINT_LAST 2
/* netfilter, per load (one load serves its point at every hook): the point's probe id at each hook (indexed by
 * the hook state's NF_INET_*), and a bit per hook whose point shows events (cfg_emit 0: none does). */
#define NF_INET_HOOKS 5
const volatile __u32 cfg_nf_probe_ids[NF_INET_HOOKS] = {};
const volatile __u8 cfg_nf_shown = 0;
const volatile __u8 cfg_summary = 0;          /* --summary: the free tracepoints count the ends they see */
/* tp_btf caller: kernel stack frames before the function that fired the tracepoint: the stack is
 * [this program, bpf_trace_run<N>, function with the tracepoint, ...]. */
#define TP_CALLER_SKIP 2

/* ---- maps ---- */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22); /* user space may change it before creating the map */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 4096);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, STACK_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

/* Events that did not fit the ring buffer; index 0, summed over CPUs by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* One record the ring buffer had no room for (per-CPU slot: no other writer while this program runs here). */
static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *count = bpf_map_lookup_elem(&lost, &zero);

	if (count)
		*count += 1;
}

/* Where a struct skb_dump is written before it is sent (--output-skb, --output-skb-shared-info); its value size
 * is set by user space to cfg_percpu_buf before the map is made. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__uint(value_size, 4096);
} dump_buf SEC(".maps");

/* --output-pcap: struct packet is built in a per-CPU scratch record (bpf_ringbuf_reserve needs a constant size,
 * and most packets are shorter than the snap length), then copied into the ring with bpf_ringbuf_output. One
 * slot per nesting level (an interrupt's softirq may run another pwru program while one is building its record
 * on this CPU); pcap_nest is the level in use. Deeper nesting is counted in pcap_lost, as are packets the ring
 * had no room for. */
#define PCAP_NEST_MAX 3
#define PCAP_SCRATCH_SIZE (sizeof(struct packet) + PWRU_PCAP_SNAPLEN_MAX)

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PCAP_NEST_MAX);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, PCAP_SCRATCH_SIZE);
} pcap_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} pcap_nest SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} pcap_lost SEC(".maps");

/* ---- skb tracking (--filter-track-skb, --filter-track-skb-by-stackid) ----
 * tracked:   skb addresses that passed the filters (or descend from one: clones, copies, veth's XDP rebuild).
 *            An address leaves the set when its skb is freed. Its size is set by user space before the map is
 *            made (--filter-track-skb-max); an skb that does not fit is counted in track_full, never dropped
 *            silently.
 * chain_skb: call chain -> the selected skb it is working on; skb_chain the reverse, to clean up at the free.
 *            A call chain is the task the kernel runs on (softirqs run on the task they interrupt): every function
 *            of one syscall or one softirq run shares it. pwru walks frame pointers to the outermost frame instead;
 *            distribution kernels are built without frame pointers (ORC unwinder), where that walk reads
 *            arbitrary registers.
 * stash:     a kprobe's argument kept from function entry to its return probe (key: pid_tgid). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u8);
} tracked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} track_full SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} chain_skb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} skb_chain SEC(".maps");

struct stash_value {
	__u64 skb;  /* the skb at entry */
	__u64 pskb; /* where the function leaves its result (struct sk_buff **), 0 when it returns it */
	__u64 probe; /* the function (struct skb_copy's hdr.probe) */
	__u8 probe_kind;
	__u8 pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct stash_value);
} stash SEC(".maps");

/* ---- netfilter drop attribution ----
 * nf_where: skb address -> the hook it is inside (between the hook's first and last points). An entry lives
 * from the first point to the last one, or to the skb's end (deleted at the free tracepoints when they are
 * attached); an LRU map, so entries of skbs a hook stole (NF_STOLEN, NF_QUEUE) and never freed in sight make
 * room for new ones instead of filling it. */
struct nf_where {
	__u8 pf;   /* NFPROTO_* */
	__u8 hook; /* NF_INET_* */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct nf_where);
} nf_where SEC(".maps");

/* ---- --summary ----
 * summary:      struct summary_key -> skb ends, per CPU (user space sums the CPUs). Its size is set by user space
 *               before the map is made; an end whose key finds it full is counted in summary_full instead.
 * summary_full: per-CPU counts of those ends, by verdict (index = enum pwru_verdict): the totals stay exact, only
 *               their breakdown by reason and location is missing. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct summary_key);
	__type(value, __u64);
} summary SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} summary_full SEC(".maps");

/* ---- netfilter table and chain attribution (kprobe, fentry backends) ----
 * nf_stash: a table walk in progress (key: pid_tgid): the skb and the table (struct xt_table *) or base chain
 * (struct nft_chain *), kept from the function's entry to its return (kprobe backends; fexit has both at once).
 * nf_rule:  skb -> the table/chain whose verdict was DROP, taken (and deleted) by the skb's next drop event. */
enum nf_walk_kind {
	NF_WALK_XT = 1,  /* ipt_do_table, ip6t_do_table: priv is a struct xt_table * */
	NF_WALK_NFT = 2, /* nft_do_chain: priv is a struct nft_chain * */
};

struct nf_walk {
	__u64 skb;
	__u64 priv;
	__u8 kind; /* enum nf_walk_kind */
	__u8 pad[7];
};

struct nf_rule {
	char table[PWRU_NF_NAME_LEN];
	char chain[PWRU_NF_NAME_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct nf_walk);
} nf_stash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct nf_rule);
} nf_rule SEC(".maps");

/* Keep the record types and layouts in the object's BTF for user space's decoder (null constants in .rodata,
 * never read). */
const enum pwru_record_type *const pwru_record_types = 0;
const enum pwru_probe_kind *const pwru_probe_kinds = 0;
const struct event *const pwru_event_layout = 0;
const struct skb_dump *const pwru_skb_dump_layout = 0;
const enum pwru_dump_kind *const pwru_dump_kinds = 0;
const struct packet *const pwru_packet_layout = 0;
const enum pwru_linktype *const pwru_linktypes = 0;
const struct skb_copy *const pwru_skb_copy_layout = 0;
const struct skb_free *const pwru_skb_free_layout = 0;
const enum pwru_verdict *const pwru_verdicts = 0;
const enum pwru_prog_ret_kind *const pwru_prog_ret_kinds = 0;
const struct summary_key *const pwru_summary_key_layout = 0;
const struct bpfmap_op *const pwru_bpfmap_op_layout = 0;
const enum pwru_bpfmap_op *const pwru_bpfmap_ops = 0;

/* ---- packet filter stubs ---- */
/*
 * The bodies are replaced before load. They must stay real subprograms (noinline) and their result must be
 * opaque to clang: the asm barrier hides the value, so callers test all 64 bits of R0 (a cBPF filter accepts
 * with its snap length, e.g. 0x40000, which a bool test of the low byte would miss), and uses the skb, so
 * clang keeps passing it in R3 (the filter's ancillary loads read it: packet type, ifindex, ...).
 */
static __noinline __u64 filter_pcap_l2(void *data, void *data_end, struct sk_buff *skb)
{
	__u64 ret = (__u64)data_end - (__u64)data;

	asm volatile("" : "+r"(ret) : "r"(skb));
	return ret;
}

static __noinline __u64 filter_pcap_l3(void *data, void *data_end, struct sk_buff *skb)
{
	__u64 ret = (__u64)data_end - (__u64)data;

	asm volatile("" : "+r"(ret) : "r"(skb));
	return ret;
}

/* --filter-tunnel-pcap-l2/l3: the same contract, run on the inner packet of an encapsulated skb. */
static __noinline __u64 filter_pcap_tunnel_l2(void *data, void *data_end, struct sk_buff *skb)
{
	__u64 ret = (__u64)data_end - (__u64)data;

	asm volatile("" : "+r"(ret) : "r"(skb));
	return ret;
}

static __noinline __u64 filter_pcap_tunnel_l3(void *data, void *data_end, struct sk_buff *skb)
{
	__u64 ret = (__u64)data_end - (__u64)data;

	asm volatile("" : "+r"(ret) : "r"(skb));
	return ret;
}

/* --filter-skb-expr: a C expression over the skb, compiled by pwru.cexpr against the kernel's BTF. Non-zero:
 * selected. The same contract as the pcap stubs (replaced before load, opaque result). */
static __noinline __u64 filter_skb_expr(struct sk_buff *skb)
{
	__u64 ret = 1;

	asm volatile("" : "+r"(ret) : "r"(skb));
	return ret;
}

/* --filter-xdp-expr: the same over an XDP program's struct xdp_buff (--filter-trace-xdp). */
static __noinline __u64 filter_xdp_expr(struct xdp_buff *xdp)
{
	__u64 ret = 1;

	asm volatile("" : "+r"(ret) : "r"(xdp));
	return ret;
}

/* --output-skb-metadata: the expressions' values into out (cfg_metadata_size bytes), by pwru.cexpr's code. */
static __noinline int set_skb_metadata(struct sk_buff *skb, __u8 *out)
{
	int ret = 0;

	asm volatile("" : "+r"(ret) : "r"(skb), "r"(out));
	return ret;
}

/* --output-xdp-metadata: the same over an XDP program's struct xdp_buff. */
static __noinline int set_xdp_metadata(struct xdp_buff *xdp, __u8 *out)
{
	int ret = 0;

	asm volatile("" : "+r"(ret) : "r"(xdp), "r"(out));
	return ret;
}

/* The tunnel filters judge only skbs that carry an inner packet: tunnel encapsulation (vxlan, geneve, ...)
 * sets the inner header offsets, which are 0 on an skb that was never encapsulated; such an skb passes. */
static __always_inline bool filter_pcap_tunnel(struct sk_buff *skb)
{
	__u16 l3_off = BPF_CORE_READ(skb, inner_network_header);
	unsigned char *head;
	void *data_end;

	if (l3_off == 0)
		return true;
	head = BPF_CORE_READ(skb, head);
	data_end = head + BPF_CORE_READ(skb, tail);
	if (cfg_has_tunnel_pcap_l2 && !filter_pcap_tunnel_l2(head + BPF_CORE_READ(skb, inner_mac_header), data_end, skb))
		return false;
	if (cfg_has_tunnel_pcap_l3 && !filter_pcap_tunnel_l3(head + l3_off, data_end, skb))
		return false;
	return true;
}

/* ---- filters ---- */
static __always_inline __u32 skb_netns(struct sk_buff *skb)
{
	__u32 netns = BPF_CORE_READ(skb, dev, nd_net.net, ns.inum);

	/* skb->dev is not set yet on the local output path (and NULL reads give 0): use the socket's netns. */
	if (netns == 0) {
		struct sock *sk = BPF_CORE_READ(skb, sk);

		if (sk)
			netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	}
	return netns;
}

/* L2 when the skb has a MAC header (set and non-empty), else L3 from the network header. */
static __always_inline bool filter_pcap(struct sk_buff *skb)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	void *data_end = head + BPF_CORE_READ(skb, tail);
	__u16 mac_header = BPF_CORE_READ(skb, mac_header);

	if (mac_header != SKB_HDR_UNSET && BPF_CORE_READ(skb, mac_len) != 0)
		return filter_pcap_l2(head + mac_header, data_end, skb) != 0;
	return filter_pcap_l3(head + BPF_CORE_READ(skb, network_header), data_end, skb) != 0;
}

static __always_inline bool filter_skb(struct sk_buff *skb)
{
	if (cfg_netns && skb_netns(skb) != cfg_netns)
		return false;
	if (cfg_mark_mask && (BPF_CORE_READ(skb, mark) & cfg_mark_mask) != cfg_mark)
		return false;
	if (cfg_ifindex && BPF_CORE_READ(skb, dev, ifindex) != cfg_ifindex)
		return false;
	if (cfg_has_pcap && !filter_pcap(skb))
		return false;
	if ((cfg_has_tunnel_pcap_l2 || cfg_has_tunnel_pcap_l3) && !filter_pcap_tunnel(skb))
		return false;
	if (cfg_has_skb_expr && !filter_skb_expr(skb))
		return false;
	return true;
}

/* ---- event fields ---- */
static __always_inline void set_meta(struct sk_buff *skb, struct skb_meta *meta)
{
	struct net_device *dev = BPF_CORE_READ(skb, dev);

	meta->netns = skb_netns(skb);
	meta->mark = BPF_CORE_READ(skb, mark);
	meta->len = BPF_CORE_READ(skb, len);
	meta->protocol = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	if (dev) {
		meta->ifindex = BPF_CORE_READ(dev, ifindex);
		meta->mtu = BPF_CORE_READ(dev, mtu);
		bpf_core_read_str(meta->ifname, sizeof(meta->ifname), &dev->name);
	}
	if (cfg_output_cb) {
		struct qdisc_skb_cb *qcb = (struct qdisc_skb_cb *)&skb->cb;

		bpf_core_read(meta->cb, sizeof(meta->cb), &qcb->data);
	}
}

static __always_inline void set_ports(struct skb_tuple *tuple, unsigned char *l4)
{
	if (tuple->l4_proto == IPPROTO_TCP) {
		struct tcphdr tcp;

		if (bpf_probe_read_kernel(&tcp, sizeof(tcp), l4))
			return;
		tuple->sport = bpf_ntohs(tcp.source);
		tuple->dport = bpf_ntohs(tcp.dest);
		tuple->tcp_flags = ((__u8 *)&tcp)[13]; /* by offset: the kernel's flags are bitfields */
	} else if (tuple->l4_proto == IPPROTO_UDP) {
		struct udphdr udp;

		if (bpf_probe_read_kernel(&udp, sizeof(udp), l4))
			return;
		tuple->sport = bpf_ntohs(udp.source);
		tuple->dport = bpf_ntohs(udp.dest);
	}
}

#define IPV6_EXT_MAX 6 /* IPv6 extension headers walked before giving up on finding the transport header */
#define PORTS_UNKNOWN 0xffff /* an L4 offset: the transport header is not in this packet (or not found) */

static __always_inline bool ipv6_is_ext(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING || nexthdr == IPPROTO_FRAGMENT ||
	       nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_AH;
}

/* The offset from the IPv6 header to its transport header, past the extension headers (at most IPV6_EXT_MAX);
 * *proto is the protocol after them. PORTS_UNKNOWN for a fragment other than the first (its transport header
 * is in the first one), for more extension headers than walked, or when a header cannot be read. */
static __always_inline __u16 ipv6_l4_offset(unsigned char *l3, __u8 *proto)
{
	__u16 off = sizeof(struct ipv6hdr);
	__u8 nexthdr = *proto;
	__u8 ext[4]; /* next header, length, and for a fragment header its offset field */

#pragma unroll
	for (int i = 0; i < IPV6_EXT_MAX; i++) {
		if (!ipv6_is_ext(nexthdr))
			break;
		if (bpf_probe_read_kernel(ext, sizeof(ext), l3 + off))
			return PORTS_UNKNOWN;
		if (nexthdr == IPPROTO_FRAGMENT) {
			*proto = ext[0];
			if (((ext[2] << 8) | ext[3]) & 0xfff8) /* fragment offset, in 8-byte units above 3 flag bits */
				return PORTS_UNKNOWN;
			off += 8;
		} else if (nexthdr == IPPROTO_AH) {
			off += (ext[1] + 2) * 4; /* AH counts 4-byte words, minus 2 */
		} else {
			off += (ext[1] + 1) * 8; /* hop-by-hop, routing, destination options: 8-byte units, minus 1 */
		}
		nexthdr = ext[0];
	}
	*proto = nexthdr;
	return ipv6_is_ext(nexthdr) ? PORTS_UNKNOWN : off;
}

/* The tuple of the IP packet at head + l3_off: addresses from its header; the L4 protocol after IPv6 extension
 * headers; ports from head + l4_off when that lies past the IP (and extension) headers, else from where the
 * headers end (on receive the kernel points the transport header at the first extension header until it has
 * parsed them). No ports for a fragment other than the first. */
static __always_inline void tuple_at(unsigned char *head, __u16 l3_off, __u16 l4_off, struct skb_tuple *tuple)
{
	unsigned char *l3 = head + l3_off;
	__u16 hdr_len; /* IP header plus extension headers */
	__u8 first;

	if (l3_off == SKB_HDR_UNSET || bpf_probe_read_kernel(&first, 1, l3))
		return;

	if ((first >> 4) == 4) {
		struct iphdr ip;

		if (bpf_probe_read_kernel(&ip, sizeof(ip), l3))
			return;
		tuple->l3_proto = ETH_P_IP;
		tuple->l4_proto = ip.protocol;
		__builtin_memcpy(tuple->saddr, &ip.saddr, 4);
		__builtin_memcpy(tuple->daddr, &ip.daddr, 4);
		hdr_len = (first & 0xf) * 4; /* ihl, from the byte read above */
		if (bpf_ntohs(ip.frag_off) & 0x1fff) /* fragment offset */
			hdr_len = PORTS_UNKNOWN;
	} else if ((first >> 4) == 6) {
		struct ipv6hdr ip6;

		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), l3))
			return;
		tuple->l3_proto = ETH_P_IPV6;
		tuple->l4_proto = ip6.nexthdr;
		__builtin_memcpy(tuple->saddr, &ip6.saddr, 16);
		__builtin_memcpy(tuple->daddr, &ip6.daddr, 16);
		hdr_len = ipv6_l4_offset(l3, &tuple->l4_proto);
	} else {
		return;
	}

	if (hdr_len == PORTS_UNKNOWN)
		return;
	if (l4_off != SKB_HDR_UNSET && l4_off > l3_off && l4_off - l3_off >= hdr_len)
		set_ports(tuple, head + l4_off);
	else
		set_ports(tuple, l3 + hdr_len);
}

static __always_inline void set_tuple(struct sk_buff *skb, struct skb_tuple *tuple)
{
	tuple_at(BPF_CORE_READ(skb, head), BPF_CORE_READ(skb, network_header), BPF_CORE_READ(skb, transport_header),
		 tuple);
}

/* --output-tunnel: the inner packet's tuple, when the skb carries one (see filter_pcap_tunnel). */
static __always_inline void set_tunnel(struct sk_buff *skb, struct skb_tuple *tuple)
{
	__u16 l3_off = BPF_CORE_READ(skb, inner_network_header);

	if (l3_off == 0)
		return;
	tuple_at(BPF_CORE_READ(skb, head), l3_off, BPF_CORE_READ(skb, inner_transport_header), tuple);
}

/* How the caller's return address is found (a compile-time constant per program family). */
enum caller_mode {
	CALLER_KPROBE, /* at function entry the return address is the word at the stack pointer */
	CALLER_FENTRY, /* bpf_get_stack: the frame after the traced function's own (func_ip .. func_ip+16) */
	CALLER_TP,     /* bpf_get_stack skipping TP_CALLER_SKIP frames: the function that fired the tracepoint */
	CALLER_PROG,   /* fentry/fexit on a BPF program: as CALLER_FENTRY, from the program's address */
	CALLER_NONE,   /* program types with only bpf_base_func_proto helpers (netfilter): no stack helpers, no
			* get_current_pid_tgid/comm; pid and comm come from bpf_get_current_task, no stack, no caller */
};

/* fentry, fexit: the traced function's address (bpf_get_func_ip, 5.15+), else the load's probe id */
static __always_inline __u64 fentry_func_ip(void *ctx)
{
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_func_ip))
		return bpf_get_func_ip(ctx);
	return cfg_probe_id;
}

static __always_inline __u64 get_caller(void *ctx, enum caller_mode mode, __u64 func_ip)
{
	__u64 frames[CALLER_FRAMES] = {};
	__u64 caller = 0;
	long n;

	if (mode == CALLER_KPROBE) {
		bpf_probe_read_kernel(&caller, sizeof(caller), (void *)PT_REGS_SP((struct pt_regs *)ctx));
		return caller;
	}

	if (mode == CALLER_TP) {
		n = bpf_get_stack(ctx, frames, sizeof(frames[0]), TP_CALLER_SKIP & BPF_F_SKIP_FIELD_MASK);
		return n > 0 ? frames[0] : 0;
	}

	if (mode == CALLER_PROG)
		func_ip = fentry_func_ip(ctx);
	n = bpf_get_stack(ctx, frames, sizeof(frames), 0);
	if (n <= 0)
		return 0;

	/* fentry: frames are [bpf program..., trampoline, traced function (+call insn), caller, ...] */
	for (int i = 0; i < CALLER_FRAMES - 1; i++) {
		if (frames[i] > func_ip && frames[i] <= func_ip + 16)
			return frames[i + 1];
	}
	return 0;
}

/* ---- skb tracking ---- */
static __always_inline bool is_tracked(__u64 addr)
{
	return bpf_map_lookup_elem(&tracked, &addr) != 0;
}

static __always_inline void track(__u64 addr)
{
	__u8 one = 1;
	__u32 zero = 0;

	if (bpf_map_update_elem(&tracked, &addr, &one, BPF_ANY) == 0)
		return;
	__u64 *count = bpf_map_lookup_elem(&track_full, &zero);

	if (count)
		*count += 1;
}

static __always_inline __u64 call_chain(void)
{
	return bpf_get_current_task();
}

/* The skb's end: it leaves the tracked set, and the call chain that worked on it forgets it. */
static __always_inline void untrack(__u64 addr)
{
	if (cfg_track_skb)
		bpf_map_delete_elem(&tracked, &addr);
	if (cfg_track_stackid) {
		__u64 *chain = bpf_map_lookup_elem(&skb_chain, &addr);

		if (chain) {
			__u64 key = *chain;
			__u64 *skb = bpf_map_lookup_elem(&chain_skb, &key);

			if (skb && *skb == addr)
				bpf_map_delete_elem(&chain_skb, &key);
			bpf_map_delete_elem(&skb_chain, &addr);
		}
	}
}

/* --output-journey: tell user space which skb the new one was made from (a lost record is counted in lost). */
static __always_inline void emit_copy(__u64 old, __u64 new, __u64 probe, __u8 probe_kind)
{
	struct skb_copy *rec;

	rec = bpf_ringbuf_reserve(&events, sizeof(*rec), 0);
	if (!rec) {
		count_lost();
		return;
	}
	__builtin_memset(rec, 0, sizeof(*rec));
	rec->hdr.ts = bpf_ktime_get_ns();
	rec->hdr.skb = new;
	rec->hdr.probe = probe;
	rec->hdr.type = PWRU_RECORD_SKB_COPY;
	rec->hdr.size = sizeof(*rec);
	rec->hdr.probe_kind = probe_kind;
	rec->parent = old;
	bpf_ringbuf_submit(rec, 0);
}

/* --output-journey: a tracked skb ended (before it leaves the tracked set). */
static __always_inline void end_tracked(__u64 skb, __u64 probe, __u8 probe_kind)
{
	struct skb_free *rec;

	if (!cfg_output_journey || !is_tracked(skb))
		return;
	rec = bpf_ringbuf_reserve(&events, sizeof(*rec), 0);
	if (!rec) {
		count_lost();
		return;
	}
	__builtin_memset(rec, 0, sizeof(*rec));
	rec->hdr.ts = bpf_ktime_get_ns();
	rec->hdr.skb = skb;
	rec->hdr.probe = probe;
	rec->hdr.type = PWRU_RECORD_SKB_FREE;
	rec->hdr.size = sizeof(*rec);
	rec->hdr.probe_kind = probe_kind;
	bpf_ringbuf_submit(rec, 0);
}

/* A copy of a tracked skb (clone, copy, veth's rebuild for XDP) is tracked too. */
static __always_inline void track_copy(__u64 old, __u64 new, __u64 probe, __u8 probe_kind)
{
	if (!(old && new && old != new && is_tracked(old)))
		return;
	track(new);
	if (cfg_output_journey)
		emit_copy(old, new, probe, probe_kind);
}

/* Whether the skb is shown: tracked (by address, or as the skb its call chain works on), else by the filters.
 * An skb that passes the filters joins the tracked set and becomes its call chain's skb. */
static __always_inline bool skb_selected(struct sk_buff *skb, bool has_chain)
{
	__u64 addr = (__u64)skb;
	__u64 chain = 0;

	if (cfg_track_skb && is_tracked(addr))
		goto selected;
	if (cfg_track_stackid && has_chain) {
		chain = call_chain();
		if (bpf_map_lookup_elem(&chain_skb, &chain))
			return true; /* the chain's own skb stays its skb (pwru's meaning) */
	}
	if (!filter_skb(skb))
		return false;
	if (cfg_track_skb)
		track(addr);
selected:
	if (cfg_track_stackid && has_chain) {
		chain = call_chain();
		bpf_map_update_elem(&chain_skb, &chain, &addr, BPF_ANY);
		bpf_map_update_elem(&skb_chain, &addr, &chain, BPF_ANY);
	}
	return true;
}

/* ---- struct dumps (--output-skb, --output-skb-shared-info) ---- */
/* One struct of the skb printed by the kernel (bpf_snprintf_btf, kernel >= 5.10; tracing program types only:
 * kprobe, fentry, tp_btf), sent as a struct skb_dump with the header of the event that follows it. The type
 * ids are the running kernel's (CO-RE). The text is cut at the buffer's end (the kernel NUL-terminates it). */
static __always_inline void dump_struct(struct sk_buff *skb, const struct record_header *hdr, __u32 kind)
{
	const __u64 cap = cfg_percpu_buf - sizeof(struct skb_dump); /* bytes of text the buffer holds */
	struct btf_ptr p = {};
	struct skb_dump *d;
	__u32 zero = 0;
	__u64 size;
	long n;

	d = bpf_map_lookup_elem(&dump_buf, &zero);
	if (!d)
		return;
	if (kind == PWRU_DUMP_SK_BUFF) {
		p.ptr = skb;
		p.type_id = bpf_core_type_id_kernel(struct sk_buff);
	} else {
		/* skb_shared_info sits at the end of the data: head + end (end is an offset on 64-bit kernels) */
		p.ptr = BPF_CORE_READ(skb, head) + BPF_CORE_READ(skb, end);
		p.type_id = bpf_core_type_id_kernel(struct skb_shared_info);
	}
	n = bpf_snprintf_btf(d->text, cap, &p, sizeof(p), 0);
	if (n < 0)
		return;
	size = (__u64)n + 1; /* with the NUL */
	if (size > cap)
		size = cap;
	d->hdr = *hdr;
	d->hdr.type = PWRU_RECORD_SKB_DUMP;
	d->hdr.size = sizeof(struct skb_dump) + size;
	d->kind = kind;
	d->len = n;
	if (bpf_ringbuf_output(&events, d, sizeof(struct skb_dump) + size, 0))
		count_lost();
}

/* ---- --output-pcap ---- */
#define ETH_HLEN 14
#define VLAN_HLEN 4
#define ARPHRD_ETHER 1
#define ARPHRD_LOOPBACK 772

static __always_inline void count_pcap_lost(void)
{
	__u32 zero = 0;
	__u64 *count = bpf_map_lookup_elem(&pcap_lost, &zero);

	if (count)
		*count += 1;
}

/* n bounded by PWRU_PCAP_SNAPLEN_MAX in the very register the helpers get (clang may not keep a C min() in
 * one register, and every kernel's verifier follows this form). */
static __always_inline __u64 pcap_bound(__u64 n)
{
	asm volatile("if %0 <= %1 goto +1\n\t%0 = %1" : "+r"(n) : "i"(PWRU_PCAP_SNAPLEN_MAX));
	return n;
}

/* Where the packet's bytes start (an offset from skb->head) and their link type. From the MAC header when it is
 * set and is an Ethernet header (an Ethernet or loopback device; 14 bytes, or 18/22 with VLAN tags, before the
 * network header); else from the network header when it is set and lies in the linear data (its version nibble
 * then gives IPv4 or IPv6, checked by the caller); else no bytes. */
static __always_inline __u16 pcap_start(struct sk_buff *skb, __u32 tail, __u32 *start)
{
	__u16 mac = BPF_CORE_READ(skb, mac_header);
	__u16 net = BPF_CORE_READ(skb, network_header);
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	__u16 dev_type = dev ? BPF_CORE_READ(dev, type) : 0;

	/* An skb is made with network_header 0 (at head, inside the headroom): not set yet. */
	if (net == SKB_HDR_UNSET || net == 0 || net >= tail)
		return PWRU_LINKTYPE_RAW;
	if (mac != SKB_HDR_UNSET && (dev_type == ARPHRD_ETHER || dev_type == ARPHRD_LOOPBACK) && net > mac) {
		__u16 l2 = net - mac;

		if (l2 == ETH_HLEN || l2 == ETH_HLEN + VLAN_HLEN || l2 == ETH_HLEN + 2 * VLAN_HLEN) {
			*start = mac;
			return PWRU_LINKTYPE_ETHERNET;
		}
	}
	*start = net;
	return PWRU_LINKTYPE_IPV4; /* or IPv6: the caller reads the version */
}

/* The struct packet of the event about to be sent (same ts, skb, probe). */
static __always_inline void emit_packet(struct sk_buff *skb, __u64 ts, __u64 probe, __u8 probe_kind)
{
	__u32 zero = 0;
	__u32 *nest = bpf_map_lookup_elem(&pcap_nest, &zero);
	struct packet *pkt;
	__u32 level;

	if (!nest)
		return;
	level = *nest;
	if (level >= PCAP_NEST_MAX) {
		count_pcap_lost();
		return;
	}
	*nest = level + 1;
	pkt = bpf_map_lookup_elem(&pcap_scratch, &level);
	if (pkt) {
		unsigned char *head = BPF_CORE_READ(skb, head);
		__u32 tail = BPF_CORE_READ(skb, tail);
		__u32 data_off = BPF_CORE_READ(skb, data) - head;
		__u32 len = BPF_CORE_READ(skb, len);
		struct net_device *dev = BPF_CORE_READ(skb, dev);
		__u32 start = data_off;
		__u16 linktype = pcap_start(skb, tail, &start);
		__u64 n = 0;
		__s64 orig;

		pkt->hdr.ts = ts;
		pkt->hdr.skb = (__u64)skb;
		pkt->hdr.probe = probe;
		pkt->hdr.type = PWRU_RECORD_PACKET;
		pkt->hdr.probe_kind = probe_kind;
		pkt->netns = skb_netns(skb);
		pkt->ifindex = 0;
		pkt->ifname[0] = 0;
		if (dev) {
			pkt->ifindex = BPF_CORE_READ(dev, ifindex);
			bpf_core_read_str(pkt->ifname, sizeof(pkt->ifname), &dev->name);
		}
		if (linktype != PWRU_LINKTYPE_RAW) {
			n = tail - start;
			if (n > cfg_pcap_snaplen)
				n = cfg_pcap_snaplen;
			n = pcap_bound(n);
			if (n && bpf_probe_read_kernel(pkt->data, n, head + start))
				n = 0;
			if (n && linktype != PWRU_LINKTYPE_ETHERNET) {
				__u8 version = pkt->data[0] >> 4;

				linktype = version == 4 ? PWRU_LINKTYPE_IPV4 : version == 6 ? PWRU_LINKTYPE_IPV6 : 0;
			}
			if (n == 0 || linktype == 0) {
				n = 0;
				linktype = PWRU_LINKTYPE_RAW;
				start = data_off;
			}
		}
		orig = (__s64)len + data_off - start;
		pkt->orig_len = orig < (__s64)n ? n : orig;
		pkt->linktype = linktype;
		pkt->hdr.size = sizeof(*pkt) + n;
		if (bpf_ringbuf_output(&events, pkt, sizeof(*pkt) + n, 0))
			count_pcap_lost();
	}
	*nest = level;
}

/* ---- netfilter drop attribution ---- */
/* The hook of a netfilter drop: *pf = NFPROTO_*, *hook = NF_INET_*; 0 and -1 when not one or unknown. */
static __always_inline void nf_drop_hook(__u64 skb, __s64 reason, __u8 *pf, __s8 *hook)
{
	struct nf_where *w;

	*pf = 0;
	*hook = -1;
	if (!cfg_nf_attrib || !cfg_nf_drop_reason || reason != cfg_nf_drop_reason)
		return;
	w = bpf_map_lookup_elem(&nf_where, &skb);
	if (!w)
		return;
	*pf = w->pf;
	*hook = w->hook;
}

/* An skb's end: no later skb at its address inherits its hook (a lookup first: it takes no lock). */
static __always_inline void nf_forget(__u64 skb)
{
	if (cfg_nf_attrib && bpf_map_lookup_elem(&nf_where, &skb))
		bpf_map_delete_elem(&nf_where, &skb);
}

/* ---- --summary ---- */
/* Count one end of a selected skb. The per-CPU slot is added to atomically: a program on this CPU may be
 * interrupted by another one counting the same key (a tracepoint in an interrupt). */
static __always_inline void count_end(__u64 skb, __u8 verdict, __s64 reason, __u64 location)
{
	struct summary_key key = {};
	__u64 one = 1, *n;
	__u32 slot = verdict;
	long err;

	key.verdict = verdict;
	key.nf_hook = -1;
	if (verdict == PWRU_VERDICT_DROPPED) {
		key.reason = reason < 0 ? 0xffffffff : (__u32)reason;
		nf_drop_hook(skb, reason, &key.nf_pf, &key.nf_hook);
		key.location = key.nf_hook >= 0 ? 0 : location;
	}
	n = bpf_map_lookup_elem(&summary, &key);
	if (n) {
		__sync_fetch_and_add(n, 1);
		return;
	}
	err = bpf_map_update_elem(&summary, &key, &one, BPF_NOEXIST);
	if (err == 0)
		return;
	if (err == -EEXIST) { /* another CPU made the key meanwhile */
		n = bpf_map_lookup_elem(&summary, &key);
		if (n) {
			__sync_fetch_and_add(n, 1);
			return;
		}
	}
	n = bpf_map_lookup_elem(&summary_full, &slot);
	if (n)
		__sync_fetch_and_add(n, 1);
}

/* *(u64 *)(base + off), 0 when unreadable (base 0 included). */
static __always_inline __u64 read_ptr(__u64 base, __u32 off)
{
	__u64 v = 0;

	if (base)
		bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
	return v;
}

/* The names of a walk's table (iptables) or base chain and its table (nftables). */
static __always_inline void nf_walk_names(__u64 priv, __u8 kind, char *table, char *chain)
{
	if (kind == NF_WALK_XT) {
		bpf_probe_read_kernel_str(table, PWRU_NF_NAME_LEN, (void *)(priv + cfg_off_xt_table_name));
	} else {
		__u64 t = read_ptr(priv, cfg_off_nft_chain_table);

		bpf_probe_read_kernel_str(chain, PWRU_NF_NAME_LEN, (void *)read_ptr(priv, cfg_off_nft_chain_name));
		bpf_probe_read_kernel_str(table, PWRU_NF_NAME_LEN, (void *)read_ptr(t, cfg_off_nft_table_name));
	}
}

/* A drop event takes the table/chain whose verdict DROP its skb got last (and no later drop takes it again), or,
 * when the walk in progress on this task is for this skb, that walk's: nftables frees a dropped skb itself
 * (NF_DROP_REASON, returning NF_STOLEN) before nft_do_chain returns. */
static __always_inline void nf_drop_rule(__u64 skb, struct event *ev)
{
	struct nf_rule *r = bpf_map_lookup_elem(&nf_rule, &skb);
	__u64 key = bpf_get_current_pid_tgid();
	struct nf_walk *w;

	if (r) {
		__builtin_memcpy(ev->nf_table, r->table, sizeof(ev->nf_table));
		__builtin_memcpy(ev->nf_chain, r->chain, sizeof(ev->nf_chain));
		bpf_map_delete_elem(&nf_rule, &skb);
		return;
	}
	w = bpf_map_lookup_elem(&nf_stash, &key);
	if (w && w->skb == skb && w->priv) {
		nf_walk_names(w->priv, w->kind, ev->nf_table, ev->nf_chain);
		w->priv = 0; /* taken: the free path's later events with a reason (skb_release_data) do not repeat it */
	}
}

/* ---- the shared handler ---- */
/* Reserve, fill and submit the event of an skb already selected, stamped ts (a record sent before it, such as
 * struct bpfmap_op, shares it); caller, when not 0, is the caller already known (a return probe's, kept from
 * the entry). */
static __always_inline int emit_skb_at(void *ctx, struct sk_buff *skb, __u64 ts, __u64 probe, __u8 probe_kind,
				       __s64 reason, __u64 location, enum caller_mode mode, __s32 prog_ret,
				       __u8 prog_ret_kind, __u64 caller)
{
	struct record_header hdr = {
		.ts = ts,
		.skb = (__u64)skb,
		.probe = probe,
		.type = PWRU_RECORD_EVENT,
		.size = sizeof(struct event) + cfg_metadata_size,
		.probe_kind = probe_kind,
	};
	struct event *ev;

	/* The dumps and the packet first: in the ring they precede their event, which user space pairs them with
	 * (an event that ends a run, at the line limit, never waits for one still unread). Netfilter programs
	 * lack the helper the dumps need. */
	if (cfg_output_skb && mode != CALLER_NONE)
		dump_struct(skb, &hdr, PWRU_DUMP_SK_BUFF);
	if (cfg_output_shinfo && mode != CALLER_NONE)
		dump_struct(skb, &hdr, PWRU_DUMP_SKB_SHARED_INFO);
	if (cfg_output_pcap)
		emit_packet(skb, hdr.ts, probe, probe_kind);

	/* cfg_metadata_size is read from frozen .rodata: the verifier knows it, as reserve's constant size needs. */
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev) + cfg_metadata_size, 0);
	if (!ev) {
		count_lost();
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));

	ev->hdr = hdr;
	ev->location = location;
	ev->reason = reason;
	nf_drop_hook((__u64)skb, reason, &ev->nf_pf, &ev->nf_hook);
	if ((cfg_nf_rules == 1 && reason >= 0) || cfg_nf_rules == 2)
		nf_drop_rule((__u64)skb, ev);
	ev->cpu = bpf_get_smp_processor_id();
	if (mode == CALLER_NONE) {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();

		ev->pid = BPF_CORE_READ(task, tgid);
		BPF_CORE_READ_STR_INTO(&ev->comm, task, comm);
	} else {
		ev->pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	}
	ev->stack_id = -1;
	if (cfg_output_stack && mode != CALLER_NONE) {
		/* Two different stacks can hash to one bucket: the second gets -EEXIST. Then take the bucket over
		 * (the stack it held was most likely printed already) rather than print an event without a stack. */
		ev->stack_id = bpf_get_stackid(ctx, &stacks, 0);
		if (ev->stack_id == -EEXIST)
			ev->stack_id = bpf_get_stackid(ctx, &stacks, BPF_F_REUSE_STACKID);
	}
	if (cfg_output_caller && mode != CALLER_NONE)
		ev->caller = caller ? caller : get_caller(ctx, mode, probe);
	if (cfg_output_meta)
		set_meta(skb, &ev->meta);
	if (cfg_output_tuple)
		set_tuple(skb, &ev->tuple);
	if (cfg_output_tunnel)
		set_tunnel(skb, &ev->tunnel);
	if (cfg_metadata_size)
		set_skb_metadata(skb, ev->metadata);
	ev->prog_ret = prog_ret;
	ev->prog_ret_kind = prog_ret_kind;

	bpf_ringbuf_submit(ev, 0);
	return 0;
}

static __always_inline int emit_skb_ret(void *ctx, struct sk_buff *skb, __u64 probe, __u8 probe_kind, __s64 reason,
					__u64 location, enum caller_mode mode, __s32 prog_ret, __u8 prog_ret_kind)
{
	return emit_skb_at(ctx, skb, bpf_ktime_get_ns(), probe, probe_kind, reason, location, mode, prog_ret,
			   prog_ret_kind, 0);
}

static __always_inline int emit_skb(void *ctx, struct sk_buff *skb, __u64 probe, __u8 probe_kind, __s64 reason,
				    __u64 location, enum caller_mode mode)
{
	return emit_skb_ret(ctx, skb, probe, probe_kind, reason, location, mode, 0, PWRU_PROG_RET_NONE);
}

/* Every skb probe's handler: selection (tracking, filters), then the event. */
static __always_inline int handle_skb(void *ctx, struct sk_buff *skb, __u64 probe, __u8 probe_kind, __s64 reason,
				      __u64 location, enum caller_mode mode)
{
	if (!skb || !skb_selected(skb, true) || !cfg_emit)
		return 0;
	return emit_skb(ctx, skb, probe, probe_kind, reason, location, mode);
}

/* ---- kprobe / kprobe-multi ---- */
static __always_inline __u64 kprobe_func_ip(struct pt_regs *ctx)
{
	/* bpf_get_func_ip for kprobes exists since 5.15; before that the ip is just past the probed instruction
	 * and user space resolves the nearest symbol. */
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_func_ip))
		return bpf_get_func_ip(ctx);
	return PT_REGS_IP(ctx);
}

#define KPROBE_SKB(n)                                                                                        \
	SEC("kprobe/skb_" #n)                                                                                \
	int kprobe_skb_##n(struct pt_regs *ctx)                                                              \
	{                                                                                                    \
		struct sk_buff *skb = (struct sk_buff *)PT_REGS_PARM##n(ctx);                                \
		return handle_skb(ctx, skb, kprobe_func_ip(ctx), PWRU_PROBE_ADDR, -1, 0, CALLER_KPROBE);      \
	}

KPROBE_SKB(1)
KPROBE_SKB(2)
KPROBE_SKB(3)
KPROBE_SKB(4)
KPROBE_SKB(5)

#define KPROBE_SKB_REASON(n, r)                                                                              \
	SEC("kprobe/skb_" #n "_reason_" #r)                                                                  \
	int kprobe_skb_##n##_reason_##r(struct pt_regs *ctx)                                                 \
	{                                                                                                    \
		struct sk_buff *skb = (struct sk_buff *)PT_REGS_PARM##n(ctx);                                \
		__s64 reason = (__u32)PT_REGS_PARM##r(ctx);                                                  \
		return handle_skb(ctx, skb, kprobe_func_ip(ctx), PWRU_PROBE_ADDR, reason, 0, CALLER_KPROBE);  \
	}

KPROBE_SKB_REASON(1, 2) /* kfree_skb_reason */
KPROBE_SKB_REASON(2, 3) /* sk_skb_reason_drop */

/* ---- fentry ---- */

/* What fentry_func_ip returns: an address, or the load's probe id where the kernel lacks bpf_get_func_ip
 * (the tracking probes' loads get their probe index; the skb probes' get the address, see backends.py). */
static __always_inline __u8 fentry_probe_kind(void)
{
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_func_ip))
		return PWRU_PROBE_ADDR;
	return PWRU_PROBE_INDEX;
}

#define FENTRY_SKB(n)                                                                                        \
	SEC("fentry/placeholder")                                                                            \
	int fentry_skb_##n(__u64 *ctx)                                                                       \
	{                                                                                                    \
		struct sk_buff *skb = (struct sk_buff *)ctx[(n) - 1];                                        \
		return handle_skb(ctx, skb, fentry_func_ip(ctx), PWRU_PROBE_ADDR, -1, 0, CALLER_FENTRY);      \
	}

FENTRY_SKB(1)
FENTRY_SKB(2)
FENTRY_SKB(3)
FENTRY_SKB(4)
FENTRY_SKB(5)

#define FENTRY_SKB_REASON(n, r)                                                                              \
	SEC("fentry/placeholder")                                                                            \
	int fentry_skb_##n##_reason_##r(__u64 *ctx)                                                          \
	{                                                                                                    \
		struct sk_buff *skb = (struct sk_buff *)ctx[(n) - 1];                                        \
		__s64 reason = (__u32)ctx[(r) - 1];                                                          \
		return handle_skb(ctx, skb, fentry_func_ip(ctx), PWRU_PROBE_ADDR, reason, 0, CALLER_FENTRY);  \
	}

FENTRY_SKB_REASON(1, 2)
FENTRY_SKB_REASON(2, 3)

/* ---- tc and XDP programs (--filter-trace-tc, --filter-trace-xdp) ---- */
/* fentry and fexit with a loaded tc or XDP program as the target (attach_prog_fd, its entry function's BTF id);
 * cfg_probe_id names the program. The entry selects the packet (filters, tracking) and remembers it per CPU;
 * the exit shows the same packet again with the program's return value (the verdict), whatever the program
 * rewrote meanwhile. A tail-called program is reached without its trampoline: only entry programs are seen. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} prog_entered SEC(".maps");

static __always_inline void prog_enter(__u64 ctx_addr)
{
	__u32 zero = 0;
	__u64 *entered = bpf_map_lookup_elem(&prog_entered, &zero);

	if (entered)
		*entered = ctx_addr;
}

/* Whether the program's entry selected this packet (the slot is taken). */
static __always_inline bool prog_exit(__u64 ctx_addr)
{
	__u32 zero = 0;
	__u64 *entered = bpf_map_lookup_elem(&prog_entered, &zero);

	if (!entered || *entered != ctx_addr)
		return false;
	*entered = 0;
	return true;
}

SEC("fentry/placeholder")
int fentry_tc(__u64 *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx[0];

	if (!skb || !skb_selected(skb, true))
		return 0;
	prog_enter((__u64)skb);
	if (cfg_emit)
		emit_skb(ctx, skb, cfg_probe_id, PWRU_PROBE_INDEX, -1, 0, CALLER_PROG);
	return 0;
}

SEC("fexit/placeholder")
int fexit_tc(__u64 *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx[0];

	if (!skb || !prog_exit((__u64)skb) || !cfg_emit)
		return 0;
	return emit_skb_ret(ctx, skb, cfg_probe_id, PWRU_PROBE_INDEX, -1, 0, CALLER_PROG, (__s32)ctx[1],
			    PWRU_PROG_RET_TC);
}

#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8

static __always_inline bool xdp_selected(struct xdp_buff *xdp)
{
	struct net_device *dev = BPF_CORE_READ(xdp, rxq, dev);
	void *data, *data_end;

	if (cfg_netns && BPF_CORE_READ(dev, nd_net.net, ns.inum) != cfg_netns)
		return false;
	if (cfg_ifindex && BPF_CORE_READ(dev, ifindex) != cfg_ifindex)
		return false;
	if (cfg_has_pcap) {
		/* The filter's ancillary loads read an skb: there is none (they read as 0). */
		data = BPF_CORE_READ(xdp, data);
		data_end = BPF_CORE_READ(xdp, data_end);
		if (!filter_pcap_l2(data, data_end, (struct sk_buff *)0))
			return false;
	}
	if (cfg_has_xdp_expr && !filter_xdp_expr(xdp))
		return false;
	return true;
}

/* An XDP program's packet as an event: hdr.skb is the xdp_buff's address; the meta columns from the receiving
 * device and the frame (LEN: data_end - data; PROTO: the Ethernet type after at most one VLAN tag); the tuple
 * from the IP header after the Ethernet header. */
static __always_inline int emit_xdp(void *ctx, struct xdp_buff *xdp, __s32 prog_ret, __u8 prog_ret_kind)
{
	struct net_device *dev = BPF_CORE_READ(xdp, rxq, dev);
	unsigned char *data = BPF_CORE_READ(xdp, data);
	unsigned char *data_end = BPF_CORE_READ(xdp, data_end);
	__u16 l3_off = ETH_HLEN;
	__u16 proto = 0;
	struct event *ev;

	ev = bpf_ringbuf_reserve(&events, sizeof(*ev) + cfg_metadata_size, 0);
	if (!ev) {
		count_lost();
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->xdp_ctx = 1;
	if (cfg_xdp_metadata)
		set_xdp_metadata(xdp, ev->metadata);
	else if (cfg_metadata_size) /* --output-skb-metadata alone: there is no skb; its reads from NULL give 0 */
		set_skb_metadata((struct sk_buff *)0, ev->metadata);
	ev->hdr.ts = bpf_ktime_get_ns();
	ev->hdr.skb = (__u64)xdp;
	ev->hdr.probe = cfg_probe_id;
	ev->hdr.type = PWRU_RECORD_EVENT;
	ev->hdr.size = sizeof(struct event) + cfg_metadata_size;
	ev->hdr.probe_kind = PWRU_PROBE_INDEX;
	ev->reason = -1;
	ev->nf_hook = -1;
	ev->cpu = bpf_get_smp_processor_id();
	ev->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	ev->stack_id = -1;
	if (cfg_output_stack) {
		ev->stack_id = bpf_get_stackid(ctx, &stacks, 0);
		if (ev->stack_id == -EEXIST)
			ev->stack_id = bpf_get_stackid(ctx, &stacks, BPF_F_REUSE_STACKID);
	}
	if (cfg_output_caller)
		ev->caller = get_caller(ctx, CALLER_PROG, 0);
	bpf_probe_read_kernel(&proto, sizeof(proto), data + 12);
	proto = bpf_ntohs(proto);
	if (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
		bpf_probe_read_kernel(&proto, sizeof(proto), data + 16);
		proto = bpf_ntohs(proto);
		l3_off += VLAN_HLEN;
	}
	if (cfg_output_meta) {
		ev->meta.netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
		ev->meta.ifindex = BPF_CORE_READ(dev, ifindex);
		ev->meta.mtu = BPF_CORE_READ(dev, mtu);
		bpf_core_read_str(ev->meta.ifname, sizeof(ev->meta.ifname), &dev->name);
		ev->meta.len = data_end - data;
		ev->meta.protocol = proto;
	}
	if (cfg_output_tuple && (proto == ETH_P_IP || proto == ETH_P_IPV6))
		tuple_at(data, l3_off, SKB_HDR_UNSET, &ev->tuple);
	ev->prog_ret = prog_ret;
	ev->prog_ret_kind = prog_ret_kind;
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

SEC("fentry/placeholder")
int fentry_xdp(__u64 *ctx)
{
	struct xdp_buff *xdp = (struct xdp_buff *)ctx[0];

	if (!xdp || !xdp_selected(xdp))
		return 0;
	prog_enter((__u64)xdp);
	if (cfg_emit)
		emit_xdp(ctx, xdp, 0, PWRU_PROG_RET_NONE);
	return 0;
}

SEC("fexit/placeholder")
int fexit_xdp(__u64 *ctx)
{
	struct xdp_buff *xdp = (struct xdp_buff *)ctx[0];

	if (!xdp || !prog_exit((__u64)xdp) || !cfg_emit)
		return 0;
	return emit_xdp(ctx, xdp, (__s32)ctx[1], PWRU_PROG_RET_XDP);
}

/* ---- the tc chain view (--filter-trace-tc-chain): tcx links first and last on each device ---- */
#define TCX_NEXT -1

/* Attached with tcx links before and after every other tcx program on a device's ingress or egress (kernels
 * that refuse fentry still allow them): the skb as the chain gets it and as it leaves it, so a rewrite by a tc
 * program in between shows as the tuple changing. cfg_probe_id names the point. A tc program's context is the
 * kernel's sk_buff (the verifier rewrites __sk_buff accesses onto it): read through probe reads as everywhere
 * else. tc programs have no stack helpers: as netfilter's, CALLER_NONE. It observes only: always TCX_NEXT. */
SEC("tc")
int tc_chain(struct __sk_buff *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx;

	if (skb_selected(skb, false) && cfg_emit)
		emit_skb(ctx, skb, cfg_probe_id, PWRU_PROBE_INDEX, -1, 0, CALLER_NONE);
	return TCX_NEXT;
}

/* ---- netfilter ---- */
#define NF_ACCEPT 1

/* Attached at the first and last priority of each IPv4/IPv6 hook, in each netns: one load per priority
 * (cfg_nf_point) serves every hook, which it reads from the hook state; the probe id of the point at that hook
 * (cfg_nf_probe_ids) names it. It observes only: whatever the filters say, the packet goes on. A selected skb's
 * hook is remembered from the first point to the last (nf_where), so a drop in between names its hook; a point
 * whose bit in cfg_nf_shown is clear keeps that state only and shows no event. */
SEC("netfilter")
int nf_skb(struct bpf_nf_ctx *ctx)
{
	const struct nf_hook_state *state = ctx->state;
	struct sk_buff *skb = ctx->skb;
	__u64 addr = (__u64)skb;
	__u8 hook = BPF_CORE_READ(state, hook);
	bool shown;

	if (!skb || hook >= NF_INET_HOOKS)
		return NF_ACCEPT;
	shown = cfg_emit && ((cfg_nf_shown >> hook) & 1);
	if (cfg_nf_point == NF_POINT_LAST) {
		nf_forget(addr); /* whatever the filters say: only selected skbs have an entry, and a lookup is cheap */
		if (!shown)
			return NF_ACCEPT; /* a point that keeps state only need not run the filters */
	}
	if (!skb_selected(skb, true))
		return NF_ACCEPT;
	if (cfg_nf_point == NF_POINT_FIRST) {
		struct nf_where w = {.pf = BPF_CORE_READ(state, pf), .hook = hook};

		bpf_map_update_elem(&nf_where, &addr, &w, BPF_ANY);
	}
	if (shown)
		emit_skb(ctx, skb, cfg_nf_probe_ids[hook], PWRU_PROBE_INDEX, -1, 0, CALLER_NONE);
	return NF_ACCEPT;
}

/* ---- tp_btf ---- */
/* ctx[pos - 1] for a 1-based position known at load time (frozen .rodata). The verifier requires constant
 * ctx offsets; clang would merge plain `ctx[k]` cases into one load from a computed address, so each case is
 * its own asm load with a literal offset. The verifier walks only the case the constant selects. */
#define CTX_LOAD(ctx, off)                                                                                   \
	({                                                                                                   \
		__u64 __v;                                                                                   \
		asm volatile("%0 = *(u64 *)(%1 + " #off ")" : "=r"(__v) : "r"(ctx));                         \
		__v;                                                                                         \
	})

static __always_inline __u64 tp_arg(__u64 *ctx, __u32 pos, __u64 dflt)
{
	switch (pos) {
	case 1: return CTX_LOAD(ctx, 0);
	case 2: return CTX_LOAD(ctx, 8);
	case 3: return CTX_LOAD(ctx, 16);
	case 4: return CTX_LOAD(ctx, 24);
	case 5: return CTX_LOAD(ctx, 32);
	case 6: return CTX_LOAD(ctx, 40);
	default: return dflt;
	}
}

SEC("tp_btf/placeholder")
int tp_skb(__u64 *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)tp_arg(ctx, cfg_tp_skb_pos, 0);
	__s64 reason = cfg_tp_reason_pos ? (__s64)(__u32)tp_arg(ctx, cfg_tp_reason_pos, 0) : -1;
	__u64 location = tp_arg(ctx, cfg_tp_location_pos, 0);

	if (skb && skb_selected(skb, true)) {
		if (cfg_summary && cfg_tp_verdict)
			count_end((__u64)skb, cfg_tp_verdict, reason, location);
		if (cfg_emit)
			emit_skb(ctx, skb, cfg_probe_id, PWRU_PROBE_INDEX, reason, location, CALLER_TP);
	}
	if (cfg_tp_verdict && skb)
		nf_forget((__u64)skb);
	if (cfg_tp_frees && skb)
		untrack((__u64)skb); /* after its event: the drop is shown for a tracked skb too */
	return 0;
}

/* ---- skb tracking: where skbs end, and where copies begin ----
 * Loaded only with --filter-track-skb or --filter-track-skb-by-stackid; user space picks the ones the kernel has. */

/* A free tracepoint (kfree_skb, consume_skb) that is not traced for events: only the end of the skb. */
SEC("tp_btf/placeholder")
int tp_skb_free(__u64 *ctx)
{
	__u64 skb = tp_arg(ctx, cfg_tp_skb_pos, 0);

	if (skb) {
		end_tracked(skb, cfg_probe_id, PWRU_PROBE_INDEX);
		untrack(skb);
		nf_forget(skb);
	}
	return 0;
}

/* Functions every freed skb passes (kfree_skbmem; napi_skb_cache_put for skbs kept for reuse). */
SEC("kprobe/skb_free")
int kprobe_skb_free(struct pt_regs *ctx)
{
	__u64 skb = PT_REGS_PARM1(ctx);

	if (skb) {
		end_tracked(skb, kprobe_func_ip(ctx), PWRU_PROBE_ADDR);
		untrack(skb);
	}
	return 0;
}

SEC("fentry/placeholder")
int fentry_skb_free(__u64 *ctx)
{
	if (ctx[0]) {
		end_tracked(ctx[0], fentry_func_ip(ctx), fentry_probe_kind());
		untrack(ctx[0]);
	}
	return 0;
}

/* struct sk_buff *skb_clone(struct sk_buff *skb, ...) and friends (skb_copy, __pskb_copy_fclone,
 * skb_copy_expand): the returned skb is a copy of the first argument. */
SEC("fexit/placeholder")
int fexit_skb_copy(__u64 *ctx)
{
	track_copy(ctx[0], tp_arg(ctx, cfg_ret_pos, 0), fentry_func_ip(ctx), fentry_probe_kind());
	return 0;
}

/* kprobe backends: the argument kept at entry, the copy taken at return. */
SEC("kprobe/skb_copy_entry")
int kprobe_skb_copy_entry(struct pt_regs *ctx)
{
	__u64 key = bpf_get_current_pid_tgid();
	struct stash_value v = {.skb = PT_REGS_PARM1(ctx)};

	v.probe = kprobe_func_ip(ctx);
	v.probe_kind = PWRU_PROBE_ADDR;
	if (is_tracked(v.skb))
		bpf_map_update_elem(&stash, &key, &v, BPF_ANY);
	return 0;
}

SEC("kretprobe/skb_copy")
int kretprobe_skb_copy(struct pt_regs *ctx)
{
	__u64 key = bpf_get_current_pid_tgid();
	struct stash_value *v = bpf_map_lookup_elem(&stash, &key);

	if (!v)
		return 0;
	track_copy(v->skb, PT_REGS_RC(ctx), v->probe, v->probe_kind);
	bpf_map_delete_elem(&stash, &key);
	return 0;
}

/* veth_convert_skb_to_xdp_buff(rq, xdp, struct sk_buff **pskb): veth may replace the skb it hands to XDP by a
 * new one (the talk's example); the new one inherits the old one's tracking. */
static __always_inline void stash_pskb(__u64 pskb, __u64 probe, __u8 probe_kind)
{
	__u64 key = bpf_get_current_pid_tgid();
	struct stash_value v = {.pskb = pskb, .probe = probe, .probe_kind = probe_kind};

	if (bpf_probe_read_kernel(&v.skb, sizeof(v.skb), (void *)pskb) || !is_tracked(v.skb))
		return;
	bpf_map_update_elem(&stash, &key, &v, BPF_ANY);
}

static __always_inline void track_pskb(void)
{
	__u64 key = bpf_get_current_pid_tgid();
	struct stash_value *v = bpf_map_lookup_elem(&stash, &key);
	__u64 new = 0;

	if (!v)
		return;
	if (bpf_probe_read_kernel(&new, sizeof(new), (void *)v->pskb) == 0)
		track_copy(v->skb, new, v->probe, v->probe_kind);
	bpf_map_delete_elem(&stash, &key);
}

SEC("kprobe/skb_replace_entry")
int kprobe_skb_replace_entry(struct pt_regs *ctx)
{
	stash_pskb(PT_REGS_PARM3(ctx), kprobe_func_ip(ctx), PWRU_PROBE_ADDR);
	return 0;
}

SEC("kretprobe/skb_replace")
int kretprobe_skb_replace(struct pt_regs *ctx)
{
	track_pskb();
	return 0;
}

SEC("fentry/placeholder")
int fentry_skb_replace_entry(__u64 *ctx)
{
	stash_pskb(ctx[2], fentry_func_ip(ctx), fentry_probe_kind());
	return 0;
}

SEC("fexit/placeholder")
int fexit_skb_replace(__u64 *ctx)
{
	track_pskb();
	return 0;
}

/* ---- netfilter table and chain attribution ----
 * The walk of a table (iptables, ip6tables: ipt_do_table, ip6t_do_table) or of a base chain (nftables:
 * nft_do_chain) returns the verdict; a DROP (NF_DROP in the low byte: nftables may carry an errno above it) is
 * remembered for the skb's drop event. Only skbs that are tracked or pass the filters are looked at. */
#define NF_DROP 0
#define NF_VERDICT_MASK 0xff

static __always_inline bool nf_wanted(__u64 skb)
{
	return skb && (is_tracked(skb) || filter_skb((struct sk_buff *)skb));
}

static __always_inline void nf_walk_end(__u64 skb, __u64 priv, __u8 kind, __u64 verdict)
{
	struct nf_rule r;

	if ((verdict & NF_VERDICT_MASK) != NF_DROP || !priv)
		return;
	__builtin_memset(&r, 0, sizeof(r));
	nf_walk_names(priv, kind, r.table, r.chain);
	bpf_map_update_elem(&nf_rule, &skb, &r, BPF_ANY);
}

static __always_inline void nf_walk_begin(__u64 skb, __u64 priv, __u8 kind)
{
	__u64 key = bpf_get_current_pid_tgid();
	struct nf_walk w = {.skb = skb, .priv = priv, .kind = kind};

	if (nf_wanted(skb))
		bpf_map_update_elem(&nf_stash, &key, &w, BPF_ANY);
}

/* 5.10: ipt_do_table(struct sk_buff *skb, const struct nf_hook_state *state, struct xt_table *table) */
SEC("kprobe/xt_table_skb_first")
int kprobe_xt_table_skb_first(struct pt_regs *ctx)
{
	nf_walk_begin(PT_REGS_PARM1(ctx), PT_REGS_PARM3(ctx), NF_WALK_XT);
	return 0;
}

/* 5.16+: ipt_do_table(void *priv, struct sk_buff *skb, const struct nf_hook_state *state) */
SEC("kprobe/xt_table_priv_first")
int kprobe_xt_table_priv_first(struct pt_regs *ctx)
{
	nf_walk_begin(PT_REGS_PARM2(ctx), PT_REGS_PARM1(ctx), NF_WALK_XT);
	return 0;
}

/* nft_do_chain(struct nft_pktinfo *pkt, void *priv) */
SEC("kprobe/nft_chain")
int kprobe_nft_chain(struct pt_regs *ctx)
{
	nf_walk_begin(read_ptr(PT_REGS_PARM1(ctx), cfg_off_nft_pkt_skb), PT_REGS_PARM2(ctx), NF_WALK_NFT);
	return 0;
}

SEC("kretprobe/nf_verdict")
int kretprobe_nf_verdict(struct pt_regs *ctx)
{
	__u64 key = bpf_get_current_pid_tgid();
	struct nf_walk *w = bpf_map_lookup_elem(&nf_stash, &key);

	if (!w)
		return 0;
	nf_walk_end(w->skb, w->priv, w->kind, PT_REGS_RC(ctx));
	bpf_map_delete_elem(&nf_stash, &key);
	return 0;
}

/* fentry backend (positions per load): the walk in progress at entry (a drop inside it looks it up), the
 * verdict at exit. */
static __always_inline __u64 nf_ctx_skb(__u64 *ctx)
{
	__u64 skb = tp_arg(ctx, cfg_nf_skb_pos, 0);

	return cfg_nf_kind == NF_WALK_NFT ? read_ptr(skb, cfg_off_nft_pkt_skb) : skb;
}

SEC("fentry/placeholder")
int fentry_nf_walk(__u64 *ctx)
{
	nf_walk_begin(nf_ctx_skb(ctx), tp_arg(ctx, cfg_nf_priv_pos, 0), cfg_nf_kind);
	return 0;
}

SEC("fexit/placeholder")
int fexit_nf_verdict(__u64 *ctx)
{
	__u64 key = bpf_get_current_pid_tgid();
	__u64 skb = nf_ctx_skb(ctx);

	if (bpf_map_lookup_elem(&nf_stash, &key))
		bpf_map_delete_elem(&nf_stash, &key);
	if (!nf_wanted(skb))
		return 0;
	nf_walk_end(skb, tp_arg(ctx, cfg_nf_priv_pos, 0), cfg_nf_kind, (__u32)tp_arg(ctx, cfg_ret_pos, 0));
	return 0;
}

/* --filter-non-skb-funcs: functions without an skb argument, shown with the skb their call chain works on. */
static __always_inline int handle_non_skb(void *ctx, __u64 probe, enum caller_mode mode)
{
	__u64 chain = call_chain();
	__u64 *skb = bpf_map_lookup_elem(&chain_skb, &chain);

	if (!skb)
		return 0;
	return emit_skb(ctx, (struct sk_buff *)*skb, probe, PWRU_PROBE_ADDR, -1, 0, mode);
}

SEC("kprobe/non_skb")
int kprobe_non_skb(struct pt_regs *ctx)
{
	return handle_non_skb(ctx, kprobe_func_ip(ctx), CALLER_KPROBE);
}

SEC("fentry/placeholder")
int fentry_non_skb(__u64 *ctx)
{
	return handle_non_skb(ctx, fentry_func_ip(ctx), CALLER_FENTRY);
}

/* ---- BPF map operations (--output-bpfmap) ----
 * Probes on the map functions loaded BPF programs call (user space finds them in the programs' instructions):
 * a lookup, update or delete made while the call chain works on a selected skb (chain_skb: call-chain
 * tracking is on) is sent as a struct bpfmap_op, then the skb's event at the map function. The first argument
 * of every such function is the map, the second the key, an update's third the value; a lookup returns the
 * value, or for __htab_map_lookup_elem (the call the verifier inlines for hash map lookups) the element,
 * whose value follows the key. own_maps: pwru's own maps (filled by user space after loading), whose
 * operations in pwru's programs are never shown.
 * bpfmap_lookup: a lookup between its entry and its return probe (kprobe backends), per CPU: a lookup does not
 * sleep, and a second one on the same CPU before the first returns (an interrupt's) would take its place. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
} own_maps SEC(".maps");

struct bpfmap_entry {
	__u64 map;
	__u64 key;
	__u64 skb;
	__u64 func;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfmap_entry);
} bpfmap_lookup SEC(".maps");

/* The selected skb this map operation is made for, or 0 (no skb in the call chain, or a map of pwru's). */
static __always_inline __u64 bpfmap_skb(__u64 map)
{
	__u64 chain = call_chain();
	__u64 *skb = bpf_map_lookup_elem(&chain_skb, &chain);
	__u32 id;

	if (!skb || !*skb || !map)
		return 0;
	id = BPF_CORE_READ((struct bpf_map *)map, id);
	if (bpf_map_lookup_elem(&own_maps, &id))
		return 0;
	return *skb;
}

static __always_inline __u32 bpfmap_bound(__u32 n)
{
	return n < PWRU_BPFMAP_DATA_MAX ? n : PWRU_BPFMAP_DATA_MAX;
}

static __always_inline void emit_bpfmap(void *ctx, __u64 skb, __u64 func, __u8 probe_kind, __u64 map, __u64 key,
					__u64 value, __u8 op, __u8 found, enum caller_mode mode, __u64 caller)
{
	struct bpf_map *m = (struct bpf_map *)map;
	__u64 ts = bpf_ktime_get_ns();
	struct bpfmap_op *rec;
	__u32 n;

	rec = bpf_ringbuf_reserve(&events, sizeof(*rec), 0);
	if (rec) {
		__builtin_memset(rec, 0, sizeof(*rec));
		rec->hdr.ts = ts;
		rec->hdr.skb = skb;
		rec->hdr.probe = func;
		rec->hdr.type = PWRU_RECORD_BPFMAP_OP;
		rec->hdr.size = sizeof(*rec);
		rec->hdr.probe_kind = probe_kind;
		rec->map_id = BPF_CORE_READ(m, id);
		rec->map_type = BPF_CORE_READ(m, map_type);
		rec->key_size = BPF_CORE_READ(m, key_size);
		rec->value_size = BPF_CORE_READ(m, value_size);
		BPF_CORE_READ_STR_INTO(&rec->map_name, m, name);
		rec->op = op;
		rec->found = found;
		n = bpfmap_bound(rec->key_size);
		if (key && n)
			bpf_probe_read_kernel(rec->key, n, (void *)key);
		n = bpfmap_bound(rec->value_size);
		if (value && n) {
			bpf_probe_read_kernel(rec->value, n, (void *)value);
			rec->value_read = 1;
		}
		bpf_ringbuf_submit(rec, 0);
	} else {
		count_lost(); /* the event still comes, without its map operation */
	}
	emit_skb_at(ctx, (struct sk_buff *)skb, ts, func, probe_kind, -1, 0, mode, 0, PWRU_PROG_RET_NONE, caller);
}

/* Where a lookup's value is: the returned pointer, or past an element's key (elem). A per-CPU hash map's element
 * holds a per-CPU pointer instead: no value is read for it (0). */
static __always_inline __u64 bpfmap_value(__u64 map, __u64 ret, bool elem)
{
	struct bpf_map *m = (struct bpf_map *)map;
	__u32 type;

	if (!ret || !elem)
		return ret;
	type = BPF_CORE_READ(m, map_type);
	if (type == BPF_MAP_TYPE_PERCPU_HASH || type == BPF_MAP_TYPE_LRU_PERCPU_HASH)
		return 0;
	return ret + bpf_core_field_offset(struct htab_elem, key) + ((BPF_CORE_READ(m, key_size) + 7) & ~7U);
}

static __always_inline int bpfmap_change(void *ctx, __u64 func, __u8 probe_kind, __u64 map, __u64 key, __u64 value,
					 __u8 op, enum caller_mode mode)
{
	__u64 skb = bpfmap_skb(map);

	if (skb)
		emit_bpfmap(ctx, skb, func, probe_kind, map, key, value, op, 0, mode, 0);
	return 0;
}

SEC("kprobe/bpfmap_update")
int kprobe_bpfmap_update(struct pt_regs *ctx)
{
	return bpfmap_change(ctx, kprobe_func_ip(ctx), PWRU_PROBE_ADDR, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx),
			     PT_REGS_PARM3(ctx), PWRU_BPFMAP_UPDATE, CALLER_KPROBE);
}

SEC("kprobe/bpfmap_delete")
int kprobe_bpfmap_delete(struct pt_regs *ctx)
{
	return bpfmap_change(ctx, kprobe_func_ip(ctx), PWRU_PROBE_ADDR, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0,
			     PWRU_BPFMAP_DELETE, CALLER_KPROBE);
}

SEC("kprobe/bpfmap_lookup_entry")
int kprobe_bpfmap_lookup_entry(struct pt_regs *ctx)
{
	__u64 map = PT_REGS_PARM1(ctx);
	__u64 skb = bpfmap_skb(map);
	__u32 zero = 0;
	struct bpfmap_entry *e = bpf_map_lookup_elem(&bpfmap_lookup, &zero);

	if (!e)
		return 0;
	e->skb = skb; /* 0: the return probe shows nothing */
	if (!skb)
		return 0;
	e->map = map;
	e->key = PT_REGS_PARM2(ctx);
	e->func = kprobe_func_ip(ctx);
	return 0;
}

static __always_inline int kretprobe_bpfmap(struct pt_regs *ctx, bool elem)
{
	__u32 zero = 0;
	struct bpfmap_entry *e = bpf_map_lookup_elem(&bpfmap_lookup, &zero);
	__u64 ret = PT_REGS_RC(ctx);
	__u64 skb;

	if (!e || !e->skb)
		return 0;
	skb = e->skb;
	e->skb = 0;
	/* At the return the kernel has put the real return address back as the instruction pointer (at the entry
	 * the word at the stack pointer may already be the return probe's trampoline). */
	emit_bpfmap(ctx, skb, e->func, PWRU_PROBE_ADDR, e->map, e->key, bpfmap_value(e->map, ret, elem),
		    PWRU_BPFMAP_LOOKUP, ret != 0, CALLER_KPROBE, PT_REGS_IP(ctx));
	return 0;
}

SEC("kretprobe/bpfmap_lookup")
int kretprobe_bpfmap_lookup(struct pt_regs *ctx)
{
	return kretprobe_bpfmap(ctx, false);
}

SEC("kretprobe/bpfmap_lookup_elem")
int kretprobe_bpfmap_lookup_elem(struct pt_regs *ctx)
{
	return kretprobe_bpfmap(ctx, true);
}

SEC("fentry/placeholder")
int fentry_bpfmap_update(__u64 *ctx)
{
	return bpfmap_change(ctx, fentry_func_ip(ctx), PWRU_PROBE_ADDR, ctx[0], ctx[1], ctx[2], PWRU_BPFMAP_UPDATE,
			     CALLER_FENTRY);
}

SEC("fentry/placeholder")
int fentry_bpfmap_delete(__u64 *ctx)
{
	return bpfmap_change(ctx, fentry_func_ip(ctx), PWRU_PROBE_ADDR, ctx[0], ctx[1], 0, PWRU_BPFMAP_DELETE,
			     CALLER_FENTRY);
}

/* fexit: the arguments and the return value (argument cfg_ret_pos) at once. */
static __always_inline int fexit_bpfmap(__u64 *ctx, bool elem)
{
	__u64 map = ctx[0];
	__u64 skb = bpfmap_skb(map);
	__u64 ret;

	if (!skb)
		return 0;
	ret = tp_arg(ctx, cfg_ret_pos, 0);
	emit_bpfmap(ctx, skb, fentry_func_ip(ctx), PWRU_PROBE_ADDR, map, ctx[1], bpfmap_value(map, ret, elem),
		    PWRU_BPFMAP_LOOKUP, ret != 0, CALLER_FENTRY, 0);
	return 0;
}

SEC("fexit/placeholder")
int fexit_bpfmap_lookup(__u64 *ctx)
{
	return fexit_bpfmap(ctx, false);
}

SEC("fexit/placeholder")
int fexit_bpfmap_lookup_elem(__u64 *ctx)
{
	return fexit_bpfmap(ctx, true);
}
