/* A deliberately different "kernel": its BTF is the target for CO-RE tests. Compared with test_core.h,
 * sk_buff members moved (mark, len, pkt_type), dev sits in a nested anonymous struct, protocol is gone and
 * pwru_no_such_field exists; net_device has no ifindex; the drop-reason enum lacks NO_SOCKET and numbers
 * the rest differently. */
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;

struct net_device {
	char name[16];
	unsigned int mtu;
};

struct sk_buff {
	__u32 mark;
	union {
		struct {
			struct sk_buff *next;
			struct sk_buff *prev;
		};
		struct {
			__u32 pad;
			struct {
				struct net_device *dev;
			};
		};
	};
	__u8 flags0 : 5;
	__u8 pkt_type : 3;
	unsigned long long len;
	__u32 pwru_no_such_field;
	char tail[40];
};

enum skb_drop_reason {
	SKB_NOT_DROPPED_YET = 10,
	SKB_CONSUMED = 11,
	SKB_DROP_REASON_NOT_SPECIFIED = 12,
};

struct sk_buff *target_skb;
enum skb_drop_reason target_reason;
struct net_device target_dev; /* a definition, not only a pointer: BTF gets the struct, not a FWD */
