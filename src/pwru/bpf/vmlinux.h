/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A minimal, hand-written subset of the kernel types pwru.bpf.c uses.
 *
 * Why not a full `bpftool btf dump ... format c` header: it is 130k lines, tied to one kernel build, and the
 * program only touches a dozen fields. With CO-RE a local declaration does not have to be complete or laid out
 * like the kernel's: every kernel struct below carries __attribute__((preserve_access_index)), so clang records
 * each field access as a relocation ("sk_buff.dev" by name), and the loader (pwru.ebpf.core, like libbpf)
 * rewrites the offsets against the running kernel's BTF (/sys/kernel/btf/vmlinux). Members that the kernel nests
 * in anonymous structs/unions (sk_buff.dev, .mark, .mac_header in the 6.x `headers` struct group) are declared
 * flat here; relocation looks through anonymous members by name, as libbpf does.
 *
 * Rules for editing:
 *   - Only declare members that the program reads, with the kernel's member names and compatible sizes.
 *   - Never take sizeof() of a partial kernel struct (sk_buff, net_device, net, sock...): it is not the kernel's.
 *   - Wire-format headers (iphdr, ipv6hdr, tcphdr, udphdr) are declared completely because the program copies
 *     them whole onto its stack; their layout is fixed by the protocols. The kernel declares the 4-bit fields
 *     (ihl/version, doff/flags) as bitfields; here those bytes have private names (`_ihl_version`, `_flags`) and
 *     are read by byte offset, never by name, so they produce no relocation.
 *   - Kernel range 5.10 .. 6.18: every member declared here is checked against this machine's 6.18 BTF, and
 *     all of them predate 5.10 under the same names (sk_buff's layout churn since then -- the `headers` struct
 *     group, ll_node, tstamp_type -- moved members but renamed none that are used here), so no ___flavor types
 *     are needed yet. If one is renamed, add e.g. `struct sk_buff___old { ... }` and choose at run time with
 *     bpf_core_field_exists().
 *   - Enums: only enumerators whose numeric values are ABI (bpf map types, helper ids) are given values; the
 *     program asks about kernel-dependent enumerators with bpf_core_enum_value_exists() (relocated by name).
 */
#ifndef __VMLINUX_H__
#define __VMLINUX_H__

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef short __s16;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;
typedef long long __s64;

typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s64 s64;

typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

typedef _Bool bool;
enum { false = 0, true = 1 };

/* On 64-bit kernels (NET_SKBUFF_DATA_USES_OFFSET) tail/end are offsets from head. */
typedef unsigned int sk_buff_data_t;

#define __core __attribute__((preserve_access_index))

/* x86_64 struct pt_regs, member names as in the kernel (bpf_tracing.h picks them when __VMLINUX_H__ is set). */
struct pt_regs {
	unsigned long r15;
	unsigned long r14;
	unsigned long r13;
	unsigned long r12;
	unsigned long bp;
	unsigned long bx;
	unsigned long r11;
	unsigned long r10;
	unsigned long r9;
	unsigned long r8;
	unsigned long ax;
	unsigned long cx;
	unsigned long dx;
	unsigned long si;
	unsigned long di;
	unsigned long orig_ax;
	unsigned long ip;
	unsigned long cs;
	unsigned long flags;
	unsigned long sp;
	unsigned long ss;
} __core;

struct ns_common {
	unsigned int inum;
} __core;

struct net {
	struct ns_common ns;
} __core;

typedef struct {
	struct net *net;
} __core possible_net_t;

struct net_device {
	char name[16];
	int ifindex;
	unsigned int mtu;
	unsigned short type; /* ARPHRD_* */
	possible_net_t nd_net;
} __core;

struct xdp_rxq_info {
	struct net_device *dev;
} __core;

struct xdp_buff {
	void *data;
	void *data_end;
	struct xdp_rxq_info *rxq;
} __core;

struct sock_common {
	possible_net_t skc_net;
} __core;

