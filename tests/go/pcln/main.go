// pcln reads a Go binary's pclntab with Go's own debug/gosym and prints the number of
// functions, then "name entry end" for each function named on the command line that exists.
// sightline's tests use it as ground truth for stripped binaries, which `go tool nm` and
// `go tool objdump` refuse.
package main

import (
	"debug/elf"
	"debug/gosym"
	"encoding/binary"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: pcln <binary> [function...]")
		os.Exit(2)
	}
	f, err := elf.Open(os.Args[1])
	check(err)
	tab := table(f)
	fmt.Println("count", len(tab.Funcs))
	for _, name := range os.Args[2:] {
		if fn := tab.LookupFunc(name); fn != nil {
			fmt.Println(name, fn.Entry, fn.End)
		}
	}
}

// table finds the pclntab: its own section, or (externally linked PIE, where the system
// linker merged it into .data.rel.ro) the first magic there that Go's reader accepts.
func table(f *elf.File) *gosym.Table {
	for _, name := range []string{".gopclntab", ".data.rel.ro.gopclntab", ".data.rel.ro"} {
		sec := f.Section(name)
		if sec == nil {
			continue
		}
		data, err := sec.Data()
		check(err)
		for at := 0; at+16 < len(data); at += 4 {
			m := binary.LittleEndian.Uint32(data[at:])
			if (m != 0xfffffff0 && m != 0xfffffff1) || data[at+4] != 0 || data[at+5] != 0 || data[at+7] != 8 {
				continue
			}
			field := sec.Addr + uint64(at) + 8 + 16
			text := binary.LittleEndian.Uint64(data[at+24:])
			if text == 0 {
				text = relocated(f, field)
			}
			tab, err := gosym.NewTable(nil, gosym.NewLineTable(data[at:], text))
			if err == nil && tab.LookupFunc("runtime.main") != nil {
				return tab
			}
		}
	}
	check(fmt.Errorf("no pclntab found"))
	return nil
}

// relocated returns the addend of the R_X86_64_RELATIVE relocation that fills addr at load.
func relocated(f *elf.File, addr uint64) uint64 {
	sec := f.Section(".rela.dyn")
	if sec == nil {
		return 0
	}
	data, err := sec.Data()
	check(err)
	for i := 0; i+24 <= len(data); i += 24 {
		if binary.LittleEndian.Uint64(data[i:]) == addr {
			return binary.LittleEndian.Uint64(data[i+16:])
		}
	}
	return 0
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
