// load is a Go HTTP client under load: -c goroutines send GET requests to -url over
// keep-alive connections for -d, after waiting -wait (for a tracer to attach); it prints
// "started" once they all run, then how many completed and the rate.
// tests/bench/go_overhead.sh measures the client path's cost with it; against a server that
// never answers, it is a Go client with -c calls in flight for as long as a test needs
// (tests/kernel_tables.rs kills it mid-request).
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	url := flag.String("url", "", "URL to GET")
	conc := flag.Int("c", 16, "concurrent requests")
	dur := flag.Duration("d", 8*time.Second, "how long to send")
	wait := flag.Duration("wait", 0, "how long to wait first")
	flag.Parse()
	time.Sleep(*wait)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *conc}}
	var n, failed int64
	end := time.Now().Add(*dur)
	var wg sync.WaitGroup
	for i := 0; i < *conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				resp, err := client.Get(*url)
				if err != nil {
					atomic.AddInt64(&failed, 1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				atomic.AddInt64(&n, 1)
			}
		}()
	}
	fmt.Println("started")
	wg.Wait()
	fmt.Printf("requests %d\nfailed %d\nrps %.0f\n", n, failed, float64(n)/dur.Seconds())
}
