#include "zmsg.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

zmsg_t *zmsg_new(void) { return calloc(1, sizeof(zmsg_t)); }

static void zmsg_clear(zmsg_t *m) {
	for (int i = 0; i < m->n; i++) zmq_msg_close(&m->part[i]);
	m->n = 0;
	m->dropped = 0;
}

void zmsg_destroy(zmsg_t *m) {
	if (!m) return;
	zmsg_clear(m);
	free(m);
}

static void zmsg_sync(zmsg_t *m, int i) {
	m->data[i] = zmq_msg_data(&m->part[i]);
	m->size[i] = zmq_msg_size(&m->part[i]);
}

// zmsg_recv receives one whole multipart message into m (which must be
// empty). Every blocking libzmq call is retried on EINTR: Go's runtime
// interrupts threads with signals (preemption), which is not an error.
// Returns the number of frames held, or -1 with errno set (EAGAIN when
// flags has ZMQ_DONTWAIT and nothing is waiting).
int zmsg_recv(void *sock, zmsg_t *m, int flags) {
	zmsg_clear(m);
	for (;;) {
		zmq_msg_t *p;
		zmq_msg_t scratch;
		int keep = m->n < ZMSG_MAX;
		p = keep ? &m->part[m->n] : &scratch;
		zmq_msg_init(p);
		int rc;
		do {
			rc = zmq_msg_recv(p, sock, m->n == 0 && m->dropped == 0 ? flags : 0);
		} while (rc < 0 && errno == EINTR);
		if (rc < 0) {
			int e = errno;
			zmq_msg_close(p);
			zmsg_clear(m);
			errno = e;
			return -1;
		}
		int more = zmq_msg_more(p);
		if (keep) {
			zmsg_sync(m, m->n);
			m->n++;
		} else {
			zmq_msg_close(p);
			m->dropped++;
		}
		if (!more) return m->n;
	}
}

int zmsg_add_copy(zmsg_t *m, const void *data, size_t len) {
	if (m->n >= ZMSG_MAX) { errno = EMSGSIZE; return -1; }
	zmq_msg_t *p = &m->part[m->n];
	if (zmq_msg_init_size(p, len) != 0) return -1;
	if (len) memcpy(zmq_msg_data(p), data, len);
	zmsg_sync(m, m->n);
	m->n++;
	return 0;
}

// zmsg_add_move appends src's frame i to dst; src's frame becomes empty.
int zmsg_add_move(zmsg_t *dst, zmsg_t *src, int i) {
	if (dst->n >= ZMSG_MAX || i < 0 || i >= src->n) { errno = EINVAL; return -1; }
	zmq_msg_t *p = &dst->part[dst->n];
	zmq_msg_init(p);
	if (zmq_msg_move(p, &src->part[i]) != 0) return -1;
	zmsg_sync(dst, dst->n);
	zmsg_sync(src, i);
	dst->n++;
	return 0;
}

// zmsg_add_ref appends a second reference to src's frame i (libzmq shares
// the buffer of any frame above its 33-byte inline size by reference count;
// neither side may modify it afterwards, and neither does).
int zmsg_add_ref(zmsg_t *dst, zmsg_t *src, int i) {
	if (dst->n >= ZMSG_MAX || i < 0 || i >= src->n) { errno = EINVAL; return -1; }
	zmq_msg_t *p = &dst->part[dst->n];
	zmq_msg_init(p);
	if (zmq_msg_copy(p, &src->part[i]) != 0) return -1;
	zmsg_sync(dst, dst->n);
	dst->n++;
	return 0;
}

// zmsg_send sends every frame of m as one multipart message and leaves m
// empty. On failure of the first frame (EAGAIN at the high-water mark,
// EHOSTUNREACH for an unknown ROUTER peer with ROUTER_MANDATORY) nothing
// was sent and m is left empty too: the caller has lost interest in a
// message it cannot deliver. A failure past the first frame cannot happen
// for a ROUTER (libzmq checks the peer on the first frame).
int zmsg_send(void *sock, zmsg_t *m, int flags) {
	int rc = 0, e = 0;
	for (int i = 0; i < m->n; i++) {
		int f = flags | (i + 1 < m->n ? ZMQ_SNDMORE : 0);
		do {
			rc = zmq_msg_send(&m->part[i], sock, f);
		} while (rc < 0 && errno == EINTR);
		if (rc < 0) {
			e = errno;
			break;
		}
	}
	zmsg_clear(m);
	if (rc < 0) {
		errno = e;
		return -1;
	}
	return 0;
}

// zmsg_poll2 waits up to timeout_ms for input on a and/or b (either may be
// NULL). EINTR is retried with the full timeout: a spurious extra wait of
// at most timeout_ms only delays housekeeping, never a message.
int zmsg_poll2(void *a, void *b, long timeout_ms, int *ra, int *rb) {
	zmq_pollitem_t items[2];
	int n = 0, ia = -1, ib = -1;
	if (a) { items[n].socket = a; items[n].fd = 0; items[n].events = ZMQ_POLLIN; items[n].revents = 0; ia = n++; }
	if (b) { items[n].socket = b; items[n].fd = 0; items[n].events = ZMQ_POLLIN; items[n].revents = 0; ib = n++; }
	int rc;
	do {
		rc = zmq_poll(items, n, timeout_ms);
	} while (rc < 0 && errno == EINTR);
	*ra = ia >= 0 && (items[ia].revents & ZMQ_POLLIN);
	*rb = ib >= 0 && (items[ib].revents & ZMQ_POLLIN);
	return rc;
}

const char *zmsg_gets(zmsg_t *m, int i, const char *prop) {
	if (i < 0 || i >= m->n) return NULL;
	return zmq_msg_gets(&m->part[i], prop);
}
