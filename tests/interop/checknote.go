// checknote verifies an actseal checkpoint note with Go's golang.org/x/mod/sumdb/note (the
// signed-note parser of the Go checksum database, as Debian ships it), supplying verifiers for
// the two signature types that package does not implement itself, from Go's standard crypto:
// ECDSA P-256 (type 0x02, the log key) and cosignature/v1 (type 0x04, the witnesses).
//
// Usage: checknote NOTE_FILE LOG_VKEY [WITNESS_VKEY...]
// Prints "OK <origin> <size> <key names>" when every given key's signature is on the note and
// verifies; exits 1 otherwise. Run with GO111MODULE=off GOPATH=/usr/share/gocode.
package main

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

type verifier struct {
	name   string
	hash   uint32
	verify func(msg, sig []byte) bool
}

func (v *verifier) Name() string                { return v.name }
func (v *verifier) KeyHash() uint32             { return v.hash }
func (v *verifier) Verify(msg, sig []byte) bool { return v.verify(msg, sig) }

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "checknote: "+format+"\n", args...)
	os.Exit(1)
}

// parseVkey reads name+hash+base64(type || key) and checks the hash per C2SP signed-note.
func parseVkey(vkey string) note.Verifier {
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		fail("bad vkey %q", vkey)
	}
	name, hashHex, b64 := parts[0], parts[1], parts[2]
	blob, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(blob) < 2 {
		fail("bad vkey key %q", vkey)
	}
	hash64, err := strconv.ParseUint(hashHex, 16, 32)
	if err != nil {
		fail("bad vkey hash %q", vkey)
	}
	hash := uint32(hash64)
	kind, key := blob[0], blob[1:]
	switch kind {
	case 0x02:
		id := sha256.Sum256(key)
		if binary.BigEndian.Uint32(id[:4]) != hash {
			fail("vkey %q: hash is not SHA-256(SPKI)[:4]", name)
		}
		pub, err := x509.ParsePKIXPublicKey(key)
		if err != nil {
			fail("vkey %q: %v", name, err)
		}
		ec, ok := pub.(*ecdsa.PublicKey)
		if !ok {
			fail("vkey %q: not ECDSA", name)
		}
		return &verifier{name, hash, func(msg, sig []byte) bool {
			digest := sha256.Sum256(msg)
			return ecdsa.VerifyASN1(ec, digest[:], sig)
		}}
	case 0x04:
		h := sha256.New()
		h.Write([]byte(name + "\n"))
		h.Write(blob)
		if binary.BigEndian.Uint32(h.Sum(nil)[:4]) != hash {
			fail("vkey %q: hash is not SHA-256(name || 0x0A || 0x04 || key)[:4]", name)
		}
		if len(key) != ed25519.PublicKeySize {
			fail("vkey %q: not an Ed25519 key", name)
		}
		return &verifier{name, hash, func(msg, sig []byte) bool {
			if len(sig) != 8+ed25519.SignatureSize {
				return false
			}
			t := binary.BigEndian.Uint64(sig[:8])
			signed := append([]byte(fmt.Sprintf("cosignature/v1\ntime %d\n", t)), msg...)
			return ed25519.Verify(ed25519.PublicKey(key), signed, sig[8:])
		}}
	}
	fail("vkey %q: type %#x is neither ECDSA (0x02) nor cosignature/v1 (0x04)", name, kind)
	return nil
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: checknote NOTE_FILE LOG_VKEY [WITNESS_VKEY...]")
	}
	msg, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	var list []note.Verifier
	for _, vkey := range os.Args[2:] {
		list = append(list, parseVkey(vkey))
	}
	n, err := note.Open(msg, note.VerifierList(list...))
	if err != nil {
		fail("note.Open: %v", err)
	}
	names := map[string]bool{}
	for _, s := range n.Sigs {
		names[s.Name] = true
	}
	var signed []string
	for _, v := range list {
		if !names[v.Name()] {
			fail("no verified signature by %s", v.Name())
		}
		signed = append(signed, v.Name())
	}
	lines := strings.SplitN(n.Text, "\n", 4)
	if len(lines) < 4 {
		fail("the note text is not a checkpoint")
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != 32 {
		fail("bad root hash line")
	}
	fmt.Printf("OK %s %s %s %s\n", lines[0], lines[1], hex.EncodeToString(root), strings.Join(signed, " "))
}
