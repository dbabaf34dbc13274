/* A program the verifier must refuse (reads past a map value): its log has to show this C line. */
#include "test_core.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} one SEC(".maps");

SEC("socket")
int out_of_bounds(struct __sk_buff *skb)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&one, &k);
	if (!v)
		return 0;
	return *(v + 3); /* PWRU_BAD_LINE */
}
