package pliro

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Tests that need Caddy as a process of its own share one binary: the one
// scripts/setup builds (PLIRO_CADDY_BIN), or one built here once per run.
var caddyBin struct {
	once sync.Once
	path string
	err  error
}

func caddyBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PLIRO_CADDY_BIN"); p != "" {
		return p
	}
	caddyBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "pliro-caddy-")
		if err != nil {
			caddyBin.err = err
			return
		}
		caddyBin.path = filepath.Join(dir, "caddy")
		out, err := exec.Command("go", "build", "-o", caddyBin.path, "./cmd/caddy").CombinedOutput()
		if err != nil {
			caddyBin.err = fmt.Errorf("building Caddy: %v\n%s", err, out)
		}
	})
	if caddyBin.err != nil {
		t.Fatal(caddyBin.err)
	}
	return caddyBin.path
}

// caddyProcess is `caddy run` with a Caddyfile, on a port of its own.
type caddyProcess struct {
	t        *testing.T
	cmd      *exec.Cmd
	config   string
	port     int
	logFile  string
	stopOnce sync.Once
}

func startCaddyProcess(t *testing.T, config string, port int) *caddyProcess {
	t.Helper()
	c := &caddyProcess{t: t, config: config, port: port, logFile: config + ".log"}
	c.start()
	t.Cleanup(c.stop)
	return c
}

func (c *caddyProcess) start() {
	c.t.Helper()
	log, err := os.OpenFile(c.logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	c.cmd = exec.Command(caddyBinary(c.t), "run", "--config", c.config, "--adapter", "caddyfile")
	c.cmd.Stdout, c.cmd.Stderr = log, log
	c.cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+filepath.Dir(c.config), "XDG_DATA_HOME="+filepath.Dir(c.config))
	if err := c.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.stopOnce = sync.Once{}
	deadline := time.Now().Add(15 * time.Second)
	for {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", c.port))
		if err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(c.logFile)
			c.t.Fatalf("Caddy did not listen on %d:\n%s", c.port, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGINT, as an operator's Ctrl-C or a service manager does, and
// waits for a clean exit.
func (c *caddyProcess) stop() {
	c.stopOnce.Do(func() {
		_ = c.cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- c.cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = c.cmd.Process.Kill()
			c.t.Error("Caddy did not stop within 15s of SIGINT")
		}
	})
}

// TestRestartedProcessKeepsSignedInCustomers: an upgrade stops the Caddy
// process and starts a new one; with the default store, nothing else
// installed, customers stay signed in.
func TestRestartedProcessKeepsSignedInCustomers(t *testing.T) {
	p := newTestProvider(t)
	port := freePort(t)
	dir := t.TempDir()
	config := filepath.Join(dir, "Caddyfile")
	body := fmt.Sprintf(`{
	admin off
	auto_https off
	storage file_system %s
}
http://localhost:%d {
%s
}
`, filepath.Join(dir, "storage"), port, siteFor(p, ""))
	if err := os.WriteFile(config, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	proc := startCaddyProcess(t, config, port)
	site := &testSite{t: t, port: port, base: fmt.Sprintf("http://localhost:%d", port)}
	b := newBrowser(t)
	signIn(t, site, b, "/members/a")

	proc.stop()
	proc.start()
	if resp := b.get(site.base + "/members/a"); resp.StatusCode != http.StatusOK || resp.body != "members: id="+testSubject+" email=reader@example.com name=Rita Reader plan=premium slugs=premium sid="+testProviderSID {
		t.Fatalf("after the restart: %d %q", resp.StatusCode, resp.body)
	}
	snapshot, err := filepath.Glob(filepath.Join(dir, "storage", "pliro", "*", "sessions.json"))
	if err != nil || len(snapshot) != 1 {
		t.Fatalf("no sessions snapshot in storage: %v %v", snapshot, err)
	}
	if info, err := os.Stat(snapshot[0]); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("snapshot mode: %v %v", info.Mode(), err)
	}
}
