/* SPDX-License-Identifier: Apache-2.0 */
/* The records pwru's kernel side sends to user space.
 * This header is the only place their layouts are written: Python reads record types, member names and
 * offsets from the BTF that clang emits for the compiled object (see pwru/records.py).
 *
 * Every record starts with struct record_header; its type says which struct follows (the struct's name is
 * the enum member's name without PWRU_RECORD_, lower-cased: PWRU_RECORD_EVENT -> struct event). A record may
 * be longer than its struct: the bytes past it, up to header.size, are its variable-sized tail. */
#ifndef PWRU_H
#define PWRU_H

#define PWRU_COMM_LEN 16
#define PWRU_IFNAME_LEN 16
/* The most packet bytes a struct packet carries (--output-pcap-snaplen's upper bound): the per-CPU scratch
 * record it is built in must stay within the kernel's 32 KiB per-CPU allocation unit. */
#define PWRU_PCAP_SNAPLEN_MAX 16384
#define PWRU_NF_NAME_LEN 32 /* xt_table names are at most 32 with their NUL; longer nftables names are cut */

enum pwru_record_type {
	PWRU_RECORD_EVENT = 1,    /* struct event: one skb seen at one probe */
	PWRU_RECORD_SKB_DUMP = 2, /* struct skb_dump: a struct of the skb printed by the kernel (--output-skb, ...) */
	PWRU_RECORD_PACKET = 3,   /* struct packet: the bytes of the event's skb (--output-pcap) */
	PWRU_RECORD_SKB_COPY = 4, /* struct skb_copy: a tracked skb was copied (--output-journey) */
	PWRU_RECORD_SKB_FREE = 5, /* struct skb_free: a tracked skb was freed (--output-journey) */
	PWRU_RECORD_BPFMAP_OP = 6, /* struct bpfmap_op: a BPF map operation on the event's skb's behalf (--output-bpfmap) */
};

/* What a struct skb_dump prints (bpf_snprintf_btf on the running kernel's type). */
enum pwru_dump_kind {
	PWRU_DUMP_SK_BUFF = 0,         /* struct sk_buff (--output-skb) */
	PWRU_DUMP_SKB_SHARED_INFO = 1, /* struct skb_shared_info, at skb->head + skb->end (--output-skb-shared-info) */
};

/* struct packet's linktype: where its bytes start, as a pcap link type (tcpdump's LINKTYPE_* numbers). */
enum pwru_linktype {
	PWRU_LINKTYPE_ETHERNET = 1, /* from the MAC header, an Ethernet one */
	PWRU_LINKTYPE_RAW = 101,    /* no bytes could be taken (no sane header): data is empty */
	PWRU_LINKTYPE_IPV4 = 228,   /* from the network header, an IPv4 one */
	PWRU_LINKTYPE_IPV6 = 229,   /* from the network header, an IPv6 one */
};

/* What record_header.probe holds. */
enum pwru_probe_kind {
	PWRU_PROBE_ADDR = 0,  /* kprobe, kprobe-multi, fentry: the traced function's address */
	PWRU_PROBE_INDEX = 1, /* an index into user space's probe table, given to the program at load */
};

struct record_header {
	__u64 ts;       /* bpf_ktime_get_ns */
	__u64 skb;      /* struct sk_buff address, 0 when the record is about no skb */
	__u64 probe;    /* see probe_kind */
	__u16 type;     /* enum pwru_record_type */
	__u16 size;     /* the whole record, header included */
	__u8 probe_kind; /* enum pwru_probe_kind */
	__u8 pad[3];
};

struct skb_meta {
	__u32 netns;
	__u32 mark;
	__u32 ifindex;
	__u32 len;
	__u32 mtu;
	__u16 protocol; /* skb->protocol, host byte order */
	__u16 pad;
	char ifname[PWRU_IFNAME_LEN];
	__u8 cb[20];    /* --output-skb-cb: the qdisc control block's data (what BPF sees as __sk_buff->cb[0..4]),
			 * five 32-bit words in host byte order; zero unless asked for */
};

