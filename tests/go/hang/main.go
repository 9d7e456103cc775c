// hang makes -n concurrent GET requests to -url from one Go process and waits for them,
// after -wait, printing "started" once every request's goroutine is running. Against a server that never
// answers, it is a Go client with its calls in flight for as long as a test needs, which the
// test then kills mid-request.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"sync"
	"time"
)

func main() {
	url := flag.String("url", "", "URL to GET")
	n := flag.Int("n", 10, "concurrent requests")
	wait := flag.Duration("wait", 0, "how long to wait before requesting (for a tracer to attach)")
	flag.Parse()
	time.Sleep(*wait)
	client := &http.Client{
		Timeout:   time.Hour,
		Transport: &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: *n},
	}
	var wg sync.WaitGroup
	for i := 0; i < *n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			resp, err := client.Get(fmt.Sprintf("%s?i=%d", *url, i))
			if err == nil {
				resp.Body.Close()
			}
		}(i)
	}
	fmt.Println("started")
	wg.Wait()
}
