package auth

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/aserpc/aserpc/internal/zmsg"
)

func mustCert(t *testing.T) Cert {
	t.Helper()
	c, err := NewCert()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCert_WriteLoad(t *testing.T) {
	dir := t.TempDir()
	c := mustCert(t)
	pub, sec, err := WriteCerts(dir, "alice", c)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := pub, filepath.Join(dir, "alice.key"); got != want {
		t.Errorf("public file %s, want %s", got, want)
	}
	if fi, _ := os.Stat(sec); fi.Mode().Perm() != 0o600 {
		t.Errorf("secret file mode %v, want 0600", fi.Mode().Perm())
	}
	got, err := LoadSecret(sec)
	if err != nil {
		t.Fatal(err)
	}
	if got != c {
		t.Errorf("loaded %+v, want %+v", got, c)
	}
	p, err := LoadCert(pub)
	if err != nil {
		t.Fatal(err)
	}
	if p.Public != c.Public || p.Secret != "" {
		t.Errorf("public cert loaded as %+v", p)
	}
	if _, err := LoadSecret(pub); err == nil || !strings.Contains(err.Error(), "no secret-key") {
		t.Errorf("LoadSecret(public file) = %v, want a no secret-key error", err)
	}
	if _, _, err := WriteCerts(dir, "alice", mustCert(t)); err == nil {
		t.Error("WriteCerts overwrote an existing certificate")
	}
	if k, err := PublicKey("alice.key", dir); err != nil || k != c.Public {
		t.Errorf("PublicKey(file) = %q, %v", k, err)
	}
	if k, err := PublicKey(c.Public, ""); err != nil || k != c.Public {
		t.Errorf("PublicKey(key) = %q, %v", k, err)
	}
	if _, err := PublicKey("nonsense", dir); err == nil {
		t.Error("PublicKey(nonsense) succeeded")
	}
}

func TestCert_Mismatch(t *testing.T) {
	a, b := mustCert(t), mustCert(t)
	p := filepath.Join(t.TempDir(), "x.key_secret")
	os.WriteFile(p, []byte("curve\n    public-key = \""+a.Public+"\"\n    secret-key = \""+b.Secret+"\"\n"), 0o600)
	if _, err := LoadSecret(p); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Errorf("mismatched pair: %v", err)
	}
}

// TestCert_PyzmqMade loads a certificate pair that pyzmq's
// zmq.auth.create_certificates wrote (the other direction is tested
// through `aserpc keys generate` in cmd/aserpc).
func TestCert_PyzmqMade(t *testing.T) {
	py, err := exec.LookPath("/usr/bin/python3")
	if err != nil {
		t.Skip("no /usr/bin/python3")
	}
	dir := t.TempDir()
	out, err := exec.Command(py, "-c", `import sys, zmq.auth
p, s = zmq.auth.create_certificates(sys.argv[1], "py")
print(zmq.auth.load_certificate(s)[0].decode())`, dir).Output()
	if err != nil {
		t.Skipf("pyzmq unavailable: %v", err)
	}
	c, err := LoadSecret(filepath.Join(dir, "py.key_secret"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Public, strings.TrimSpace(string(out)); got != want {
		t.Errorf("public %q, pyzmq says %q", got, want)
	}
}

func TestKeys_Load(t *testing.T) {
	dir := t.TempDir()
	a, w, o := mustCert(t), mustCert(t), mustCert(t)
	WriteCerts(filepath.Join(dir, "certs"), "gpu1", w)
	file := filepath.Join(dir, "authorized")
	os.WriteFile(file, []byte("# comment\n\nclient "+a.Public+" alice smith\nworker certs/gpu1.key\nADMIN "+o.Public+"\n"), 0o644)
	k, err := LoadKeys(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key  string
		role Role
		name string
	}{{a.Public, Client, "alice smith"}, {w.Public, Worker, "gpu1"}, {o.Public, Admin, o.Public[:8]}} {
		e, ok := k.Lookup(tc.key)
		if !ok || e.Role != tc.role || e.Name != tc.name {
			t.Errorf("Lookup(%s…) = %+v %v, want %s %q", tc.key[:8], e, ok, tc.role, tc.name)
		}
	}
	if _, ok := k.Lookup(mustCert(t).Public); ok {
		t.Error("an unknown key was found")
	}
	for name, text := range map[string]string{
		"UnknownRole": "root " + a.Public + "\n",
		"NoKey":       "client\n",
		"BadKey":      "client abc\n",
		"TwoRoles":    "client " + a.Public + "\nworker " + a.Public + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, name)
			os.WriteFile(p, []byte(text), 0o644)
			if _, err := LoadKeys(p); err == nil || !strings.Contains(err.Error(), p+":") {
				t.Errorf("LoadKeys = %v, want an error naming the file and line", err)
			}
		})
	}
	if r, ok := RoleOf(Entry{Role: Admin, Name: "x:y"}.UserID()); !ok || r != Admin {
		t.Errorf("RoleOf(UserID) = %s %v", r, ok)
	}
}

