/* Loader test object: one program per libbpf section convention, BTF-defined maps, global data and
 * bpf-to-bpf calls (including the pwru filter stubs that the loader can replace). */
#include "test_core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct value {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct value);
	__uint(max_entries, 128);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 24);
	__uint(max_entries, 4);
} scratch SEC(".maps");

volatile const __u32 answer = 7;
volatile const __u64 big_const = 0x1122334455667788ULL;
volatile const char tag[8] = "default";
__u32 data_counter = 5;
__u64 bss_counter;
__u32 bss_array[4];

static __noinline int filter_pcap_l2(void *data, void *data_end)
{
	return data != data_end;
}

static __noinline int filter_pcap_l3(void *data, void *data_end)
{
	return data < data_end;
}

static __noinline int leaf(int x)
{
	bss_counter += x;
	return x + 1;
}

static __noinline int middle(int x)
{
	return leaf(x) * 2;
}

SEC("socket")
int sock_answer(struct __sk_buff *skb)
{
	return answer;
}

SEC("socket")
int sock_calls(struct __sk_buff *skb)
{
	return middle(skb->len) + data_counter;
}

SEC("tc")
int tc_filter(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	if (!filter_pcap_l2(data, data_end))
		return 2;
	if (!filter_pcap_l3(data, data_end))
		return 3;
	return tag[0] + big_const - big_const;
}

SEC("tcx/ingress")
int tcx_in(struct __sk_buff *skb)
{
	return leaf(1);
}

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return 2;
}

SEC("kprobe/ip_rcv")
int BPF_KPROBE(kp_ip_rcv, struct sk_buff *skb)
{
	struct value *v = bpf_ringbuf_reserve(&events, sizeof(*v), 0);
	if (!v)
		return 0;
	v->packets = 1;
	v->bytes = middle(2);
	bpf_ringbuf_submit(v, 0);
	return 0;
}

SEC("kretprobe/ip_rcv")
int kretp(struct pt_regs *ctx)
{
	return 0;
}

SEC("kprobe.multi/ip_*")
int kpm(struct pt_regs *ctx)
{
	__u32 key = 1;
	struct value init = {}, *v = bpf_map_lookup_elem(&counts, &key);
	if (!v) {
		bpf_map_update_elem(&counts, &key, &init, 0);
		return 0;
	}
	__sync_fetch_and_add(&v->packets, 1);
	return 0;
}

SEC("fentry/ip_rcv")
int fent(void *ctx)
{
	return 0;
}

SEC("fexit/ip_rcv")
int fexi(void *ctx)
{
	return 0;
}

SEC("tp_btf/kfree_skb")
int tpbtf(__u64 *ctx)
{
	bss_array[1] = answer;
	return 0;
}

SEC("raw_tp/kfree_skb")
int rawtp(void *ctx)
{
	return 0;
}

SEC("raw_tracepoint/kfree_skb")
int rawtp2(void *ctx)
{
	return 0;
}

SEC("tracepoint/skb/kfree_skb")
int tp(void *ctx)
{
	__u32 k = 0;
	void *s = bpf_map_lookup_elem(&scratch, &k);
	return s ? 1 : 0;
}

SEC("netfilter")
int nf(struct bpf_nf_ctx *ctx)
{
	return 1;
}
