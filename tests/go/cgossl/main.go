// A Go HTTP program whose TLS is OpenSSL through cgo, not crypto/tls, for sightline's tests:
// net/http runs over connections whose bytes go through libssl's SSL_read and SSL_write, so
// both the Go probes and the OpenSSL probes see each request. With -serve it serves HTTPS
// (printing "listening on ADDR"); with -call URL it makes -n GET requests over one
// keep-alive connection (after -delay), prints each status, and exits.
package main

/*
#cgo LDFLAGS: -lssl -lcrypto
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>

static SSL_CTX *new_ctx(int server, const char *cert, const char *key) {
	SSL_CTX *c = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	if (!c) return NULL;
	if (server && (SSL_CTX_use_certificate_file(c, cert, SSL_FILETYPE_PEM) != 1 ||
	               SSL_CTX_use_PrivateKey_file(c, key, SSL_FILETYPE_PEM) != 1)) {
		SSL_CTX_free(c);
		return NULL;
	}
	SSL_CTX_set_verify(c, SSL_VERIFY_NONE, NULL);
	return c;
}

static SSL *new_ssl(SSL_CTX *c, int fd) {
	SSL *s = SSL_new(c);
	if (s) SSL_set_fd(s, fd);
	return s;
}

// 1 done, 0 retry after waiting (want: 1 read, 2 write), -1 failed.
// OpenSSL reports errors through a queue per thread: one left by another connection on this
// thread would be taken for this call's, so each call starts with it empty.
static int handshake(SSL *s, int server, int *want) {
	ERR_clear_error();
	int r = server ? SSL_accept(s) : SSL_connect(s);
	if (r == 1) return 1;
	int e = SSL_get_error(s, r);
	if (e == SSL_ERROR_WANT_READ) { *want = 1; return 0; }
	if (e == SSL_ERROR_WANT_WRITE) { *want = 2; return 0; }
	return -1;
}

// > 0 bytes moved, 0 retry after waiting (want: 1 read, 2 write), < 0 -(SSL error) - 1.
static int io(SSL *s, int write, void *b, int n, int *want) {
	ERR_clear_error();
	int r = write ? SSL_write(s, b, n) : SSL_read(s, b, n);
	if (r > 0) return r;
	int e = SSL_get_error(s, r);
	if (e == SSL_ERROR_WANT_READ) { *want = 1; return 0; }
	if (e == SSL_ERROR_WANT_WRITE) { *want = 2; return 0; }
	return -e - 1;
}

static void wait_fd(int fd, int want, int ms) {
	struct pollfd p = { fd, want == 2 ? POLLOUT : POLLIN, 0 };
	poll(&p, 1, ms);
}
*/
import "C"

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

