// Package auth is aserpc's CurveZMQ security: certificate files, the
// broker's list of authorized keys and roles, and the ZAP handler that
// enforces that list for the sockets of one zmq context.
//
// Certificates are the ZPL files of czmq's zcert and pyzmq's
// zmq.auth.create_certificates: NAME.key holds the public key, NAME.key_secret
// both keys, each as 40 characters of Z85. Either tool's files load here and
// ours load there (zmq.auth.load_certificate).
//
// The authorized-keys file has one key per line:
//
//	# role  key (Z85, or a certificate file relative to this file)  name
//	client  rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7                  alice
//	worker  keys/gpu1.key
//	admin   keys/ops.key                                              ops
//
// Roles: client (requests, LIST, STATUS), worker (registers as a worker or
// manager on the backend), admin (everything, including stopping workers or
// the broker).
//
// The ZAP handler follows ZeroMQ RFC 27 (ZAP 1.0). It must be bound in the
// same zmq context as the CURVE server sockets, before they accept a
// connection: libzmq 4.3 lets any client that knows the server key in when
// no handler is bound in that context (ZAP_ENFORCE_DOMAIN, which would
// refuse instead, is a draft option missing from Debian's build). The
// handler answers with User-Id "role:name", which the broker reads from
// each message's metadata to decide what that peer may do.
package auth