struct sock {
	struct sock_common __sk_common;
} __core;

struct sk_buff {
	struct net_device *dev; /* in an anonymous union with dev_scratch */
	struct sock *sk;
	unsigned int len;
	unsigned int data_len;
	__u16 mac_len;
	__u32 mark;              /* in an anonymous union with reserved_tailroom */
	__be16 protocol;
	__u16 transport_header;  /* (u16)~0 when unset */
	__u16 network_header;
	__u16 mac_header;
	__u16 inner_transport_header; /* set by tunnel encapsulation (vxlan, geneve); 0 when never set */
	__u16 inner_network_header;
	__u16 inner_mac_header;
	sk_buff_data_t tail;
	sk_buff_data_t end;
	unsigned char *head;
	unsigned char *data;
	char cb[48];
} __core;

/* What skb->cb holds on the qdisc and tc layers; data is what BPF programs see as __sk_buff->cb[]. */
struct qdisc_skb_cb {
	unsigned char data[20];
} __core;

/* Only its BTF id is used (bpf_snprintf_btf prints it at skb->head + skb->end). */
struct skb_shared_info {
	__u8 nr_frags;
} __core;

/* UAPI (not relocated): what bpf_snprintf_btf prints. */
struct btf_ptr {
	void *ptr;
	__u32 type_id;
	__u32 flags;
};

struct task_struct {
	int tgid;      /* the process id user space calls pid */
	char comm[16]; /* TASK_COMM_LEN */
} __core;

/* Netfilter BPF programs' context (kernel >= 6.4, where hook and pf are both u8). */
struct nf_hook_state {
	__u8 hook; /* NF_INET_* */
	__u8 pf;   /* NFPROTO_* */
} __core;

struct bpf_nf_ctx {
	const struct nf_hook_state *state;
	struct sk_buff *skb;
} __core;

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be16 u6_addr16[8];
		__be32 u6_addr32[4];
	} in6_u;
} __core;

struct iphdr {
	__u8 _ihl_version; /* kernel: ihl:4, version:4 bitfields */
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__be32 saddr;
	__be32 daddr;
} __core;

struct ipv6hdr {
	__u8 _version_priority; /* kernel: priority:4, version:4 bitfields */
	__u8 flow_lbl[3];
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	struct in6_addr saddr;
	struct in6_addr daddr;
} __core;

struct tcphdr {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 _doff;  /* kernel: res1:4, doff:4 bitfields */
	__u8 _flags; /* kernel: fin..cwr 1-bit bitfields */
	__be16 window;
	__u16 check;
	__be16 urg_ptr;
} __core;

struct udphdr {
	__be16 source;
	__be16 dest;
	__be16 len;
	__u16 check;
} __core;

/* UAPI values (stable ABI). */
enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_PERCPU_HASH = 5,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_STACK_TRACE = 7,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_LRU_PERCPU_HASH = 10,
	BPF_MAP_TYPE_RINGBUF = 27,
};

/* --output-bpfmap: a map as its operations get it (kernel/bpf), and a hash table's element, whose key (then the
 * value, at the key's size rounded up to 8) starts at member key. */
struct bpf_map {
	enum bpf_map_type map_type;
	__u32 key_size;
	__u32 value_size;
	__u32 id;
	char name[16];
} __core;

struct htab_elem {
	char key[0];
} __core;

/* Helper ids; only asked about by name with bpf_core_enum_value_exists(). */
enum bpf_func_id {
	BPF_FUNC_get_func_ip = 173,
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
};

enum {
	BPF_F_SKIP_FIELD_MASK = 0xffULL, /* bpf_get_stack/bpf_get_stackid flags: frames to skip */
};

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define EEXIST 17
#define BPF_F_REUSE_STACKID (1ULL << 10)
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
/* IPv6 extension headers set_tuple walks past */
#define IPPROTO_HOPOPTS 0
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_AH 51
#define IPPROTO_DSTOPTS 60

#endif /* __VMLINUX_H__ */
