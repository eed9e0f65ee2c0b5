package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aserpc/aserpc/internal/proctest"
)

// TestMetrics: `aserpc broker --metrics ADDR` serves Prometheus metrics
// (issue 18). Requests of known number and outcome go through a plain and
// a batching worker; the scrape passes Prometheus's own linter
// (`promtool check metrics`), its values match what was sent, and a real
// Prometheus server scraping the broker answers a query with them.
func TestMetrics(t *testing.T) {
	promtool, err1 := exec.LookPath("promtool")
	prom, err2 := exec.LookPath("prometheus")
	if err1 != nil || err2 != nil {
		t.Skip("needs promtool and prometheus (Debian package prometheus; scripts/bootstrap.sh installs it)")
	}
	py := debian(t)
	c := newCluster(t)
	ports := proctest.FreeTCP(t, 2)
	addr, promAddr := strings.TrimPrefix(ports[0], "tcp://"), strings.TrimPrefix(ports[1], "tcp://")
	broker := c.start("broker", aserpcBin, "broker", "--frontend", c.front, "--backend", c.back,
		"--metrics", addr, "--log-level", "INFO")
	w1 := c.startWorker("LJ", py, "LJ")
	w2 := c.startWorker("EPBATCH", py, "EPBATCH", "--batch-size", "4")
	c.waitWorkers("LJ", 1, w1)
	c.waitWorkers("EPBATCH", 1, w2)
	if !strings.Contains(broker.Logs(), "serving metrics") {
		t.Fatalf("broker did not say where its metrics are:\n%s", broker.Logs())
	}
	want := local(t, py, "ase.calculators.lj:LennardJones", nil, nil, "H2O", "Cu")
	for i := range 7 {
		c.compute("LJ", want[[]string{"H2O", "Cu"}[i%2]])
	}
	for range 3 {
		c.compute("EPBATCH", want["Cu"])
	}
	if r := c.computeErr("Nope", want["H2O"]); r.resp.Error == "" {
		t.Fatal("a request for an unknown calculator succeeded")
	}
	time.Sleep(1500 * time.Millisecond) // a tick's snapshot, and the workers' next report of themselves
	c.compute("LJ", want["H2O"])        // (its READY carries the report)
	time.Sleep(500 * time.Millisecond)

	text := scrape(t, "http://"+addr+"/metrics")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	for series, check := range map[string]func(float64) bool{
		`aserpc_requests_total{calc="LJ",outcome="ok"}`:                 eq(8),
		`aserpc_requests_total{calc="EPBATCH",outcome="ok"}`:            eq(3),
		`aserpc_requests_total{calc="(unknown)",outcome="no_workers"}`:  eq(1),
		`aserpc_queue_wait_seconds_count{calc="LJ"}`:                    eq(8),
		`aserpc_service_seconds_count{calc="LJ"}`:                       eq(8),
		`aserpc_workers{calc="LJ",state="idle"}`:                        eq(1),
		`aserpc_workers{calc="LJ",state="reserved"}`:                    eq(0),
		`aserpc_job_slots{calc="EPBATCH"}`:                              eq(4),
		`aserpc_batch_size_count{calc="EPBATCH"}`:                       eq(3),
		`aserpc_manager_connected`:                                      eq(0),
		`aserpc_message_bytes_total{direction="in",side="frontend"}`:    gt(0),
		`aserpc_broker_loop_seconds_count`:                              gt(20),
		`aserpc_worker_requests_total{calc="LJ",host="` + host() + `",`: gt(6),
		`aserpc_worker_resident_memory_bytes{calc="LJ",`:                gt(1e6),
	} {
		v, ok := sample(text, series)
		if !ok || !check(v) {
			t.Errorf("%s = %v (present: %v)", series, v, ok)
		}
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", text)
	}

	// A real Prometheus scrapes the broker; its query API gives the same count.
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: aserpc\n    static_configs:\n      - targets: [%q]\n", addr)), 0o644)
	server := c.start("prometheus", prom, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr)
	q := url.Values{"query": {`sum(aserpc_requests_total{calc="LJ",outcome="ok"})`}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := promQuery("http://" + promAddr + "/api/v1/query?" + q.Encode())
		if err == nil && v == 8 {
			t.Logf("prometheus: %s = %v", q.Get("query"), v)
			break
		}
		if time.Now().After(deadline) || !server.Running() {
			t.Fatalf("prometheus never saw the 8 requests (last: %v, %v):\n%s", v, err, server.Logs())
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func eq(want float64) func(float64) bool { return func(v float64) bool { return v == want } }
func gt(min float64) func(float64) bool  { return func(v float64) bool { return v > min } }

func host() string { h, _ := os.Hostname(); return h }

func scrape(t *testing.T, u string) []byte {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v", u, resp.StatusCode, err)
	}
	return b
}

// sample returns the value of the first series line that starts with
// prefix (a name with its labels, or a prefix of them).
func sample(text []byte, prefix string) (float64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			return v, err == nil
		}
	}
	return 0, false
}

var numRe = regexp.MustCompile(`^-?[0-9.eE+]+$`)

// promQuery runs an instant query and returns its one value.
func promQuery(u string) (float64, error) {
	resp, err := http.Get(u)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Value []any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, err
	}
	if r.Status != "success" || len(r.Data.Result) != 1 || len(r.Data.Result[0].Value) != 2 {
		return 0, fmt.Errorf("query result %+v", r)
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	if !numRe.MatchString(s) {
		return 0, fmt.Errorf("value %q", s)
	}
	return strconv.ParseFloat(s, 64)
}
