// A Go HTTP program for sightline's tests. With -offsets it prints the offsets of the struct
// fields sightline's Go probes read, as the program itself sees them (unsafe.Offsetof and
// reflect), one "type field offset" line each. Otherwise it serves HTTP/1.1 and HTTP/2, plain
// and TLS, and can call onward, which later tests use.
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

func getg() uintptr

// The body of onward POSTs, long enough that its request is written in more than one piece.
var onwardBody = strings.Repeat("sightline onward body ", 300)

func init() {
	// -exec-into execs from the main goroutine, which must then run on the main thread.
	for _, a := range os.Args[1:] {
		if a == "-exec-into" || a == "--exec-into" {
			runtime.LockOSThread()
		}
	}
}

func main() {
	offsets := flag.Bool("offsets", false, "print struct field offsets and exit")
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on")
	useTLS := flag.Bool("tls", false, "serve HTTPS with a self-signed certificate")
	h1only := flag.Bool("h1", false, "with -tls: offer HTTP/1.1 only")
	next := flag.String("next", "", "URL that /chain/ and /spawn/ call onward")
	clientH2 := flag.Bool("client-h2", false, "call onward over HTTP/2 when the next hop offers it")
	onwardMethod := flag.String("onward-method", "GET", "method of the onward call (POST sends onwardBody)")
	onwardTP := flag.String("onward-traceparent", "", "a traceparent the program itself sets on onward calls")
	onwardRawTP := flag.String("onward-raw-traceparent", "", "the same, under the non-canonical key \"traceparent\" (written as is)")
	onwardHeaders := flag.Int("onward-headers", 0, "onward calls carry this many extra headers (X-Fill-N: a big header map)")
	onwardLocalPort := flag.Int("onward-local-port", 0, "onward calls go over one connection from this local port")
	onwardCheckTrace := flag.Bool("onward-check-trace", false, "an onward call must come back with the trace of the request that made it (the /tp/ handler echoes the traceparent it got), else 409")
	onwardTrailer := flag.Bool("onward-trailer", false, "onward POSTs end with a trailer (X-Check: 1)")
	execInto := flag.String("exec-into", "", "GET /exec/ replaces this process's image with this program (same pid)")
	execListen := flag.String("exec-listen", "", "the address the -exec-into program listens on")
	flag.Parse()
	if *offsets {
		printOffsets()
		return
	}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2: *clientH2,
	}}
	if !*clientH2 {
		client.Transport.(*http.Transport).TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	if *onwardLocalPort != 0 {
		t := client.Transport.(*http.Transport)
		t.DialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{Port: *onwardLocalPort}}).DialContext
		t.MaxConnsPerHost = 1
	}
	onward := func(r *http.Request) int {
		var body io.Reader
		if *onwardMethod == "POST" {
			body = strings.NewReader(onwardBody)
		}
		req, _ := http.NewRequest(*onwardMethod, *next, body)
		if *onwardTP != "" {
			req.Header.Set("Traceparent", *onwardTP)
		}
		if *onwardRawTP != "" {
			req.Header["traceparent"] = []string{*onwardRawTP}
		}
		for i := 0; i < *onwardHeaders; i++ {
			req.Header.Set(fmt.Sprintf("X-Fill-%d", i), "1")
		}
		if *onwardTrailer {
			// Traceparent is declared (with no value) so that the server would see one
			// added to the trailers: undeclared trailers never reach its handler.
			req.Trailer = http.Header{"X-Check": {"1"}, "Traceparent": nil}
			req.Header.Set("X-Trailer-Sent", "1")
		}
		res, err := client.Do(req)
		if err != nil {
			fmt.Fprintln(os.Stderr, "onward:", err)
			return 502
		}
		echo, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if *onwardCheckTrace && res.StatusCode == 200 {
			// "00-<trace>-<span>-<flags>": the trace must be the incoming request's.
			in, out := r.Header.Get("Traceparent"), string(echo)
			if len(in) < 35 || len(out) < 35 || in[3:35] != out[3:35] {
				fmt.Fprintf(os.Stderr, "onward: sent under %q, arrived as %q\n", in, out)
				return 409
			}
		}
		return res.StatusCode
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/items/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s %s\n", r.Method, r.URL.Path, r.Proto)
	})
	mux.HandleFunc("/status/", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
		if err != nil {
			code = 400
		}
		w.WriteHeader(code)
	})
	// What a traced caller's request looks like on arrival: exactly one traceparent, and a
	// POST body byte for byte as sent; echoes the traceparent.
	mux.HandleFunc("/tp/", func(w http.ResponseWriter, r *http.Request) {
		if code := arrival(r, false); code != 0 {
			w.WriteHeader(code)
			return
		}
		fmt.Fprint(w, r.Header.Get("Traceparent"))
	})
	// The same where a request may carry none (sightline coming and going).
	mux.HandleFunc("/tp01/", func(w http.ResponseWriter, r *http.Request) {
		if code := arrival(r, true); code != 0 {
			w.WriteHeader(code)
			return
		}
		fmt.Fprint(w, len(r.Header.Values("Traceparent")))
	})
	// Answers, then the main goroutine (locked to the main thread) becomes another program
	// under the same pid.
	execNow := make(chan struct{}, 1)
	mux.HandleFunc("/exec/", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		select {
		case execNow <- struct{}{}:
		default:
		}
	})
	// The onward call on the handler's own goroutine.
	mux.HandleFunc("/chain/", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(onward(r))
	})
	// The onward call on a goroutine the handler starts.
	mux.HandleFunc("/spawn/", func(w http.ResponseWriter, r *http.Request) {
		done := make(chan int)
		go func() { done <- onward(r) }()
		w.WriteHeader(<-done)
	})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: mux}
	fmt.Println("listening on", ln.Addr())
	if *execInto != "" {
		go func() { fmt.Fprintln(os.Stderr, srv.Serve(ln)) }()
		<-execNow
		time.Sleep(100 * time.Millisecond)
		// Whoever read this program's "listening on" may have stopped reading: the new one's
		// would die of SIGPIPE.
		if null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0); err == nil {
			syscall.Dup2(int(null.Fd()), 1)
		}
		// From the thread-group leader, so no thread of the old image exits: only the exec
		// tells that the program changed.
		err := syscall.Exec(*execInto, []string{*execInto, "-listen", *execListen}, os.Environ())
		fmt.Fprintln(os.Stderr, "exec:", err)
		os.Exit(1)
	}
	if *useTLS {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{selfSigned()}}
		if *h1only {
			srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
		}
		fmt.Fprintln(os.Stderr, srv.ServeTLS(ln, "", ""))
		return
	}
	fmt.Fprintln(os.Stderr, srv.Serve(ln))
}

