// Package spawn is aserpc's manager: it starts workers when a broker asks
// for them (scale from zero), keeps min_workers running, and supervises
// every child it started. It follows reference-behaviour.md §6 (aserpc
// 0.1.3's Manager and SpawnConfig) on the wire and fixes that manager's
// bugs (§10.2 items 2–5 and 14).
//
// # Configs
//
// Discover loads SpawnConfigs through the Python of the manager's
// environment: the entry points of group aserpc.spawn, or a --registry
// "module.path:ATTR" / "file.py:ATTR". Values are 0.1.3 SpawnConfig objects
// (read by attribute), ours, or plain dicts, with our optional fields
// max_workers, min_workers, gpus and start_timeout. Templates {name},
// {broker}, {idle_timeout}, {gpu} and {index} are replaced in the command,
// the env values and cwd; JSON braces pass through (see Render).
//
// # Protocol
//
// The manager is a DEALER on the broker's backend. MANAGER_READY carries
// the names and, in a fourth frame that a 0.1.3 broker ignores, our
// capabilities (protocol, max_workers, children); it is re-sent every
// heartbeat and at once when a child starts, registers or exits.
// SPAWN_REQUEST starts one child (below max_workers) and is answered
// SPAWN_RESPONSE "ok" as soon as the process runs. A child that exits
// before registering, or (with our broker, which reports registrations
// with WORKER_JOINED) does not register within start_timeout, is stopped
// and a second SPAWN_RESPONSE "error" carries the exit status, the log
// path and the log's last lines: both brokers fail the waiting requests
// with "Failed to spawn worker: <that text>". WORKER_JOINED is matched by
// count — the oldest starting child of the calculator becomes running — so
// a worker started by hand at the same moment may be taken for a child;
// that child then merely loses its start timeout. With a 0.1.3 broker
// (no WORKER_JOINED ever arrives) a child alive after start_timeout is
// assumed to have registered rather than killed. The manager learns that
// its broker reports registrations from the first WORKER_JOINED; one
// without a name (["", 0x10] or ["", 0x10, ""]) says only that, so a
// broker that sends it when a manager registers makes start timeouts hold
// from the very first spawn.
//
// # Supervision
//
// Each child runs in its own process group with stdout and stderr appended
// to a log file of its own (no pipe nobody reads), gets SIGTERM if the
// manager dies (Pdeathsig), and GPUs[slot % len(GPUs)] as
// CUDA_VISIBLE_DEVICES, where slot is the lowest index free among the
// calculator's children. Children below min_workers are restarted, after
// failures with exponential backoff (0.5 s … 60 s). On exit the manager
// sends an empty MANAGER_READY (the broker forgets its names at once),
// SIGTERM to every child's group, then SIGKILL after a grace period.
package spawn