struct skb_tuple {
	__u8 saddr[16]; /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u16 sport;    /* host byte order */
	__u16 dport;
	__u16 l3_proto; /* ETH_P_IP or ETH_P_IPV6, 0 when the skb carries neither */
	__u8 l4_proto;  /* IPPROTO_* */
	__u8 tcp_flags;
};

struct event {
	struct record_header hdr;
	__u64 caller;   /* return address into the caller, 0 unless output_caller */
	__u64 location; /* drop location (kfree_skb tracepoint), else 0 */
	__s64 stack_id; /* stack trace map id, -1 unless output_stack */
	__s64 reason;   /* drop reason, -1 when the hook has none */
	__u32 pid;
	__u32 cpu;
	char comm[PWRU_COMM_LEN];
	struct skb_meta meta;
	struct skb_tuple tuple;
	struct skb_tuple tunnel; /* the inner packet's tuple (--output-tunnel); flattened as tunnel_saddr, ... */
	/* A netfilter drop (reason NETFILTER_DROP): the hook that dropped it, from the netfilter observation points */
	__u8 nf_pf;   /* NFPROTO_* (2 ipv4, 10 ipv6), 0 when unknown */
	__s8 nf_hook; /* NF_INET_* hook number (0 PREROUTING .. 4 POSTROUTING), -1 when not a netfilter drop or unknown */
	__u8 pad_nf[6];
	/* A drop after a netfilter table's verdict DROP (kprobe/fentry backends: ipt_do_table, ip6t_do_table,
	 * nft_do_chain): the table's name and, for nftables, the base chain's; empty when unknown. */
	char nf_table[PWRU_NF_NAME_LEN];
	char nf_chain[PWRU_NF_NAME_LEN];
	/* --filter-trace-tc/xdp: at a traced tc or XDP program's exit, its return value (TC_ACT_*, XDP_*), which
	 * prog_ret_kind says how to read (enum pwru_prog_ret_kind; NONE: not a program's exit, prog_ret 0) */
	__s32 prog_ret;
	__u8 prog_ret_kind;
	__u8 xdp_ctx;   /* 1: an XDP program's event (hdr.skb is its struct xdp_buff; metadata from --output-xdp-metadata) */
	__u8 pad_prog[2];
	/* --output-skb-metadata: the values set_skb_metadata wrote (user space knows the layout), 8-byte aligned */
	__u8 metadata[] __attribute__((aligned(8)));
};

/* One dump of a struct of an event's skb. It comes just BEFORE its event in the ring buffer, from the same
 * program run, and its header's ts, skb and probe are the event's: user space keeps it until the event comes
 * (an event never waits for its dump). Written from a per-CPU buffer of --set-percpu-buf bytes (this header
 * included) with bpf_ringbuf_output, only as long as the text. */
struct skb_dump {
	struct record_header hdr;
	__u32 kind;  /* enum pwru_dump_kind */
	__s32 len;   /* bpf_snprintf_btf's result: the whole text's length; more than the tail holds when truncated */
	char text[]; /* the text, NUL-terminated */
};

/* Sent right before its event (same CPU, same program run: earlier in ring order) when --output-pcap is on. Its
 * header's ts, skb, probe and probe_kind are the event's, which is how user space pairs the two. */
struct packet {
	struct record_header hdr;
	__u32 netns;    /* as skb_meta's, filled whatever --output-meta says (the pcap's interfaces need them) */
	__u32 ifindex;
	__u32 orig_len; /* the packet's length from where data starts (skb->len plus the header part before
			 * skb->data, less what lies between skb->data and the start) */
	__u16 linktype; /* enum pwru_linktype */
	__u16 pad;
	char ifname[PWRU_IFNAME_LEN];
	__u8 data[];    /* the linear bytes from the start, at most --output-pcap-snaplen (hdr.size says how many) */
};

