package auth

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// Cert is a CURVE key pair as Z85 text; Secret is empty for a public
// certificate.
type Cert struct {
	Public string
	Secret string
}

// ErrNoPublicKey means a file has no public-key line.
var ErrNoPublicKey = errors.New("no public key")

// ValidKey reports whether s is a CURVE key in Z85 (40 characters that
// decode to 32 bytes).
func ValidKey(s string) bool {
	return len(s) == 40 && len(zmq.Z85decode(s)) == 32
}

// NewCert makes a fresh key pair.
func NewCert() (Cert, error) {
	if !zmq.HasCurve() {
		return Cert{}, errors.New("this libzmq has no CURVE support")
	}
	pub, sec, err := zmq.NewCurveKeypair()
	if err != nil {
		return Cert{}, fmt.Errorf("curve keypair: %w", err)
	}
	return Cert{Public: pub, Secret: sec}, nil
}

// LoadCert reads a certificate file the way pyzmq's load_certificate does:
// the first "public-key = ..." and "secret-key = ..." lines, values
// stripped of blanks and quotes, "#" lines skipped. It checks that the keys
// are valid and, for a secret certificate, that they belong together.
func LoadCert(path string) (Cert, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Cert{}, err
	}
	var c Cert
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") {
			continue
		}
		for _, kv := range []struct {
			name string
			dst  *string
		}{{"public-key", &c.Public}, {"secret-key", &c.Secret}} {
			if rest, ok := strings.CutPrefix(line, kv.name); ok && *kv.dst == "" {
				if _, v, ok := strings.Cut(rest, "="); ok {
					*kv.dst = strings.Trim(v, " \t'\"")
				}
			}
		}
	}
	if c.Public == "" {
		return Cert{}, fmt.Errorf("%s: %w", path, ErrNoPublicKey)
	}
	if !ValidKey(c.Public) {
		return Cert{}, fmt.Errorf("%s: public-key is not 40 characters of Z85", path)
	}
	if c.Secret != "" {
		if !ValidKey(c.Secret) {
			return Cert{}, fmt.Errorf("%s: secret-key is not 40 characters of Z85", path)
		}
		if pub, err := zmq.AuthCurvePublic(c.Secret); err != nil || pub != c.Public {
			return Cert{}, fmt.Errorf("%s: public-key does not belong to secret-key", path)
		}
	}
	return c, nil
}

// LoadSecret reads a secret certificate (NAME.key_secret).
func LoadSecret(path string) (Cert, error) {
	c, err := LoadCert(path)
	if err != nil {
		return Cert{}, err
	}
	if c.Secret == "" {
		return Cert{}, fmt.Errorf("%s: no secret-key (give the .key_secret file, not the public .key)", path)
	}
	return c, nil
}

// LooseMode reports whether a secret certificate is readable by others.
func LooseMode(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().Perm()&0o077 != 0
}

// PublicKey resolves s, a Z85 public key or the path of a certificate file
// (relative paths against dir), to the Z85 key.
func PublicKey(s, dir string) (string, error) {
	s = strings.TrimSpace(s)
	if ValidKey(s) {
		return s, nil
	}
	p := s
	if !filepath.IsAbs(p) && dir != "" {
		p = filepath.Join(dir, p)
	}
	c, err := LoadCert(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("%q is neither a Z85 key (40 characters) nor a certificate file", s)
		}
		return "", err
	}
	return c.Public, nil
}

// WriteCerts writes NAME.key (public, mode 0644) and NAME.key_secret
// (mode 0600) into dir, as pyzmq's create_certificates does, and returns
// their paths. It refuses to overwrite either file.
func WriteCerts(dir, name string, c Cert) (public, secret string, err error) {
	if name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		return "", "", fmt.Errorf("invalid certificate name %q", name)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	public = filepath.Join(dir, name+".key")
	secret = filepath.Join(dir, name+".key_secret")
	for _, p := range []string{public, secret} {
		if _, err := os.Lstat(p); err == nil {
			return "", "", fmt.Errorf("%s exists; not overwriting a certificate", p)
		}
	}
	now := time.Now().Format("2006-01-02 15:04:05")
	pub := fmt.Sprintf("#   ****  Generated on %s by aserpc  ****\n"+
		"#   ZeroMQ CURVE Public Certificate\n"+
		"#   Exchange securely, or use a secure mechanism to verify the contents\n"+
		"#   of this file after exchange.\n\n"+
		"metadata\n    name = %q\ncurve\n    public-key = %q\n", now, name, c.Public)
	sec := fmt.Sprintf("#   ****  Generated on %s by aserpc  ****\n"+
		"#   ZeroMQ CURVE **Secret** Certificate\n"+
		"#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n"+
		"metadata\n    name = %q\ncurve\n    public-key = %q\n    secret-key = %q\n", now, name, c.Public, c.Secret)
	for _, f := range []struct {
		path, text string
		mode       os.FileMode
	}{{secret, sec, 0o600}, {public, pub, 0o644}} {
		fh, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode)
		if err != nil {
			return "", "", err
		}
		_, werr := fh.WriteString(f.text)
		if cerr := fh.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return "", "", werr
		}
	}
	return public, secret, nil
}
