package broker

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

// Invalid trigger topics published by mosquitto_pub (3.1.1 and 5, QoS 1) are
// counted and never delivered; 3.1.1 publishers are acked, MQTT 5 publishers get
// reason code 0x90; valid ones and non-trigger topics flow.
func TestTriggerTopics(t *testing.T) {
	needMosquitto(t)
	b, logs := startBroker(t, Options{}, slog.LevelInfo)

	sub, ch, _ := client(t, b, "watcher", true)
	subscribe(t, sub, "trigger/#", 1)
	subscribe(t, sub, "/trigger/#", 1)

	long := "trigger/" + strings.Repeat("x", 65535-len("trigger/"))
	if len(long) != 65535 {
		t.Fatalf("long topic is %d bytes", len(long))
	}
	invalid := []string{"trigger", "trigger/", "trigger//echo", "trigger/echo/", "trigger/Echo", "trigger/echo/a/b", long}

	var want []string
	count := uint64(0)
	for _, v := range []string{"311", "5"} {
		for _, topic := range invalid {
			out, code := mosq(t, b, "mosquitto_pub", "-V", v, "-q", "1", "-t", topic, "-m", "must not run")
			count++
			if got := b.InvalidTriggers(); got != count {
				t.Errorf("-V %s %q: InvalidTriggers = %d, want %d", v, clip(topic), got, count)
				count = got
			}
			if code != 0 {
				t.Errorf("-V %s %q: mosquitto_pub exit %d, want 0; output %q", v, clip(topic), code, out)
			}
			switch v {
			case "5": // PUBACK reason 0x90; mosquitto_pub warns but still exits 0
				if !strings.Contains(out, "Publish 1 failed: Topic Name invalid") {
					t.Errorf("-V 5 %q: want a 0x90 refusal, mosquitto_pub said %q", clip(topic), out)
				}
			case "311": // a plain PUBACK: acked, dropped
				if out != "" {
					t.Errorf("-V 311 %q: want a silent ack, mosquitto_pub said %q", clip(topic), out)
				}
			}
		}
		// The other QoS levels must not slip through either: mochi delivers a
		// QoS 0 message whose OnPublish returned a reason code.
		for _, q := range []string{"0", "2"} {
			_, code := mosq(t, b, "mosquitto_pub", "-V", v, "-q", q, "-t", "trigger/Echo", "-m", "must not run")
			count++
			if got := waitCount(b, count); code != 0 || got != count {
				t.Errorf("-V %s -q %s trigger/Echo: exit %d, InvalidTriggers %d, want 0 and %d", v, q, code, got, count)
				count = got
			}
		}
		for _, topic := range []string{"trigger/echo", "trigger/echo/run-" + v, "/trigger/echo"} {
			out, code := mosq(t, b, "mosquitto_pub", "-V", v, "-q", "1", "-t", topic, "-m", "ok")
			if code != 0 || out != "" {
				t.Errorf("-V %s %s: exit %d output %q, want 0 and silence", v, topic, code, out)
			}
			want = append(want, topic)
		}
	}
	if got := b.InvalidTriggers(); got != count || count != 2*(uint64(len(invalid))+2) {
		t.Errorf("InvalidTriggers = %d, want %d (/trigger/echo is not a trigger topic)", got, 2*(len(invalid)+2))
	}

	_, _ = mosq(t, b, "mosquitto_pub", "-q", "1", "-t", "trigger/zz-end", "-m", "end")
	want = append(want, "trigger/zz-end")
	got := until(t, ch, "trigger/zz-end", 200*time.Millisecond)
	if !reflect.DeepEqual(topicsOf(got), want) {
		t.Errorf("delivered %q\nwant      %q", topicsOf(got), want)
	}

	l := logs.String()
	for _, s := range []string{
		`level=WARN msg="invalid trigger topic refused`, `level=WARN msg="invalid trigger topic dropped`,
		`topic=trigger/Echo`, `client=t-pub-`, `remote=127.0.0.1:`, `reason="bad handler name`,
		`reason="too many topic levels`, `reason="bad run id`, `mqtt=5`, `mqtt=3.1.1`,
	} {
		if !strings.Contains(l, s) {
			t.Errorf("log lacks %s", s)
		}
	}
	for _, line := range strings.Split(l, "\n") {
		if len(line) > 1500 {
			t.Errorf("log line of %d bytes: the long topic is not clipped: %.200s…", len(line), line)
		}
	}
	if strings.Contains(l, "publish packet error") {
		t.Errorf("mochi's own error line for our refusals leaked into the log")
	}
}

