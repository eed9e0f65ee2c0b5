package auth

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Role is what a key may do.
type Role string

// Roles, from least to most trusted.
const (
	// Client sends requests, LIST and STATUS on the frontend.
	Client Role = "client"
	// Worker registers as a worker or as the manager on the backend.
	Worker Role = "worker"
	// Admin may do everything, on both sockets, including stopping
	// workers and the broker.
	Admin Role = "admin"
)

// ParseRole parses a role name.
func ParseRole(s string) (Role, bool) {
	switch r := Role(strings.ToLower(s)); r {
	case Client, Worker, Admin:
		return r, true
	}
	return "", false
}

// Entry is one authorized key.
type Entry struct {
	Role Role
	Key  string // Z85 public key
	Name string // for logs: the name given, else the certificate's file name, else the key's start
}

// UserID is the ZAP User-Id of the entry: "role:name".
func (e Entry) UserID() string { return string(e.Role) + ":" + e.Name }

// RoleOf returns the role of a ZAP User-Id made by UserID.
func RoleOf(userID string) (Role, bool) {
	r, _, _ := strings.Cut(userID, ":")
	return ParseRole(r)
}

// Keys is a loaded authorized-keys file.
type Keys struct {
	Path  string
	byKey map[string]Entry
}

// NewKeys makes Keys from entries (tests, and callers that build lists in
// code).
func NewKeys(entries ...Entry) (*Keys, error) {
	k := &Keys{byKey: map[string]Entry{}}
	for _, e := range entries {
		if err := k.add(e); err != nil {
			return nil, err
		}
	}
	return k, nil
}

func (k *Keys) add(e Entry) error {
	if !ValidKey(e.Key) {
		return fmt.Errorf("invalid key %q", e.Key)
	}
	if _, ok := ParseRole(string(e.Role)); !ok {
		return fmt.Errorf("invalid role %q", e.Role)
	}
	if e.Name == "" {
		e.Name = e.Key[:8]
	}
	if old, ok := k.byKey[e.Key]; ok && old.Role != e.Role {
		return fmt.Errorf("key %s… listed as %s and as %s (give it one role; admin covers all)", e.Key[:8], old.Role, e.Role)
	}
	k.byKey[e.Key] = e
	return nil
}

// LoadKeys reads an authorized-keys file: lines "ROLE KEY [NAME]", where
// KEY is a Z85 public key or a certificate file (relative to the file's
// directory); blank lines and lines starting with "#" are skipped.
func LoadKeys(path string) (*Keys, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	k := &Keys{Path: path, byKey: map[string]Entry{}}
	dir := filepath.Dir(path)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			return nil, fmt.Errorf("%s:%d: want ROLE KEY [NAME], got %q", path, n, line)
		}
		role, ok := ParseRole(fields[0])
		if !ok {
			return nil, fmt.Errorf("%s:%d: unknown role %q (client, worker or admin)", path, n, fields[0])
		}
		key, err := PublicKey(fields[1], dir)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		name := strings.Join(fields[2:], " ")
		if name == "" && !ValidKey(fields[1]) {
			name = strings.TrimSuffix(filepath.Base(fields[1]), ".key")
		}
		if err := k.add(Entry{Role: role, Key: key, Name: name}); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// Lookup returns the entry of a Z85 public key.
func (k *Keys) Lookup(key string) (Entry, bool) {
	if k == nil {
		return Entry{}, false
	}
	e, ok := k.byKey[key]
	return e, ok
}

// Len is the number of keys.
func (k *Keys) Len() int {
	if k == nil {
		return 0
	}
	return len(k.byKey)
}

// Count returns how many keys have each role.
func (k *Keys) Count() map[Role]int {
	out := map[Role]int{}
	if k != nil {
		for _, e := range k.byKey {
			out[e.Role]++
		}
	}
	return out
}
