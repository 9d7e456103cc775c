// idle only sleeps: a real Go program that stays alive for as long as a test needs a process
// to look at, with nothing of its own to get in the way of what the test crafts into its
// binary (tests/support/crafted.rs).
package main

import "time"

func main() {
	time.Sleep(time.Hour)
}
