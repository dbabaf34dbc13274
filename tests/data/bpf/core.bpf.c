/* CO-RE test object: every relocation kind clang 14 emits, against the hand-written types of test_core.h.
 * Each value is stored into `out` so a loaded program exposes what the relocations became. */
#include "test_core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

__u64 out[16];

SEC("raw_tp/kfree_skb")
int core_values(void *ctx)
{
	struct sk_buff *skb = 0;

	out[0] = bpf_core_field_offset(skb->mark);
	out[1] = bpf_core_field_size(skb->len);
	out[2] = bpf_core_field_exists(skb->pwru_no_such_field);
	out[3] = bpf_core_field_exists(skb->protocol);
	out[4] = bpf_core_type_size(struct sk_buff);
	out[5] = bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NO_SOCKET);
	out[6] = bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_PWRU_NEVER_EXISTS);
	out[7] = bpf_core_type_exists(struct net_device);
	out[8] = bpf_core_field_offset(skb->dev);
	out[9] = bpf_core_type_id_kernel(struct sk_buff);
	out[10] = bpf_core_field_offset(skb->next);
	out[15] = bpf_core_field_offset(skb->len);
	return 0;
}

SEC("raw_tp/kfree_skb")
int core_reads(__u64 *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx[0];
	__u32 ifindex = BPF_CORE_READ(skb, dev, ifindex);
	__u8 pkt_type = BPF_CORE_READ_BITFIELD_PROBED(skb, pkt_type);

	out[11] = ifindex;
	out[12] = pkt_type;
	if (bpf_core_field_exists(skb->pwru_no_such_field))
		out[13] = BPF_CORE_READ(skb, pwru_no_such_field);
	return 0;
}

SEC("raw_tp/kfree_skb")
int core_missing_used(__u64 *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx[0];
	/* Unguarded read of a field the kernel lacks: the verifier must reject the poisoned call. */
	out[14] = BPF_CORE_READ(skb, pwru_no_such_field);
	return 0;
}
