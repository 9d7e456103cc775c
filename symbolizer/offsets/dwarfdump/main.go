// dwarfdump prints, for each "type field" line of a fields file, the field's offset as the
// binary's DWARF records it, read with Go's own debug/dwarf (not sightline's reader), as rows
// of the offsets table: key, producer, type, field, offset.
//
// Usage: dwarfdump <fields.txt> <binary> <key> <producer> <type-prefix|->
package main

import (
	"bufio"
	"debug/dwarf"
	"debug/elf"
	"fmt"
	"os"
	"strings"
)

func main() {
	if len(os.Args) != 6 {
		fmt.Fprintln(os.Stderr, "usage: dwarfdump <fields.txt> <binary> <key> <producer> <type-prefix|->")
		os.Exit(2)
	}
	fieldsFile, binary, key, producer, prefix := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5]
	type want struct{ ty, field string }
	var wants []want
	f, err := os.Open(fieldsFile)
	check(err)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		w := strings.Fields(sc.Text())
		if len(w) < 2 || strings.HasPrefix(w[0], "#") {
			continue
		}
		xnet := strings.HasPrefix(w[0], "golang.org/x/net/")
		if (prefix == "-") == xnet {
			continue
		}
		wants = append(wants, want{w[0], w[1]})
	}
	ef, err := elf.Open(binary)
	check(err)
	d, err := ef.DWARF()
	check(err)
	offsets := map[want]int64{}
	r := d.Reader()
	for {
		e, err := r.Next()
		check(err)
		if e == nil {
			break
		}
		if e.Tag != dwarf.TagStructType {
			continue
		}
		name, _ := e.Val(dwarf.AttrName).(string)
		if !e.Children {
			continue
		}
		for {
			m, err := r.Next()
			check(err)
			if m == nil || m.Tag == 0 {
				break
			}
			if m.Tag != dwarf.TagMember {
				if m.Children {
					r.SkipChildren()
				}
				continue
			}
			field, _ := m.Val(dwarf.AttrName).(string)
			if off, ok := m.Val(dwarf.AttrDataMemberLoc).(int64); ok {
				if _, seen := offsets[want{name, field}]; !seen {
					offsets[want{name, field}] = off
				}
			}
		}
	}
	missing := 0
	for _, w := range wants {
		off, ok := offsets[w]
		if !ok {
			// Fields newer than this toolchain (Request.Pattern before 1.23) are simply absent.
			fmt.Fprintf(os.Stderr, "%s: %s.%s not in DWARF\n", key, w.ty, w.field)
			missing++
			continue
		}
		fmt.Printf("%s\t%s\t%s\t%s\t%d\n", key, producer, w.ty, w.field, off)
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
