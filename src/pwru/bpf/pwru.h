/* SPDX-License-Identifier: Apache-2.0 */
/* The event pwru's kernel side sends to user space, and its configuration.
 * This header is the only place the layout is written: Python reads member offsets from the BTF that clang
 * emits for the compiled object (see pwru/event.py). */
#ifndef PWRU_H
#define PWRU_H

#define PWRU_COMM_LEN 16
#define PWRU_IFNAME_LEN 16

/* event.kind */
#define PWRU_KIND_FUNC 0       /* kprobe, kprobe-multi, fentry: addr is the traced function's address */
#define PWRU_KIND_TRACEPOINT 1 /* tp_btf: addr is the probe id user space gave the program */

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
	__u64 ts;       /* bpf_ktime_get_ns */
	__u64 addr;     /* see kind */
	__u64 skb;      /* struct sk_buff address */
	__u64 caller;   /* return address into the caller, 0 unless output_caller */
	__u64 location; /* drop location (kfree_skb tracepoint), else 0 */
	__s64 stack_id; /* stack trace map id, -1 unless output_stack */
	__s64 reason;   /* drop reason, -1 when the hook has none */
	__u32 pid;
	__u32 cpu;
	__u32 kind;
	__u32 pad;
	char comm[PWRU_COMM_LEN];
	struct skb_meta meta;
	struct skb_tuple tuple;
};

#endif
