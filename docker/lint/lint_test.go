// Package lint checks aserpc's Dockerfiles without a Docker engine: BuildKit's
// own linter (the checks of `docker build --check`) runs on each
// docker/*/Dockerfile with a stub image resolver, so nothing is fetched, and
// every warning fails the test; then the recipes' own conventions (one base
// image installing the wheel, model images FROM it, non-root, HEALTHCHECK,
// `aserpc worker` entrypoint) and compose.yaml's wiring. The images
// themselves are built and run by `just test-images` (package docker).
//
// It is a module of its own because BuildKit pulls in some 300 modules that
// aserpc itself must not depend on. Run it with `just lint-docker`.
package lint

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/opencontainers/go-digest"
	"go.yaml.in/yaml/v3"
)

// stubResolver answers every image lookup with a minimal linux/amd64 config
// whose environment is a Debian image's PATH, without any network.
type stubResolver struct{}

func (stubResolver) ResolveImageConfig(ctx context.Context, ref string, opt sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	cfg, _ := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{}},
		"config": map[string]any{
			"Env": []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		},
	})
	return ref, digest.FromBytes(cfg), cfg, nil
}

func dockerfiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("../*/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(filepath.Dir(f)))
	}
	for _, want := range []string{"base", "mace", "chgnet", "fairchem", "cuda"} {
		if !slices.Contains(names, want) {
			t.Errorf("no docker/%s/Dockerfile (have %v)", want, names)
		}
	}
	return files
}

func TestBuildKitLint(t *testing.T) {
	for _, path := range dockerfiles(t) {
		t.Run(filepath.Base(filepath.Dir(path)), func(t *testing.T) {
			dt, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			sm := llb.NewSourceMap(nil, path, "Dockerfile", dt)
			sm.Definition = &llb.Definition{} // AddSource reads it
			res, err := dockerfile2llb.DockerfileLint(context.Background(), dt, dockerfile2llb.ConvertOpt{
				SourceMap:    sm,
				MetaResolver: stubResolver{},
			})
			if err != nil {
				t.Fatal(err)
			}
			if res.Error != nil {
				t.Errorf("%s: %s", path, res.Error.Message)
			}
			for _, w := range res.Warnings {
				line := int32(0)
				if w.Location != nil && len(w.Location.Ranges) > 0 {
					line = w.Location.Ranges[0].Start.Line
				}
				t.Errorf("%s:%d: %s: %s (%s)", path, line, w.RuleName, w.Detail, w.URL)
			}
		})
	}
}

// TestConventions: one pattern for every image. docker/base installs the
// wheel from dist/ (no Go stage: the portable wheel carries the binary and
// its libzmq) on FROM ${BASE_IMAGE}, a Python image by default, and sets the
// non-root user, the HEALTHCHECK and the entrypoint `aserpc worker`; every
// other image is FROM ${BASE} (default aserpc-base), inherits those, ends as
// the non-root user and names what it serves in CMD. Files COPY'd from the
// context exist (dist/ is what `just wheel` makes).
func TestConventions(t *testing.T) {
	for _, path := range dockerfiles(t) {
		name := filepath.Base(filepath.Dir(path))
		t.Run(name, func(t *testing.T) {
			dt, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			ast, err := parser.Parse(bytes.NewReader(dt))
			if err != nil {
				t.Fatal(err)
			}
			stages, metaArgs, err := instructions.Parse(ast.AST, nil)
			if err != nil {
				t.Fatal(err)
			}
			defaults := map[string]string{}
			for _, a := range metaArgs {
				for _, kv := range a.Args {
					if kv.Value != nil {
						defaults[kv.Key] = *kv.Value
					}
				}
			}
			if len(stages) != 1 {
				t.Fatalf("%d stages, want one", len(stages))
			}
			wantFrom, wantDefault := "${BASE}", "aserpc-base"
			if name == "base" {
				wantFrom, wantDefault = "${BASE_IMAGE}", "python:"
			}
			arg := strings.Trim(wantFrom, "${}")
			if stages[0].BaseName != wantFrom || !strings.HasPrefix(defaults[arg], wantDefault) {
				t.Fatalf("FROM %s (ARG %s=%q), want FROM %s with a default %s...", stages[0].BaseName, arg,
					defaults[arg], wantFrom, wantDefault)
			}
			var user string
			var health, entry, cmd bool
			for _, c := range stages[0].Commands {
				switch c := c.(type) {
				case *instructions.UserCommand:
					user = c.User
				case *instructions.HealthCheckCommand:
					health = len(c.Health.Test) > 1 && c.Health.Test[0] != "NONE"
				case *instructions.EntrypointCommand:
					entry = !c.PrependShell && slices.Equal(c.CmdLine, []string{"aserpc", "worker"})
					if !entry {
						t.Errorf(`ENTRYPOINT %v, want ["aserpc", "worker"]`, c.CmdLine)
					}
				case *instructions.CmdCommand:
					cmd = !c.PrependShell && len(c.CmdLine) > 0
				case *instructions.CopyCommand:
					if c.From != "" {
						continue
					}
					for _, src := range c.SourcePaths {
						if strings.TrimSuffix(src, "/") == "dist" {
							continue // the wheels, made by `just wheel` before an image is built
						}
						if _, err := os.Stat(filepath.Join("..", "..", src)); err != nil {
							t.Errorf("COPY %s: %v", src, err)
						}
					}
				}
			}
			if user == "" || user == "root" || user == "0" {
				t.Errorf("the image ends as user %q, want a non-root USER", user)
			}
			if !cmd {
				t.Error("no CMD in JSON form: say what the image serves")
			}
			if name == "base" && (!health || !entry) {
				t.Errorf("the base image has no HEALTHCHECK (%v) or no aserpc worker ENTRYPOINT (%v)", health, entry)
			}
		})
	}
}

