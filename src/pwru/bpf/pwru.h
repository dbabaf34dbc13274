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
#define PWRU_NF_NAME_LEN 32 /* xt_table names are at most 32 with their NUL; longer nftables names are cut */

enum pwru_record_type {
	PWRU_RECORD_EVENT = 1, /* struct event: one skb seen at one probe */
	PWRU_RECORD_SKB_COPY = 3, /* struct skb_copy: a tracked skb was copied (--output-journey) */
	PWRU_RECORD_SKB_FREE = 4, /* struct skb_free: a tracked skb was freed (--output-journey) */
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

#endif