// waitCount waits for InvalidTriggers to reach want (a QoS 0 publisher exits
// before the broker has read its message) and returns it.
func waitCount(b *Broker, want uint64) uint64 {
	for end := time.Now().Add(3 * time.Second); b.InvalidTriggers() < want && time.Now().Before(end); {
		time.Sleep(5 * time.Millisecond)
	}
	return b.InvalidTriggers()
}

// Retained triggers are stored like any retained message (the invoker ignores
// retained deliveries), an empty retained message clears them, and an invalid
// trigger topic is never retained.
func TestRetainedTriggers(t *testing.T) {
	needMosquitto(t)
	b, _ := startBroker(t, Options{}, slog.LevelInfo)

	for _, args := range [][]string{
		{"-V", "311", "-q", "1", "-r", "-t", "trigger/echo", "-m", "kept"},
		{"-V", "311", "-q", "1", "-r", "-t", "trigger/Echo", "-m", "bad"},
		{"-V", "5", "-q", "1", "-r", "-t", "trigger/echo/", "-m", "bad"},
	} {
		if _, code := mosq(t, b, "mosquitto_pub", args...); code != 0 {
			t.Fatalf("mosquitto_pub %v: exit %d", args, code)
		}
	}
	if n := b.InvalidTriggers(); n != 2 {
		t.Errorf("InvalidTriggers = %d, want 2", n)
	}

	if got := retainedTriggers(t, b, "late-1"); !reflect.DeepEqual(got, []msg{{"trigger/echo", "kept", true}}) {
		t.Errorf("a new subscriber got retained %v, want only trigger/echo \"kept\"", got)
	}
	// A subscriber already there (the invoker) must not get the clearing
	// publish: it would run the handler with an empty payload.
	live, liveCh, _ := client(t, b, "live", true)
	subscribe(t, live, "trigger/#", 1)
	if _, code := mosq(t, b, "mosquitto_pub", "-q", "1", "-r", "-n", "-t", "trigger/echo"); code != 0 {
		t.Fatalf("clearing retained: exit %d", code)
	}
	if got := retainedTriggers(t, b, "late-2"); len(got) != 0 {
		t.Errorf("after an empty retained publish a new subscriber still got %v", got)
	}
	for _, m := range until(t, liveCh, "trigger/zz-end", 200*time.Millisecond) {
		if m.topic == "trigger/echo" && !m.retained {
			t.Errorf("a live subscriber got the clearing publish %+v: it would run echo with no payload", m)
		}
	}
	// An empty publish without the retain flag is an ordinary trigger.
	_, _ = mosq(t, b, "mosquitto_pub", "-q", "1", "-n", "-t", "trigger/echo")
	_, _ = mosq(t, b, "mosquitto_pub", "-q", "1", "-t", "trigger/zz-end", "-m", "end")
	var empty int
	for _, m := range until(t, liveCh, "trigger/zz-end", 200*time.Millisecond) {
		if m.topic == "trigger/echo" && m.payload == "" && !m.retained {
			empty++
		}
	}
	if empty != 1 {
		t.Errorf("an empty, not retained trigger reached a subscriber %d times, want 1", empty)
	}
}

// retainedTriggers is what a new subscriber to trigger/# gets retained.
func retainedTriggers(t *testing.T, b *Broker, name string) []msg {
	t.Helper()
	c, ch, _ := client(t, b, name, true)
	defer c.Disconnect(100)
	subscribe(t, c, "trigger/#", 1)
	_, _ = mosq(t, b, "mosquitto_pub", "-q", "1", "-t", "trigger/zz-end", "-m", "end")
	var r []msg
	for _, m := range until(t, ch, "trigger/zz-end", 200*time.Millisecond) {
		if m.retained {
			r = append(r, m)
		}
	}
	return r
}

