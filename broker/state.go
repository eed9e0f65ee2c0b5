package broker

// The state file: which calculators a broker serves, kept up to date while
// it runs, so that the next broker on the same frontend (restarted after a
// crash, a kill or an upgrade) holds their requests for its startup grace
// while their workers re-register, instead of failing them.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// StatePath is the state file of a broker with this frontend in dir, which
// it creates (0700); old state files of other frontends there are removed.
// "" when dir cannot be made.
func StatePath(dir, frontend string) string {
	if dir == "" || os.MkdirAll(dir, 0o700) != nil {
		return ""
	}
	old, _ := filepath.Glob(filepath.Join(dir, "broker-*.state"))
	for _, f := range old {
		if fi, err := os.Stat(f); err == nil && time.Since(fi.ModTime()) > stateMaxAge {
			os.Remove(f)
		}
	}
	h := sha256.Sum256([]byte(frontend))
	return filepath.Join(dir, "broker-"+hex.EncodeToString(h[:6])+".state")
}

type state struct {
	Frontend string    `json:"frontend"`
	Served   []string  `json:"served"`
	Written  time.Time `json:"written"`
}

// stateMaxAge: a state older than this is a broker long gone, whose
// workers are not coming back.
const stateMaxAge = 24 * time.Hour

// loadState returns the calculators the previous broker served ("" or
// no file: none).
func loadState(path, frontend string) []string {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var st state
	if json.Unmarshal(b, &st) != nil || st.Frontend != frontend || time.Since(st.Written) > stateMaxAge {
		return nil
	}
	return st.Served
}

// saveState records what the broker serves when it changed since the last
// write (atomically: a broker killed mid-write leaves the old file).
func (b *Broker) saveState() {
	if b.cfg.StateFile == "" {
		return
	}
	served := b.router.Served()
	if b.stateWritten && slices.Equal(served, b.stateServed) {
		return
	}
	data, err := json.Marshal(state{Frontend: b.cfg.Frontend, Served: served, Written: time.Now().UTC()})
	if err != nil {
		return
	}
	tmp := b.cfg.StateFile + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		b.log.Debug("state file", "err", err)
		return
	}
	if err := os.Rename(tmp, b.cfg.StateFile); err != nil {
		b.log.Debug("state file", "err", err)
		return
	}
	b.stateServed, b.stateWritten = served, true
}