func main() {
	serve := flag.Bool("serve", false, "serve HTTPS on 127.0.0.1")
	call := flag.String("call", "", "URL to GET")
	n := flag.Int("n", 1, "requests to make with -call")
	delay := flag.Duration("delay", 0, "wait this long before the first -call request")
	flag.Parse()
	if *serve {
		cert, key := writeSelfSigned()
		ctx := C.new_ctx(1, C.CString(cert), C.CString(key))
		if ctx == nil {
			fail(errors.New("SSL_CTX for the server"))
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fail(err)
		}
		fmt.Println("listening on", ln.Addr())
		mux := http.NewServeMux()
		mux.HandleFunc("/items/", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s %s %s\n", r.Method, r.URL.Path, r.Proto)
		})
		fail(http.Serve(&sslListener{ln, ctx}, mux))
	}
	if *call != "" {
		ctx := C.new_ctx(0, nil, nil)
		client := &http.Client{Transport: &http.Transport{
			DialTLSContext: func(_ context.Context, network, addr string) (net.Conn, error) {
				c, err := net.Dial(network, addr)
				if err != nil {
					return nil, err
				}
				return newSSLConn(c, ctx, false)
			},
		}}
		time.Sleep(*delay)
		for i := 0; i < *n; i++ {
			res, err := client.Get(*call)
			if err != nil {
				fail(err)
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			fmt.Println(res.StatusCode)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

type sslListener struct {
	net.Listener
	ctx *C.SSL_CTX
}

func (l *sslListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		sc, err := newSSLConn(c, l.ctx, true)
		if err == nil {
			return sc, nil
		}
	}
}

// A net.Conn over OpenSSL on the socket's own non-blocking fd, which Go's TCPConn keeps open
// (and closes last). One SSL object must not be used from two threads at once, and net/http
// reads in the background while a handler writes, so each SSL call holds mu, and waiting for
// the socket does not.
type sslConn struct {
	mu           sync.Mutex
	ssl          *C.SSL
	tcp          net.Conn
	fd           int
	local, peer  net.Addr
	readDeadline atomic.Int64
	closed       atomic.Bool
}

func newSSLConn(c net.Conn, ctx *C.SSL_CTX, server bool) (*sslConn, error) {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	raw.Control(func(f uintptr) { fd = int(f) })
	s := &sslConn{tcp: c, fd: fd, local: c.LocalAddr(), peer: c.RemoteAddr()}
	s.ssl = C.new_ssl(ctx, C.int(fd))
	srv := C.int(0)
	if server {
		srv = 1
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		var want C.int
		s.mu.Lock()
		r := C.handshake(s.ssl, srv, &want)
		s.mu.Unlock()
		if r == 1 {
			return s, nil
		}
		if r < 0 {
			break
		}
		C.wait_fd(C.int(fd), want, 50)
	}
	s.Close()
	return nil, errors.New("TLS handshake failed")
}

func (s *sslConn) do(write bool, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	w := C.int(0)
	if write {
		w = 1
	}
	for {
		if s.closed.Load() {
			return 0, net.ErrClosed
		}
		if d := s.readDeadline.Load(); !write && d != 0 && time.Now().UnixNano() >= d {
			return 0, os.ErrDeadlineExceeded
		}
		var want C.int
		s.mu.Lock()
		r := C.io(s.ssl, w, unsafe.Pointer(&b[0]), C.int(len(b)), &want)
		s.mu.Unlock()
		if r > 0 {
			return int(r), nil
		}
		if r < 0 {
			if e := -r - 1; e != C.SSL_ERROR_ZERO_RETURN && e != C.SSL_ERROR_SYSCALL {
				fmt.Fprintf(os.Stderr, "SSL_%s on fd %d: SSL error %d\n", map[bool]string{true: "write", false: "read"}[write], s.fd, e)
			}
			return 0, io.EOF
		}
		C.wait_fd(C.int(s.fd), want, 20)
	}
}

func (s *sslConn) Read(b []byte) (int, error) { return s.do(false, b) }

func (s *sslConn) Write(b []byte) (int, error) {
	done := 0
	for done < len(b) {
		n, err := s.do(true, b[done:])
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

func (s *sslConn) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.mu.Lock()
	if s.ssl != nil {
		C.SSL_free(s.ssl)
		s.ssl = nil
	}
	s.mu.Unlock()
	return s.tcp.Close()
}

func (s *sslConn) LocalAddr() net.Addr  { return s.local }
func (s *sslConn) RemoteAddr() net.Addr { return s.peer }
func (s *sslConn) SetDeadline(t time.Time) error {
	return s.SetReadDeadline(t)
}
func (s *sslConn) SetReadDeadline(t time.Time) error {
	if t.IsZero() {
		s.readDeadline.Store(0)
	} else {
		s.readDeadline.Store(t.UnixNano())
	}
	return nil
}
func (s *sslConn) SetWriteDeadline(time.Time) error { return nil }

// A self-signed certificate and key for 127.0.0.1, as PEM files in a temporary directory.
func writeSelfSigned() (string, string) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	kder, _ := x509.MarshalECPrivateKey(key)
	dir, err := os.MkdirTemp("", "cgossl")
	if err != nil {
		fail(err)
	}
	cert, keyf := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyf, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return cert, keyf
}