// Clearing a retained trigger also clears it from the data file.
func TestRetainedClearPersists(t *testing.T) {
	needMosquitto(t)
	dir := t.TempDir()
	b, _ := startBroker(t, Options{DataDir: dir}, slog.LevelInfo)
	for _, args := range [][]string{
		{"-q", "1", "-r", "-t", "trigger/echo", "-m", "kept"},
		{"-q", "1", "-r", "-t", "trigger/hello", "-m", "stays"},
		{"-q", "1", "-r", "-n", "-t", "trigger/echo"},
	} {
		if _, code := mosq(t, b, "mosquitto_pub", args...); code != 0 {
			t.Fatalf("mosquitto_pub %v: exit %d", args, code)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b2, _ := startBroker(t, Options{DataDir: dir}, slog.LevelInfo)
	if got := retainedTriggers(t, b2, "after-restart"); !reflect.DeepEqual(got, []msg{{"trigger/hello", "stays", true}}) {
		t.Errorf("after a restart the retained triggers are %v, want only trigger/hello \"stays\"", got)
	}
}

// A will on an invalid trigger topic would be published without OnPublish, so
// the connection is refused instead.
func TestInvalidWillRefused(t *testing.T) {
	needMosquitto(t)
	b, _ := startBroker(t, Options{}, slog.LevelInfo)
	for v, want := range map[string]string{"311": "not authorised", "5": "Topic Name invalid"} {
		out, code := mosq(t, b, "mosquitto_pub", "-V", v, "-t", "a", "-m", "x", "--will-topic", "trigger/Echo", "--will-payload", "w")
		if code == 0 || !strings.Contains(out, want) {
			t.Errorf("-V %s with will on trigger/Echo: exit %d %q, want refused with %q", v, code, out, want)
		}
		if out, code := mosq(t, b, "mosquitto_pub", "-V", v, "-t", "a", "-m", "x", "--will-topic", "trigger/echo", "--will-payload", "w"); code != 0 {
			t.Errorf("-V %s with will on trigger/echo: exit %d %q, want accepted", v, code, out)
		}
	}
	if n := b.InvalidTriggers(); n != 2 {
		t.Errorf("InvalidTriggers = %d, want 2", n)
	}
}

// $SYS is not served to network clients.
func TestSysHidden(t *testing.T) {
	b, _ := startBroker(t, Options{}, slog.LevelInfo)
	c, ch, _ := client(t, b, "nosy", true)
	if code := subscribe(t, c, "$SYS/#", 0); code != 0x80 {
		t.Errorf("SUBACK for $SYS/# = %#x, want 0x80 (refused)", code)
	}
	if code := subscribe(t, c, "$share/g/$SYS/#", 0); code != 0x80 {
		t.Errorf("SUBACK for $share/g/$SYS/# = %#x, want 0x80 (refused)", code)
	}
	subscribe(t, c, "#", 0)
	publish(t, c, "zz-end", "end", false)
	for _, m := range until(t, ch, "zz-end", 200*time.Millisecond) {
		if strings.HasPrefix(m.topic, "$") {
			t.Errorf("got %s", m.topic)
		}
	}
}

// A 10 MiB publish is refused for 3.1.1 and 5 from its fixed header, and the
// broker keeps serving.
func TestMaxPacket(t *testing.T) {
	needMosquitto(t)
	b, logs := startBroker(t, Options{}, slog.LevelInfo)
	sub, ch, _ := client(t, b, "watcher", true)
	subscribe(t, sub, "trigger/#", 1)

	big := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(big, make([]byte, 10<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"311", "5"} {
		out, code := mosq(t, b, "mosquitto_pub", "-V", v, "-q", "1", "-t", "trigger/echo", "-f", big)
		if code == 0 || !strings.Contains(out, "connection was lost") {
			t.Errorf("-V %s 10 MiB: exit %d %q, want the connection dropped", v, code, out)
		}
		if out, code := mosq(t, b, "mosquitto_pub", "-V", v, "-q", "1", "-t", "trigger/echo", "-m", "small-"+v); code != 0 {
			t.Errorf("-V %s: broker stopped serving after the big publish: exit %d %q", v, code, out)
		}
	}
	publish(t, sub, "trigger/zz-end", "end", false)
	var got []string
	for _, m := range until(t, ch, "trigger/zz-end", 200*time.Millisecond) {
		if len(m.payload) > 100 {
			t.Errorf("a %d-byte message was delivered", len(m.payload))
		}
		got = append(got, m.payload)
	}
	if want := []string{"small-311", "small-5", "end"}; !reflect.DeepEqual(got, want) {
		t.Errorf("delivered %q, want %q", got, want)
	}
	if n := strings.Count(logs.String(), "packet over the size limit"); n != 2 {
		t.Errorf("%d size-limit warnings, want 2", n)
	}

	// The proof that nothing is buffered: announce 10 MiB in the fixed header,
	// send 64 KiB of it, and the broker hangs up without waiting for the rest.
	for _, level := range []byte{4, 5} {
		c := rawConnect(t, b, level, "raw-big")
		topic := mqttString("trigger/echo")
		remaining := 10 << 20
		hdr := append(append([]byte{0x32}, varint(remaining)...), topic...)
		hdr = append(hdr, 0x00, 0x01) // packet id
		if level == 5 {
			hdr = append(hdr, 0x00) // no properties
		}
		_, _ = c.Write(hdr)
		_, _ = c.Write(make([]byte, 64<<10)) // may fail: the broker may have hung up already
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		rest, err := io.ReadAll(c)
		t.Logf("MQTT level %d, 10 MiB announced: broker sent %x, then %v", level, rest, err)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("MQTT level %d: broker still reading after 64 KiB of a 10 MiB packet (got %x)", level, rest)
		} else if len(rest) > 0 && rest[0] != 0xE0 {
			t.Errorf("MQTT level %d: broker answered %x, want a hang-up or a DISCONNECT", level, rest)
		}
	}
	if _, code := mosq(t, b, "mosquitto_pub", "-q", "1", "-t", "trigger/echo", "-m", "still"); code != 0 {
		t.Errorf("broker stopped serving after the raw big packets: exit %d", code)
	}
}

// The limit is configurable and applies to the whole packet.
func TestMaxPacketSmall(t *testing.T) {
	b, _ := startBroker(t, Options{MaxPacket: 4096}, slog.LevelInfo)
	sub, ch, _ := client(t, b, "watcher", true)
	subscribe(t, sub, "trigger/#", 1)
	pub, _, _ := client(t, b, "pub", true)
	publish(t, pub, "trigger/echo", strings.Repeat("a", 3900), false)
	pub.Publish("trigger/echo", 1, false, strings.Repeat("b", 4200)).WaitTimeout(time.Second)
	for end := time.Now().Add(3 * time.Second); pub.IsConnectionOpen() && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	if pub.IsConnectionOpen() {
		t.Errorf("a 4200-byte publish did not end the connection with max packet 4096")
	}
	publish(t, sub, "trigger/zz-end", "end", false)
	got := until(t, ch, "trigger/zz-end", 200*time.Millisecond)
	if len(got) != 2 || len(got[0].payload) != 3900 {
		t.Errorf("delivered %d messages %q, want the 3900-byte one and the end marker", len(got), topicsOf(got))
	}
}

// A persistent session (clean session false, QoS 1 on trigger/+) and the QoS 1
// messages queued while its client was away survive Close + New/Start on the
// same DataDir; without a DataDir they do not.
func TestPersistence(t *testing.T) {
	for _, persist := range []bool{true, false} {
		name := map[bool]string{true: "bolt", false: "memory"}[persist]
		t.Run(name, func(t *testing.T) {
			dir := ""
			if persist {
				dir = filepath.Join(t.TempDir(), "state")
			}
			b1, _ := startBroker(t, Options{DataDir: dir}, slog.LevelInfo)
			if persist {
				fi, err := os.Stat(dir)
				if err != nil || fi.Mode().Perm() != 0o700 {
					t.Fatalf("data dir: %v %v, want a 0700 directory", fi.Mode(), err)
				}
				if _, err := os.Stat(filepath.Join(dir, DataFile)); err != nil {
					t.Fatalf("bolt file: %v", err)
				}
			}

			inv, _, _ := client(t, b1, "invoker-1", false)
			if code := subscribe(t, inv, "trigger/+", 1); code != 1 {
				t.Fatalf("SUBACK %d, want QoS 1", code)
			}
			inv.Disconnect(100)

			pub, _, _ := client(t, b1, "pub", true)
			for _, p := range []string{"m1", "m2", "m3"} {
				publish(t, pub, "trigger/echo", p, false)
			}
			pub.Disconnect(100)
			if err := b1.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}

			b2, _ := startBroker(t, Options{DataDir: dir}, slog.LevelInfo)
			_, ch, present := client(t, b2, "invoker-1", false) // no Subscribe: the session has it
			if present != persist {
				t.Errorf("session present = %v after restart, want %v", present, persist)
			}
			pub2, _, _ := client(t, b2, "pub", true)
			publish(t, pub2, "trigger/echo", "m4", false)

			var got []string
			deadline := time.After(5 * time.Second)
		collect:
			for len(got) < 4 {
				select {
				case m := <-ch:
					got = append(got, m.payload)
				case <-deadline:
					break collect
				case <-time.After(time.Second):
					if !persist {
						break collect
					}
				}
			}
			want := []string{"m1", "m2", "m3", "m4"}
			if !persist {
				want = nil
			}
			// mochi resends a session's queue sorted by uint16(creation second),
			// so messages queued within one second may come back in any order.
			sort.Strings(got)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("after restart the session received %q, want %q", got, want)
			}
		})
	}
}

