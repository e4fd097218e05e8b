// Command hello is onebox's smallest demo handler: it ignores its input and
// prints one JSON line, {"message":"hello","time":"<RFC3339 UTC>"}.
//
// It uses no fmt or encoding/json on purpose: the image is FROM scratch and
// every package left out makes it smaller (the workshop's "smallest working
// image" prize).
package main

import (
	"os"
	"time"
)

func main() {
	line := `{"message":"hello","time":"` + time.Now().UTC().Format(time.RFC3339) + "\"}\n"
	if _, err := os.Stdout.WriteString(line); err != nil {
		os.Stderr.WriteString("hello: " + err.Error() + "\n")
		os.Exit(1)
	}
}
