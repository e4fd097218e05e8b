// Command echo copies its standard input to its standard output byte for
// byte (binary safe) and exits 0; any read or write error exits 1.
package main

import (
	"io"
	"os"
)

func main() {
	if _, err := io.Copy(os.Stdout, os.Stdin); err != nil {
		os.Stderr.WriteString("echo: " + err.Error() + "\n")
		os.Exit(1)
	}
}
