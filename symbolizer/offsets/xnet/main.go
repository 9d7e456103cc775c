// A program that links golang.org/x/net/http2's server and client, so its DWARF describes the
// x/net types sightline reads. Built in GOPATH mode against Debian's golang-golang-x-net-dev.
package main

import (
	"fmt"
	"net/http"

	"golang.org/x/net/http2"
)

func main() {
	srv := &http.Server{Addr: "127.0.0.1:0"}
	if err := http2.ConfigureServer(srv, &http2.Server{}); err != nil {
		fmt.Println(err)
	}
	t := &http2.Transport{}
	fr := http2.NewFramer(nil, nil)
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1})
	f, _ := fr.ReadFrame()
	if mh, ok := f.(*http2.MetaHeadersFrame); ok {
		fmt.Println(mh.Fields, mh.StreamID)
	}
	_, err := t.RoundTrip(&http.Request{})
	fmt.Println(err)
}