func TestStartAndErrors(t *testing.T) {
	b, logs := startBroker(t, Options{}, slog.LevelInfo)
	if p := port(b); p == "0" || p == "" {
		t.Fatalf("Addr %q has no real port", b.Addr())
	}
	if want := "tcp://127.0.0.1:" + port(b); b.URL() != want {
		t.Errorf("URL = %q, want %q", b.URL(), want)
	}
	if err := b.Start(); !errors.Is(err, ErrStarted) {
		t.Errorf("second Start: %v, want ErrStarted", err)
	}

	b2, err := New(Options{Listen: b.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	err = b2.Start()
	if !errors.Is(err, ErrAddrInUse) {
		t.Errorf("Start on a used port: %v, want ErrAddrInUse", err)
	} else {
		for _, s := range []string{b.Addr(), "broker.listen", "--broker-listen"} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not mention %s", err, s)
			}
		}
	}
	_ = b2.Close()
	if err := b2.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := b2.Start(); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: %v, want ErrClosed", err)
	}

	if _, err := New(Options{MaxPacket: -1}); !errors.Is(err, ErrOptions) || !strings.Contains(err.Error(), "broker.max_packet") {
		t.Errorf("MaxPacket -1: %v, want ErrOptions naming broker.max_packet", err)
	}

	dir := t.TempDir()
	b3, err := New(Options{DataDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer b3.Close()
	_, err = New(Options{DataDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if !errors.Is(err, ErrDataLocked) || !strings.Contains(err.Error(), filepath.Join(dir, DataFile)) {
		t.Errorf("second broker on one data dir: %v, want ErrDataLocked naming the file", err)
	}

	file := filepath.Join(t.TempDir(), "plain")
	_ = os.WriteFile(file, nil, 0o600)
	if _, err := New(Options{DataDir: file}); !errors.Is(err, ErrDataDir) || !strings.Contains(err.Error(), file) {
		t.Errorf("DataDir on a file: %v, want ErrDataDir naming it", err)
	}

	if l := logs.String(); !strings.Contains(l, `level=INFO msg="broker listening" addr=`+b.Addr()) {
		t.Errorf("start line missing: %q", l)
	}
}

// Quiet by default: one Info line at start, nothing per connection, not even
// for clients that vanish without DISCONNECT.
func TestQuietLogs(t *testing.T) {
	b, logs := startBroker(t, Options{DataDir: t.TempDir()}, slog.LevelInfo)
	for i := 0; i < 3; i++ {
		c, ch, _ := client(t, b, "c"+shortID(), i%2 == 0)
		subscribe(t, c, "trigger/+", 1)
		publish(t, c, "trigger/echo", "x", false)
		<-ch
		c.Disconnect(100)
	}
	for _, level := range []byte{4, 5} {
		rawConnect(t, b, level, "vanishing").Close() // no DISCONNECT
	}
	if c, err := net.Dial("tcp", b.Addr()); err == nil {
		_ = c.Close() // not even a CONNECT
	}
	time.Sleep(200 * time.Millisecond)
	_ = b.Close()
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], `level=INFO msg="broker listening"`) {
		t.Errorf("want exactly the start line, got %d lines:\n%s", len(lines), strings.Join(lines, "\n"))
	}
}