/* struct event's prog_ret_kind: whose return value prog_ret is. */
enum pwru_prog_ret_kind {
	PWRU_PROG_RET_NONE = 0,
	PWRU_PROG_RET_TC = 1,  /* a tc (sched_cls) program's: TC_ACT_* */
	PWRU_PROG_RET_XDP = 2, /* an XDP program's: XDP_* */
};

/* How an skb ended, for --summary (struct summary_key.verdict). */
enum pwru_verdict {
	PWRU_VERDICT_DROPPED = 1,  /* kfree_skb tracepoint: freed with a drop reason */
	PWRU_VERDICT_CONSUMED = 2, /* consume_skb tracepoint: freed after use (delivered, sent, merged) */
};

/* --summary: the key of the kernel's count map (a per-CPU hash: key -> number of skb ends). Not a record:
 * user space reads the map at exit and every --summary-interval. Consumed ends have reason, location and nf_*
 * zero (-1 for nf_hook); a netfilter drop with a known hook has location 0 (the hook names where). */
struct summary_key {
	__u64 location; /* drop location (the kfree_skb tracepoint's return address), 0 when none or by hook */
	__u32 reason;   /* drop reason, 0xffffffff when the kernel reports none */
	__u8 verdict;   /* enum pwru_verdict */
	__u8 nf_pf;     /* as struct event's */
	__s8 nf_hook;
	__u8 pad;
};

/* A tracked skb was cloned or copied, or replaced by a new one (veth's rebuild for XDP), and the new skb joins
 * the tracked set: sent only with --output-journey (cfg_output_journey), so user space can put the new skb's
 * events in its parent's journey. hdr.skb is the new skb; hdr.probe names the copying function (probe_kind
 * ADDR: its address; INDEX: a probe id, fexit on kernels without bpf_get_func_ip). */
struct skb_copy {
	struct record_header hdr;
	__u64 parent; /* the tracked skb it was made from */
};

/* A tracked skb's end, seen by a tracking probe (kfree_skbmem and the other free functions, a free tracepoint not
 * traced for events): sent only with --output-journey, so a journey ends when its skb does even where no event
 * shows the free. hdr.skb is the skb; hdr.probe the free function or tracepoint (as struct skb_copy's). */
struct skb_free {
	struct record_header hdr;
};

/* --output-bpfmap: what a map operation did (struct bpfmap_op.op). */
enum pwru_bpfmap_op {
	PWRU_BPFMAP_LOOKUP = 1,
	PWRU_BPFMAP_UPDATE = 2,
	PWRU_BPFMAP_DELETE = 3,
};

/* The most key or value bytes a struct bpfmap_op carries (pwru's figure); key_size/value_size say the whole. */
#define PWRU_BPFMAP_DATA_MAX 256

/* A BPF map operation (lookup, update, delete) made while the call chain works on a selected skb, by a map
 * function a loaded BPF program calls (--output-bpfmap). Sent just BEFORE its event (the map function's, same
 * header ts, skb, probe), as struct skb_dump is: user space joins the two. */
struct bpfmap_op {
	struct record_header hdr;
	__u32 map_id;
	__u32 map_type;   /* enum bpf_map_type */
	__u32 key_size;   /* the map's sizes; key and value hold at most PWRU_BPFMAP_DATA_MAX bytes of each */
	__u32 value_size;
	char map_name[16];
	__u8 op;          /* enum pwru_bpfmap_op */
	__u8 found;       /* a lookup's outcome: 1 the key was there */
	__u8 value_read;  /* 1: value holds the value (an update's new one, a lookup's found one) */
	__u8 pad[5];
	__u8 key[PWRU_BPFMAP_DATA_MAX];
	__u8 value[PWRU_BPFMAP_DATA_MAX];
};

#endif