// TestCompose: every built image's Dockerfile exists, every service's image
// is built by one of them, the broker binds both sockets on tcp, every other
// service waits for a healthy broker, and mounted files exist.
func TestCompose(t *testing.T) {
	dt, err := os.ReadFile("../compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			Build *struct {
				Context            string            `yaml:"context"`
				Dockerfile         string            `yaml:"dockerfile"`
				AdditionalContexts map[string]string `yaml:"additional_contexts"`
			} `yaml:"build"`
			Image      string         `yaml:"image"`
			Entrypoint []string       `yaml:"entrypoint"`
			Command    []string       `yaml:"command"`
			DependsOn  map[string]any `yaml:"depends_on"`
			Volumes    []string       `yaml:"volumes"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(dt, &c); err != nil {
		t.Fatal(err)
	}
	built := map[string]bool{}
	for name, s := range c.Services {
		if s.Build == nil {
			continue
		}
		df := filepath.Join("..", s.Build.Context, s.Build.Dockerfile)
		if _, err := os.Stat(df); err != nil {
			t.Errorf("%s: dockerfile %v", name, err)
		}
		built[s.Image] = true
		// A model image is FROM aserpc-base: compose must build the base first and hand it over.
		if !strings.HasSuffix(s.Build.Dockerfile, "base/Dockerfile") && s.Build.AdditionalContexts["aserpc-base"] != "service:broker" {
			t.Errorf("%s: builds %s without additional_contexts aserpc-base: service:broker", name, s.Build.Dockerfile)
		}
	}
	for _, want := range []string{"broker", "manager", "worker-lj"} {
		if _, ok := c.Services[want]; !ok {
			t.Errorf("no service %s", want)
		}
	}
	for name, s := range c.Services {
		if !built[s.Image] {
			t.Errorf("%s: image %q is built by no service", name, s.Image)
		}
		for _, v := range s.Volumes {
			if src, _, _ := strings.Cut(v, ":"); strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join("..", src)); err != nil {
					t.Errorf("%s: volume %v", name, err)
				}
			}
		}
		args := strings.Join(append(append([]string{}, s.Entrypoint...), s.Command...), " ")
		if strings.Contains(args, "ipc://") {
			t.Errorf("%s: ipc address in %q; services talk over tcp", name, args)
		}
		if name == "broker" {
			if !strings.Contains(args, "--frontend tcp://*:5555") || !strings.Contains(args, "--backend tcp://*:5556") {
				t.Errorf("broker: %q does not bind tcp://*:5555 and tcp://*:5556", args)
			}
			continue
		}
		if _, ok := s.DependsOn["broker"]; !ok {
			t.Errorf("%s does not depend on the broker", name)
		}
	}
}
