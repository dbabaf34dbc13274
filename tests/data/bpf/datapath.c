/* A small Cilium-style datapath for the tests of --filter-trace-tc/xdp and the tcx chain view, compiled at test
 * time (clang -g: fentry on a program needs its BTF).
 *
 *   tc_entry     (tc, egress of the sender's veth): looks the destination up in nat_map; on a hit tail-calls
 *                jmp[0] = nat_rewrite, else TC_ACT_OK.
 *   nat_rewrite  (tail-called): rewrites the IPv4 destination with bpf_skb_store_bytes, fixing the IP and the
 *                UDP/TCP checksums with bpf_l3_csum_replace / bpf_l4_csum_replace, then writes a note of the
 *                flow in flows (a struct key and value, for --output-bpfmap's BTF view) and deletes it; TC_ACT_OK.
 *   xdp_drop     (XDP on the receiver's veth): drops UDP to port 7001 (XDP_DROP), passes the rest.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <stddef.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "GPL";

#define DROP_PORT 7001

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);   /* original destination, network order */
	__type(value, __u32); /* the destination to rewrite it to */
} nat_map SEC(".maps");

struct flow_key {
	__u32 daddr; /* the original destination, network order */
	__u16 dport; /* network order */
	__u8 proto;
	__u8 pad;
};

struct flow_note {
	__u64 packets;
	char tag[8];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, struct flow_key);
	__type(value, struct flow_note);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} jmp SEC(".maps");

#define IP_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define UDP_CSUM_OFF (ETH_HLEN + sizeof(struct iphdr) + offsetof(struct udphdr, check))

static __always_inline struct iphdr *ipv4(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5)
		return NULL;
	return ip;
}

SEC("classifier")
int tc_entry(struct __sk_buff *skb)
{
	struct iphdr *ip = ipv4(skb);
	__u32 daddr;

	if (!ip)
		return TC_ACT_OK;
	daddr = ip->daddr;
	if (bpf_map_lookup_elem(&nat_map, &daddr))
		bpf_tail_call(skb, &jmp, 0);
	return TC_ACT_OK;
}

SEC("classifier")
int nat_rewrite(struct __sk_buff *skb)
{
	struct iphdr *ip = ipv4(skb);
	struct flow_note note = {.packets = 1, .tag = "natted"};
	struct flow_key key = {.proto = IPPROTO_UDP};
	struct udphdr *udp;
	__u32 old, *new;

	if (!ip || ip->protocol != IPPROTO_UDP)
		return TC_ACT_OK;
	udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > (void *)(long)skb->data_end)
		return TC_ACT_OK;
	old = ip->daddr;
	key.daddr = old;
	key.dport = udp->dest; /* read now: the helpers below invalidate packet pointers */
	new = bpf_map_lookup_elem(&nat_map, &old);
	if (!new)
		return TC_ACT_OK;
	bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old, *new, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | sizeof(*new));
	bpf_l3_csum_replace(skb, IP_CSUM_OFF, old, *new, sizeof(*new));
	bpf_skb_store_bytes(skb, IP_DST_OFF, new, sizeof(*new), 0);
	bpf_map_update_elem(&flows, &key, &note, BPF_ANY);
	bpf_map_delete_elem(&flows, &key);
	return TC_ACT_OK;
}

SEC("xdp")
int xdp_drop(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	struct udphdr *udp = data + ETH_HLEN + sizeof(*ip);

	if ((void *)(udp + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	return udp->dest == bpf_htons(DROP_PORT) ? XDP_DROP : XDP_PASS;
}
