// Command inbox-ls lists what is under the read-only /inbox mount (the
// workshop's file-drop step): one JSON object per line, in lexical order,
// recursing into folders:
//
//	{"name":"sub/report 1.txt","type":"file","size":1234}
//
// type is file, dir, symlink or other; size is given for files and symlinks.
// Nothing is skipped silently: an entry that cannot be read is listed with an
// "error" field (and said on stderr), and the exit code is then 1. A name that
// is not valid UTF-8 is given with U+FFFD in "name" and its exact bytes in
// "name_hex". Without /inbox it says so on stderr and exits 1.
//
// An optional argument lists another folder instead (handy outside a container).
package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"unicode/utf8"
)

func main() {
	root := "/inbox"
	if len(os.Args) > 1 {
		root = os.Args[1]
	}
	st, err := os.Stat(root)
	if err != nil {
		fail(root + " is not there (mount a folder at " + root + "): " + err.Error())
	}
	if !st.IsDir() {
		fail(root + " is not a folder")
	}
	failed := false
	out := make([]byte, 0, 4096)
	flush := func() {
		if _, err := os.Stdout.Write(out); err != nil {
			fail("writing stdout: " + err.Error())
		}
		out = out[:0]
	}
	walkErr := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		rel, rerr := filepath.Rel(root, path)
		if rerr != nil {
			rel = path
		}
		if err != nil {
			failed = true
			os.Stderr.WriteString("inbox-ls: " + err.Error() + "\n")
			out = appendEntry(out, rel, "", -1, err.Error())
			if len(out) > 32<<10 {
				flush()
			}
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if path == root {
			return nil
		}
		typ, size := "other", int64(-1)
		var ierr string
		switch m := d.Type(); {
		case m.IsDir():
			typ = "dir"
		case m&fs.ModeSymlink != 0:
			typ = "symlink"
		case m.IsRegular():
			typ = "file"
		}
		if typ == "file" || typ == "symlink" {
			if info, err := d.Info(); err != nil {
				failed = true
				ierr = err.Error()
				os.Stderr.WriteString("inbox-ls: " + ierr + "\n")
			} else {
				size = info.Size()
			}
		}
		out = appendEntry(out, rel, typ, size, ierr)
		if len(out) > 32<<10 {
			flush()
		}
		return nil
	})
	flush()
	if walkErr != nil {
		fail(walkErr.Error())
	}
	if failed {
		os.Exit(1)
	}
}

func fail(msg string) {
	os.Stderr.WriteString("inbox-ls: " + msg + "\n")
	os.Exit(1)
}

// appendEntry appends one JSON object and a newline; size < 0 and empty
// typ or errMsg leave their fields out.
func appendEntry(b []byte, name, typ string, size int64, errMsg string) []byte {
	b = append(b, `{"name":`...)
	b = appendString(b, name)
	if !utf8.ValidString(name) {
		const hex = "0123456789abcdef"
		b = append(b, `,"name_hex":"`...)
		for i := 0; i < len(name); i++ {
			b = append(b, hex[name[i]>>4], hex[name[i]&15])
		}
		b = append(b, '"')
	}
	if typ != "" {
		b = append(b, `,"type":"`...)
		b = append(b, typ...)
		b = append(b, '"')
	}
	if size >= 0 {
		b = append(b, `,"size":`...)
		b = strconv.AppendInt(b, size, 10)
	}
	if errMsg != "" {
		b = append(b, `,"error":`...)
		b = appendString(b, errMsg)
	}
	return append(b, "}\n"...)
}

// appendString appends s as a JSON string: valid UTF-8 as is, control
// characters, quotes and backslashes escaped, invalid bytes as U+FFFD.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&15])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029': // valid JSON, but not in JavaScript
			b = append(b, `\u202`...)
			b = append(b, hex[r&15])
		default:
			b = append(b, s[i:i+n]...)
		}
		i += n
	}
	return append(b, '"')
}