// TestHandler_RealSockets: a CURVE ROUTER in a context with our handler
// answers a listed key, never an unknown key that knows the server key,
// never a plaintext client, and never a key whose role the socket's
// domain does not admit.
func TestHandler_RealSockets(t *testing.T) {
	server, client, stranger, worker := mustCert(t), mustCert(t), mustCert(t), mustCert(t)
	keys, err := NewKeys(Entry{Role: Client, Key: client.Public, Name: "alice"}, Entry{Role: Worker, Key: worker.Public, Name: "w"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, err := zmq.NewContext()
	if err != nil {
		t.Fatal(err)
	}
	h, err := StartHandler(ctx, keys, Policy{"front": {Client, Admin}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := ctx.NewSocket(zmq.ROUTER)
	r.SetLinger(0)
	r.SetZapDomain("front")
	r.SetCurveServer(1)
	r.SetCurveSecretkey(server.Secret)
	if err := r.Bind("tcp://127.0.0.1:*"); err != nil {
		t.Fatal(err)
	}
	ep, _ := r.GetLastEndpoint()
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() { // echo [text] as [text, User-Id]; the socket is this goroutine's
		defer close(stopped)
		defer r.Close()
		p := zmq.NewPoller()
		p.Add(r, zmq.POLLIN)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if ready, _ := p.Poll(50 * time.Millisecond); len(ready) == 0 {
				continue
			}
			// The identity frame a ROUTER makes carries no metadata;
			// the peer's frames do.
			m, err := zmsg.Recv(zmsg.Raw(r), false)
			if err != nil {
				return
			}
			r.SendMessage(m.Frame(0), "", m.Frame(m.Len()-1), m.Property(1, "User-Id"))
			m.Close()
		}
	}()
	defer func() {
		close(stop)
		<-stopped
		ctx.Term()
		<-h.Done()
	}()

	ask := func(c *Cert) ([]string, bool) {
		s, _ := zmq.NewSocket(zmq.REQ)
		defer s.Close()
		s.SetLinger(0)
		if c != nil {
			s.ClientAuthCurve(server.Public, c.Public, c.Secret)
		}
		s.Connect(ep)
		s.SendMessage("hello")
		p := zmq.NewPoller()
		p.Add(s, zmq.POLLIN)
		ready, _ := p.Poll(1500 * time.Millisecond)
		if len(ready) == 0 {
			return nil, false
		}
		m, _ := s.RecvMessage(0)
		return m, true
	}
	if got, ok := ask(&client); !ok || len(got) != 2 || got[0] != "hello" || got[1] != "client:alice" {
		t.Fatalf("listed client: %q %v, want [hello client:alice]", got, ok)
	}
	if _, ok := ask(&stranger); ok {
		t.Error("an unknown key that knows the server key got a reply")
	}
	if _, ok := ask(nil); ok {
		t.Error("a plaintext client got a reply")
	}
	if _, ok := ask(&worker); ok {
		t.Error("a worker key got a reply on a socket whose domain admits clients only")
	}
	// Reload: the stranger becomes a client.
	k2, _ := NewKeys(Entry{Role: Client, Key: stranger.Public, Name: "bob"})
	h.SetKeys(k2)
	if _, ok := ask(&stranger); !ok {
		t.Error("a key added by SetKeys got no reply")
	}
}
