package trace

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The child half of the tests: a process started with ASERPC_TRACE set.
func TestMain(m *testing.M) {
	if os.Getenv("TRACE_TEST_CHILD") == "1" {
		Mark(WorkerGot)
		time.Sleep(time.Millisecond)
		Mark(WorkerSent)
		for i := 0; i < bufferMarks; i++ { // fills the buffer once: written early
			Mark(BrokerGotRequest)
		}
		Mark(BrokerSentResponse)
		if err := Flush(); err != nil {
			os.Exit(3)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func child(t *testing.T, prefix string) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "TRACE_TEST_CHILD=1", "ASERPC_TRACE="+prefix)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

// With ASERPC_TRACE set, every mark reaches PREFIX.PID in order, with
// monotonic times that match the sleeps between them.
func TestMarksReachTheFile(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "t")
	child(t, prefix)
	files, _ := filepath.Glob(prefix + ".*")
	if len(files) != 1 {
		t.Fatalf("files %v, want one PREFIX.PID", files)
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != bufferMarks+3 {
		t.Fatalf("%d marks, want %d", len(lines), bufferMarks+3)
	}
	var points []int
	var times []int64
	for _, l := range lines {
		f := strings.Fields(l)
		p, _ := strconv.Atoi(f[0])
		ns, _ := strconv.ParseInt(f[1], 10, 64)
		points = append(points, p)
		times = append(times, ns)
	}
	if points[0] != int(WorkerGot) || points[1] != int(WorkerSent) || points[len(points)-1] != int(BrokerSentResponse) {
		t.Errorf("points %v ... %v", points[:3], points[len(points)-1])
	}
	if d := time.Duration(times[1] - times[0]); d < time.Millisecond || d > time.Second {
		t.Errorf("marks 1 ms apart read %v", d)
	}
	for i := 1; i < len(times); i++ {
		if times[i] < times[i-1] {
			t.Fatalf("time went back at mark %d", i)
		}
	}
}

// Off (the default), nothing is recorded or written.
func TestOffByDefault(t *testing.T) {
	if on {
		t.Skip("ASERPC_TRACE is set in this environment")
	}
	Mark(WorkerGot)
	if len(marks) != 0 || Flush() != nil {
		t.Errorf("marks recorded while off: %d", len(marks))
	}
}
