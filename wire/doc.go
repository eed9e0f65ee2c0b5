// Package wire is aserpc's wire protocol: the one-byte message codes, the
// ZeroMQ frame layouts, and the msgpack payloads of requests and responses.
// It is pure Go: no cgo, no sockets. It follows aserpc 0.1.3 exactly as
// reference-behaviour.md §2 describes it, so that 0.1.3 clients, workers
// and managers interoperate with aserpc's Go broker, and adds extensions
// that 0.1.3 peers ignore.
//
// # Frames
//
// Frames as a DEALER peer sees them (a ROUTER adds the identity in front; a
// REQ client adds and strips the empty delimiter itself). Codes: READY 0x01,
// HEARTBEAT 0x02 (0.1.0–0.1.2), BUSY 0x03, REQUEST 0x04, RESPONSE 0x05,
// LIST 0x06, STATUS 0x07, SHUTDOWN 0x08, WORKER_SHUTDOWN 0x09, ERROR 0x0a,
// DISCONNECT 0x0b, SPAWN_REQUEST 0x0c, SPAWN_RESPONSE 0x0d, MANAGER_READY
// 0x0e, MANAGER_HEARTBEAT 0x0f (0.1.2); ours: WORKER_JOINED 0x10, PROGRESS
// 0x11, CANCEL 0x12, WORKER_EXITED 0x13.
//
//	client → broker          [REQUEST, calc, request]   → [RESPONSE, response] | [ERROR, response]
//	                         [LIST]                     → [RESPONSE, {calc: n_workers}]
//	                         [STATUS]                   → [RESPONSE, {workers, pending_requests, manager}]
//	                         [WORKER_SHUTDOWN, calc]    → [RESPONSE, {"shutdown_count": n}]
//	                         [SHUTDOWN]                 → (no reply in 0.1.3; ours: [RESPONSE, {"shutdown": true}] or [ERROR, ...])
//	broker → worker          ["", client_id, request]   job
//	broker → batching worker ["", token, request, hint] job (see Batching)
//	                         ["", SHUTDOWN]             stop
//	broker → our worker      ["", WORKER_JOINED]        registered (answers a READY that named a pid;
//	                                                    two frames, which 0.1.3 workers ignore)
//	worker → broker          ["", READY|BUSY|DISCONNECT|HEARTBEAT, calc]
//	our worker → broker      ["", READY, calc, pid(, report)]  (pid in decimal; 0.1.3 brokers read calc only)
//	batching worker → broker ["", READY, calc, pid, capacity]
//	                         ["", RESPONSE, client_id, response]
//	broker → manager         ["", SPAWN_REQUEST, calc]
//	manager → broker         ["", MANAGER_READY, "calc1,calc2,..."(, caps)]
//	                         ["", SPAWN_RESPONSE, calc, "ok"|"error", text]
//	broker → our manager     ["", WORKER_JOINED, calc]
//	our manager → broker     ["", WORKER_EXITED, calc, pid, text]
//
// Our manager. A manager that appends a capabilities frame to MANAGER_READY
// (a 0.1.3 broker reads only the names) is "ours": caps is a msgpack map
// {"protocol": 1, "max_workers": {calc: n}, "children": [{"name", "pid",
// "state", "since", "gpu", "log"}]}. Our broker then sends it WORKER_JOINED
// each time one of its calculators gains a worker (so it can hold spawned
// children to a start timeout), asks it for a worker per waiting request
// beyond the idle and starting ones up to max_workers (a 0.1.3 manager is
// asked once, from zero), and shows its children in STATUS under
// manager.children. On first seeing the capabilities frame the broker sends
// an empty WORKER_JOINED ["", 0x10, ""]: "registrations are reported". A
// MANAGER_READY with capabilities and no names is the manager's goodbye.
// WORKER_EXITED: a child that had registered exited unexpectedly; text says
// how (exit code or signal, how long it ran) and gives the last lines of its
// log. A job that died with the worker of that pid (named in its READY) and
// has no attempt left waits up to 2 s for this report, and its client's
// error ("Worker died during calculation: ...") carries the text.
// SPAWN_RESPONSE "ok" means the process started; an
// "error" may follow later for the same spawn (the child exited or never
// registered), and fails the requests waiting for it.
//
// Correlation. A client that keeps many requests in flight uses a DEALER
// socket and may append one frame after the payload of a REQUEST:
// ["", REQUEST, calc, request, corr]. The broker keeps that frame with the
// request and appends it, unchanged, after the payload of its reply:
// ["", RESPONSE|ERROR, response, corr]. Workers never see it (their job is
// still ["", client_id, request]), REQ and 0.1.3 clients send none and get
// none, and payloads carry no correlation id.
//
// Liveness. A worker is lost when its connection closes (the broker's
// libzmq reports it with ZMQ_ROUTER_NOTIFY as [routing id, ""], two frames,
// in order with that peer's messages), when it answers no ZMTP heartbeat
// for 3 s (the broker's backend pings every connection each second; any
// libzmq >= 4.2 answers from its I/O thread, so this holds for 0.1.3's
// workers too and never while a calculation runs), or when it sends
// nothing of its own (READY/HEARTBEAT/BUSY) for the broker's --timeout
// (30 s by default, 0.1.3's rule; the only one where the broker's libzmq
// lacks ROUTER_NOTIFY, a draft option the wheels' static build has). No
// frame changes: a worker need not do anything to be watched this way.
//
// Batching. A worker that computes several requests in one model call
// announces it with a fifth READY frame, capacity: a msgpack map
// {"batch": n, "atoms": a, "wait_ms": t, "stats": {...}} (Capacity; n > 1
// structures it may hold at once, a > 0 bounds their atoms, t is how long it
// holds a first job for others; stats are its running figures, BatchStats,
// shown in STATUS). A 0.1.3 broker reads READY's name only and sends it one
// plain job at a time, which it computes at once. Our broker hands a
// batching worker, while it collects (after READY, until its BUSY), the
// oldest waiting jobs that fit its capacity, as one burst; a job bigger
// than the atom bound still goes to it when it holds nothing. Each such job
// is ["", token, request, hint]: token is an opaque frame the worker echoes
// as RESPONSE's client frame (one client may have several jobs in one
// batch), and hint is "follow,expect" in decimal (JobHint): how many more
// jobs of this burst follow, and how many other clients of the calculator
// were answered within twice the worker's wait and have nothing waiting or
// held now. The worker computes what it holds once it holds n structures or
// a atoms, or when follow is 0 and either expect is 0 (a lone request is
// never held) or t has passed since its first job; jobs already in its
// socket always join. It sends BUSY as it starts (the broker then gives it
// nothing new), RESPONSE for each job, then READY with its capacity (lower
// atoms after an out-of-memory error). A lost batching worker's jobs are
// all re-dispatched. Every other worker still holds one job at a time.
//
// Affinity. Request extension key "affinity": a str of at most 64 bytes,
// the same for every request of one client calculator object. Our broker
// gives such a request the plain worker that last answered a request with
// that key for that calculator, when it is idle; otherwise (busy, gone,
// never seen) the least recently used idle worker, as for every other
// request. It remembers at most 100000 keys. Workers never look at the key.
//
// Sessions. Request extension key "session" (ExtSession: idle seconds, with
// an affinity key) asks our broker to reserve the worker that serves the
// request for that key: it gets no other client's job until the client
// sends SESSION_END ["", 0x14, calc, key] (no reply), stays silent for the
// idle seconds, or the worker is lost. A worker that announced a direct
// endpoint (WorkerInfo "direct", below) gets the session's key with the job
// that reserves it (JobHint's third field) and SESSION_END ["", 0x14] when
// it ends; the RESPONSE of a session's request carries, after the
// correlation frame, a frame "endpoint" (WorkerInfo.Endpoint: "unix://PATH"
// next to an ipc broker; "tcp://HOST:PORT KEY" with the worker's CURVE
// public key, Z85, followed by "BOOT unix://PATH" when the worker also
// serves clients on its host, BOOT that host's kernel boot id). The client
// may then send the session's requests to that endpoint: on tcp a DEALER
// with CURVE sends ["", REQUEST, calc, payload, corr] and gets ["",
// RESPONSE|ERROR|PROGRESS, body, corr];
// on "unix://PATH" (a worker on the client's host) a plain unix stream
// socket carries the same frames less the empty delimiter, each message a
// little-endian uint32 length then its frames, each a uint32 length and its
// bytes. The worker answers only requests whose "affinity" is the session's
// key, else ERROR (the client then goes through the broker), sends PROGRESS
// {"state": "busy"} every heartbeat while computing, and reports the count
// in READY's "direct_jobs" (which keeps the session alive at the broker).
//
// Worker reports. A worker of ours adds to a READY, at most once a second,
// a fifth frame of the capacity form with "batch": 1 and "worker": {"host",
// "rss" (bytes), "gpu" (bytes torch has allocated on CUDA; -1: none),
// "compute_s", "handled", and with a direct endpoint "direct", "direct_key",
// "direct_jobs", "direct_local", "boot"} (WorkerInfo): what the broker's
// metrics show per worker. A batching worker's capacity frame carries the same "worker" map.
//
// Authentication. Frames do not change. On a tcp endpoint of a broker run
// with CURVE keys (package auth), the handshake admits only listed keys;
// the role of the key decides what is accepted: a frontend command the role
// may not send (WORKER_SHUTDOWN or SHUTDOWN from a client key, anything
// from a worker key) is answered [ERROR, "Permission denied: ..."], and a
// backend message from a key without the worker role is dropped.
//
// # Payloads
//
// Payloads are msgpack as msgspec writes it: ints in their smallest form
// (positive ones as fixint/uint8/16/32/64, negative ones as fixint/int8/...),
// floats always as float 64 (0xcb), str, bin, arrays and maps. Array data
// travels in bin as numpy's raw little-endian bytes, while msgpack's own
// scalars are big-endian.
//
// A request (the REQUEST payload and the worker's job) is an array:
//
//	0 version     int    1 (ProtocolVersion)
//	1 numbers     bin    atomic numbers, int32, 4N bytes
//	2 positions   bin    positions in Å, float64 N×3 row-major, 24N bytes
//	3 cell        bin    cell, float64 3×3 row-major (row i = vector i), 72 bytes, zeros when none
//	4 pbc         bin    3 bytes, 0 or 1
//	5 properties  array  of str, e.g. ["energy", "forces"]; may be empty
//	6 extension   map    optional (below)
//
// A response (RESPONSE and ERROR payloads) is an array:
//
//	0 version     int    1
//	1 success     bool
//	2 results     map    str → value: floats as float 64, array results as flat
//	                     float64 little-endian bin (numpy astype(float64)), other
//	                     values as msgpack writes them; {} for errors
//	3 error       str    the message, or nil on success (decoders accept it missing)
//	4 extension   map    optional (below)
//
// An error response is [1, false, {}, message]; see ErrorResponse. A
// version other than 1 fails with the reference's text "Protocol version
// mismatch: got X, expected 1" (VersionError).
//
// # Extensions
//
// Extensions are only ever optional trailing elements: the first six
// request elements and the first four response elements never change
// meaning, and the version stays 1. msgspec's array_like decoders, which
// aserpc 0.1.3 uses, ignore trailing elements (checked against the
// reference with msgspec 0.20.0 and 0.22.0 in compat_test.go), so a 0.1.3
// peer sees exactly the 0.1.3 part. An extension element is nil or a map
// with str keys; a receiver ignores keys it does not know, and ignores
// elements after the extension. Encoders write map keys sorted and omit the
// element when it would be empty, so payloads without extensions are byte
// for byte the reference's.
//
// An Array is the map {"data": bin, "dtype": str, "shape": [int, ...]}:
// dtype is numpy's dtype.str, one of "<f8" "<f4" "<i8" "<i4" "<i2" "|i1"
// "<u8" "<u4" "<u2" "|u1" "|b1"; data holds prod(shape) items, row-major,
// little-endian; shape [] is a scalar. Decoders reject other dtypes and a
// data length that does not match.
//
// Request extension (element 6) keys:
//
//	"info"           map str → JSON-like value (nil, bool, int, float, str, array,
//	                 map): the atoms.info entries a calculator reads, such as
//	                 charge and spin. Ints stay msgpack ints so that the worker
//	                 hands Python ints to the calculator (fairchem rejects
//	                 floats and numpy ints for charge/spin).
//	"arrays"         map name → Array: extra per-atom arrays, shape[0] == N, named
//	                 as in atoms.arrays: initial_magmoms (N or N×3, <f8),
//	                 initial_charges (N, <f8), tags (N, <i8), masses (N, <f8),
//	                 momenta (N×3, <f8), or any custom per-atom array.
//	"typed_results"  true: the client wants typed results (below).
//	"all_results"    true: the client wants every entry of the calculator's
//	                 results after the calculation (free_energy, per-atom
//	                 energies, a model's own keys ...), not only the properties
//	                 of element 5. The worker adds each one that can travel
//	                 (numbers, strings, bools, numeric arrays; the standard
//	                 ASE names held to ASE's conventions) and leaves out, with a
//	                 log line, one that cannot; a requested property is never
//	                 left out (it fails the request instead).
//	"affinity"       str (≤ 64 bytes): the client's key for worker affinity
//	                 (see Affinity); workers ignore it.
//	"describe"       true: the client wants to know what the worker serves;
//	                 the response extension then holds implemented_properties
//	                 and calculator (below). Sent once per calculator object.
//
// Response extension (element 4) keys:
//
//	"results"     map name → Array: the array results with their dtype and shape
//	              (per-atom energies (N,), a 3×3 stress, integer arrays), sent
//	              when the request asked for typed_results. Each name is also in
//	              element 2 in the 0.1.3 form. When the Array is "<f8" and its
//	              bytes equal that element-2 bin, "data" is left out and the
//	              receiver takes the bytes from element 2, so float64 arrays
//	              travel once. Scalars are not repeated: element 2 keeps them.
//	"error_type"  str: the remote exception's type, "module.QualName", or just
//	              "QualName" for builtins ("ValueError").
//	"traceback"   str: the remote traceback text.
//	"implemented_properties"
//	              array of str: the served calculator's implemented_properties,
//	              in answer to describe.
//	"results_order"
//	              array of str, in answer to all_results: the names of element 2
//	              in the order the calculator's results dict holds them (element
//	              2 is written sorted), so a client's results keep that order.
//	"calculator"  map, in answer to describe: "class" (module.QualName of the
//	              served object), "name" (its ASE name, e.g. "emt"),
//	              "parameters" (its todict(), JSON-like values only) and
//	              "kwargs" (the keyword arguments its factory was called with).
//
// A 0.1.3 worker ignores all_results and describe: the client then gets what
// it asked for and assumes energy, forces and stress are implemented.
//
// A Python client can implement it as: decode the payload as a plain
// msgpack list; use items 0–3 as aserpc 0.1.3 does; if the list is longer
// and item 4 is a dict, for each name in item4["results"] take
// np.frombuffer(a.get("data") or results[name], dtype=a["dtype"]).reshape(a["shape"]).
// testdata/vectors.json (described in testdata/vectors.md) lists golden
// payloads for every case, made by the reference itself where it can
// express them.
//
// # Codec
//
// The msgpack codec is this package's own (msgpack.go, array.go).
// Decoding must hand out bin values as sub-slices of the received frame,
// so that a 100k-atom request (2.4 MB) crosses Go without a copy and its
// decode costs the same as a one-atom one; maintained libraries such as
// vmihailenco/msgpack copy bin into fresh slices. The decoder checks every
// length against the bytes left before allocating, caps preallocation so
// that nested claims cannot multiply it, limits nesting to MaxDepth, and
// never panics (fuzzed). Bytes returned by DecodeRequest, DecodeResponse
// and Unmarshal alias the input and are valid only as long as it is;
// strings are copies.
package wire
