package main

import (
	"context"
	"testing"
	"time"
)

// TestFuzzLive is `just fuzz-live`, short: 15 s of random and malformed
// messages at both broker sockets and, as malformed LJ requests, at the
// real workers, while 2 Python clients send valid requests. The broker
// must stay up, every valid request must succeed with the right result, no
// worker may die, the broker must forget every fuzz peer once its timeouts
// pass, and its RSS may not grow by more than RSSBound.
func TestFuzzLive(t *testing.T) {
	rep, err := RunFuzz(context.Background(), Fuzz{Settings: settings(t), Load: Load{Clients: 2, Seed: 3},
		Duration: 15 * time.Second, Senders: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", rep)
	for _, p := range rep.Problems() {
		t.Error(p)
	}
	// The fuzzing must have reached the broker's parsers and the workers.
	if rep.Counters["malformed"] < 1000 || rep.Counters["unknown_command"] < 100 || rep.Counters["stale_responses"] < 100 {
		t.Errorf("too little fuzz reached the broker: counters %v", rep.Counters)
	}
	if rep.WorkerErrors < 100 {
		t.Errorf("only %d malformed LJ requests were refused by a worker (%d sent)", rep.WorkerErrors, rep.Sent["front/request-bad-body-LJ"])
	}
	if rep.Clients.OK < 50 {
		t.Errorf("only %d valid requests succeeded while fuzzed", rep.Clients.OK)
	}
}
