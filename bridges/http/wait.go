package httpbridge

import (
	"errors"
	"time"
)

// WaitReady waits until the bridge is connected and sees an invoker online, or d
// passes; it returns the reason it is not ready.
func (b *Bridge) WaitReady(d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		why := b.ready()
		if why == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New(why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
