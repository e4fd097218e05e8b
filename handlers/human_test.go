package handlers

import "testing"

// Image sizes read as `docker images` prints them (decimal units).
func TestHumanSizes(t *testing.T) {
	for n, want := range map[int64]string{
		999:        "999 B",
		1500:       "1.5 kB",
		1474722:    "1.47 MB",
		1900000:    "1.90 MB",
		1234567890: "1.23 GB",
	} {
		if got := HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
