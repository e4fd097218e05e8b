package broker

import (
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Close must return while clients come and go. mochi v2.7.9's own shutdown path
// (closeListenerClients → Clients.GetByListener) takes the clients' read lock
// twice; a client leaving in between (Clients.Delete waiting for the write
// lock) deadlocks it forever. Seen under qemu-arm about one run in six; here the
// churn makes the window as wide as we can.
func TestCloseWhileClientsComeAndGo(t *testing.T) {
	rounds := 40
	if testing.Short() {
		rounds = 10
	}
	var connacks atomic.Int64
	for round := 0; round < rounds; round++ {
		b, err := New(Options{Listen: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		addr := b.Addr()
		// Two clients that stay: Close must hang up on them.
		var stay []net.Conn
		for i := 0; i < 2; i++ {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = c.Write(connectPacket(4, "stay-"+strconv.Itoa(i), 30))
			expectConnack(t, c, "stay")
			stay = append(stay, c)
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for n := 0; ; n++ {
					select {
					case <-stop:
						return
					default:
					}
					c, err := net.DialTimeout("tcp", addr, time.Second)
					if err != nil {
						continue // the broker is closing
					}
					_ = c.SetDeadline(time.Now().Add(2 * time.Second))
					_, _ = c.Write(connectPacket(4, "churn-"+strconv.Itoa(w)+"-"+strconv.Itoa(n), 30))
					ack := make([]byte, 4)
					if _, err := io.ReadFull(c, ack); err == nil && ack[0] == 0x20 {
						connacks.Add(1)
					}
					_ = c.Close()
				}
			}(w)
		}
		time.Sleep(30 * time.Millisecond)
		done := make(chan struct{})
		go func() { _ = b.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("round %d: Broker.Close did not return in 20 s while clients connected and left (a lock-order deadlock)", round)
		}
		close(stop)
		wg.Wait()
		for _, c := range stay {
			if closed, _, _ := outcome(c, 5*time.Second); !closed {
				t.Fatalf("round %d: a connected client was not disconnected by Close", round)
			}
			_ = c.Close()
		}
	}
	if connacks.Load() == 0 {
		t.Fatal("no client was ever connected: the test exercised nothing")
	}
	t.Logf("%d rounds, %d clients connected and left", rounds, connacks.Load())
}
