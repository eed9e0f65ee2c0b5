// zmsg: a tiny C layer over libzmq's zmq_msg_* API so that Go can receive,
// hold and forward message frames without copying their bytes into Go memory.
#ifndef ASERPC_ZMSG_H
#define ASERPC_ZMSG_H

#include <stddef.h>
#include <zmq.h>

// ZMSG_MAX is the most frames a message keeps. Longer messages are received
// whole (libzmq delivers multipart messages atomically) but the frames past
// ZMSG_MAX are discarded and counted in `dropped`; aserpc's longest valid
// message has 6 frames.
#define ZMSG_MAX 8

typedef struct {
	int n;                 // frames held
	int dropped;           // frames received beyond ZMSG_MAX and discarded
	void *data[ZMSG_MAX];  // zmq_msg_data of each frame, valid while held
	size_t size[ZMSG_MAX]; // zmq_msg_size of each frame
	zmq_msg_t part[ZMSG_MAX];
} zmsg_t;

zmsg_t *zmsg_new(void);
void zmsg_destroy(zmsg_t *m);
int zmsg_recv(void *sock, zmsg_t *m, int flags);
int zmsg_add_copy(zmsg_t *m, const void *data, size_t len);
int zmsg_add_move(zmsg_t *dst, zmsg_t *src, int i);
int zmsg_add_ref(zmsg_t *dst, zmsg_t *src, int i);
int zmsg_send(void *sock, zmsg_t *m, int flags);
int zmsg_poll2(void *a, void *b, long timeout_ms, int *ra, int *rb);
const char *zmsg_gets(zmsg_t *m, int i, const char *prop);

#endif