// What is wrong with a traced caller's request on arrival: 400 for two traceparents, a
// malformed one, or none unless noneOK; 422 for a POST body not byte for byte as sent; else 0.
func arrival(r *http.Request, noneOK bool) int {
	tps := r.Header.Values("Traceparent")
	if len(tps) > 1 || (len(tps) == 0 && !noneOK) || (len(tps) == 1 && !wellFormed(tps[0])) {
		return 400
	}
	if r.Method == "POST" {
		b, _ := io.ReadAll(r.Body)
		if string(b) != onwardBody {
			return 422
		}
		// Trailers arrive after the body, and a traceparent is never among them.
		if r.Trailer.Get("Traceparent") != "" {
			return 400
		}
		if r.Header.Get("X-Trailer-Sent") == "1" && r.Trailer.Get("X-Check") != "1" {
			return 417
		}
	}
	return 0
}

// A version 00 traceparent: 00-<32 hex>-<16 hex>-<2 hex>, lowercase.
func wellFormed(tp string) bool {
	if len(tp) != 55 || tp[:3] != "00-" || tp[35] != '-' || tp[52] != '-' {
		return false
	}
	for i, c := range tp {
		if i < 3 || i == 35 || i == 52 {
			continue
		}
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func selfSigned() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func out(ty, field string, off uintptr) {
	fmt.Printf("%s %s %d\n", ty, field, off)
}

// fields prints the named fields of a struct type found through reflect.
func fields(t reflect.Type, names ...string) {
	for t.Kind() == reflect.Ptr {
		t = t.Elem()
	}
	for _, n := range names {
		if f, ok := t.FieldByName(n); ok && len(f.Index) == 1 {
			out(t.PkgPath()+"."+t.Name(), n, f.Offset)
		}
	}
}

func fieldType(t reflect.Type, name string) reflect.Type {
	for t.Kind() == reflect.Ptr {
		t = t.Elem()
	}
	f, ok := t.FieldByName(name)
	if !ok {
		panic(t.String() + " has no field " + name)
	}
	return f.Type
}

func printOffsets() {
	var req http.Request
	out("net/http.Request", "Method", unsafe.Offsetof(req.Method))
	out("net/http.Request", "URL", unsafe.Offsetof(req.URL))
	out("net/http.Request", "Proto", unsafe.Offsetof(req.Proto))
	out("net/http.Request", "ProtoMajor", unsafe.Offsetof(req.ProtoMajor))
	out("net/http.Request", "ProtoMinor", unsafe.Offsetof(req.ProtoMinor))
	out("net/http.Request", "Header", unsafe.Offsetof(req.Header))
	out("net/http.Request", "ContentLength", unsafe.Offsetof(req.ContentLength))
	out("net/http.Request", "Host", unsafe.Offsetof(req.Host))
	out("net/http.Request", "RemoteAddr", unsafe.Offsetof(req.RemoteAddr))
	out("net/http.Request", "RequestURI", unsafe.Offsetof(req.RequestURI))
	out("net/http.Request", "TLS", unsafe.Offsetof(req.TLS))
	// Unexported, and Pattern exists only from Go 1.23: reflect sees both.
	fields(reflect.TypeOf(req), "ctx", "Pattern")
	var u url.URL
	out("net/url.URL", "Scheme", unsafe.Offsetof(u.Scheme))
	out("net/url.URL", "Host", unsafe.Offsetof(u.Host))
	out("net/url.URL", "Path", unsafe.Offsetof(u.Path))
	out("net/url.URL", "RawQuery", unsafe.Offsetof(u.RawQuery))
	var resp http.Response
	out("net/http.Response", "StatusCode", unsafe.Offsetof(resp.StatusCode))
	out("net/http.Response", "ContentLength", unsafe.Offsetof(resp.ContentLength))
	out("net/http.Response", "Request", unsafe.Offsetof(resp.Request))
	var addr net.TCPAddr
	out("net.TCPAddr", "IP", unsafe.Offsetof(addr.IP))
	out("net.TCPAddr", "Port", unsafe.Offsetof(addr.Port))
	fields(reflect.TypeOf(tls.Conn{}), "conn", "isClient")
	fields(reflect.TypeOf(bufio.Writer{}), "buf", "n", "wr")

	// The server's unexported types, seen from a handler on a real connection.
	var wg sync.WaitGroup
	wg.Add(1)
	http.HandleFunc("/probe", func(w http.ResponseWriter, r *http.Request) {
		defer wg.Done()
		rt := reflect.TypeOf(w)
		fields(rt, "conn", "req", "status", "wroteHeader")
		fields(fieldType(rt, "conn"), "rwc", "tlsState")
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go http.Serve(ln, nil)
	tr := &http.Transport{}
	c := &http.Client{Transport: tr}
	res, err := c.Get("http://" + ln.Addr().String() + "/probe")
	if err != nil {
		panic(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	wg.Wait()
	// idleConn map[connectMethodKey][]*persistConn
	fields(fieldType(reflect.TypeOf(tr), "idleConn").Elem().Elem(), "conn", "tlsState")

	tcp := reflect.TypeOf(net.TCPConn{})
	conn := tcp.Field(0).Type // the embedded net.conn
	fields(conn, "fd")
	netFD := fieldType(conn, "fd")
	fields(netFD, "pfd", "laddr", "raddr")
	fields(fieldType(netFD, "pfd"), "Sysfd")

	// The bundled HTTP/2 client: configuring the transport stores *http2Transport in
	// h2transport, whose ConnPool wraps the pool that maps addresses to *http2ClientConn.
	tr2 := &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{}}
	tr2.CloseIdleConnections() // runs onceSetNextProtoDefaults
	h2 := reflect.ValueOf(tr2).Elem().FieldByName("h2transport").Elem()
	if h2.IsValid() {
		pool := h2.Elem().FieldByName("ConnPool").Elem().Field(0).Type()
		cc := fieldType(pool, "conns").Elem().Elem()
		fields(cc, "tconn")
		fields(fieldType(cc, "streams").Elem(), "ID")
		fields(fieldType(cc, "fr"), "w")
	}
	printGoid()
}

// printGoid finds runtime.g's goid as the one offset that holds each goroutine's own id (from
// its stack trace header) in several goroutines at once.
func printGoid() {
	const n = 4
	type probe struct {
		g  uintptr
		id uint64
	}
	var mu sync.Mutex
	var probes []probe
	var wg sync.WaitGroup
	var hold sync.WaitGroup
	hold.Add(1)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			buf := make([]byte, 64)
			buf = buf[:runtime.Stack(buf, false)]
			f := strings.Fields(string(buf))
			id, _ := strconv.ParseUint(f[1], 10, 64)
			mu.Lock()
			probes = append(probes, probe{getg(), id})
			mu.Unlock()
			wg.Done()
			hold.Wait() // keep g alive while it is read
		}()
	}
	wg.Wait()
	var found []uintptr
	for off := uintptr(0); off < 512; off += 8 {
		ok := true
		for _, p := range probes {
			if *(*uint64)(unsafe.Pointer(p.g + off)) != p.id {
				ok = false
				break
			}
		}
		if ok {
			found = append(found, off)
		}
	}
	hold.Done()
	if len(found) == 1 {
		out("runtime.g", "goid", found[0])
	}
}
