package broker

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"syscall"

	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/packets"
)

// mochiLogs adapts mochi's logging to onebox's: mochi's Info and Debug become
// Debug; its Warn and Error pass through, except
//   - the listener's unnamed line for a connection that ended (EOF, reset,
//     take-over, keepalive) or hit the size limit (limitsHook logs that), which
//     becomes Debug: it is ordinary per-connection noise (so is the line for a
//     will refused by triggerHook, which logs it itself);
//   - bolt's "failed to get data" for a record not there yet (a fresh file has
//     no $SYS record), which becomes Debug;
//   - hooks.OnPublish's "publish packet error" for a refusal of ours, which is
//     dropped: triggerHook logs it with the reason, and mochi's line dumps the
//     whole packet, payload included.
type mochiLogs struct {
	next  slog.Handler
	attrs []slog.Attr
}

func (m *mochiLogs) Enabled(ctx context.Context, l slog.Level) bool {
	// Anything below Warn is demoted to Debug, so ask about Debug.
	if l < slog.LevelWarn {
		l = slog.LevelDebug
	}
	return m.next.Enabled(ctx, l)
}

func (m *mochiLogs) Handle(ctx context.Context, r slog.Record) error {
	if m.ours(r) {
		return nil
	}
	level := r.Level
	if level < slog.LevelWarn || m.noise(r) {
		level = slog.LevelDebug
	}
	if !m.next.Enabled(ctx, level) {
		return nil
	}
	msg := r.Message
	if msg == "" {
		msg = "connection ended"
	}
	out := slog.NewRecord(r.Time, level, "mqtt: "+msg, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "pk" && a.Key != "packet" { // whole packets, payloads included, stay out of the log
			out.AddAttrs(a)
		}
		return true
	})
	return m.next.Handle(ctx, out)
}

// ours reports mochi's Error line for a refusal that triggerHook made and logged,
// and its Warn line (with the whole packet, payload included) for a publish that
// authHook denied and logged.
func (m *mochiLogs) ours(r slog.Record) bool {
	found := false
	switch r.Message {
	case "publish packet error":
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "hook" && a.Value.String() == (&triggerHook{}).ID() {
				found = true
			}
			return !found
		})
	case "error processing packet":
		r.Attrs(func(a slog.Attr) bool {
			if e, ok := a.Value.Any().(error); ok && a.Key == "error" && errors.Is(e, packets.ErrNotAuthorized) {
				found = true
			}
			return !found
		})
	}
	return found
}

func (m *mochiLogs) noise(r slog.Record) bool {
	var err error
	find := func(a slog.Attr) {
		if a.Key == "error" {
			if e, ok := a.Value.Any().(error); ok {
				err = e
			}
		}
	}
	for _, a := range m.attrs {
		find(a)
	}
	r.Attrs(func(a slog.Attr) bool {
		find(a)
		return true
	})
	switch {
	case r.Message == "failed to get data" && errors.Is(err, bolt.ErrKeyNotFound):
		return true // a fresh data file has no $SYS record yet
	case r.Message == "" && err != nil:
		return connectionEnded(err) || errors.Is(err, errWillRefused) || refusedByUs(err)
	}
	return false
}

// connectionEnded reports errors that only say a client went away.
func connectionEnded(err error) bool {
	var code packets.Code
	if errors.As(err, &code) {
		switch code {
		case packets.ErrSessionTakenOver, packets.ErrServerShuttingDown, packets.CodeDisconnect,
			packets.ErrKeepAliveTimeout, packets.ErrPacketTooLarge:
			return true
		}
	}
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		(errors.As(err, &ne) && ne.Timeout())
}

func (m *mochiLogs) WithAttrs(as []slog.Attr) slog.Handler {
	return &mochiLogs{next: m.next.WithAttrs(as), attrs: append(append([]slog.Attr{}, m.attrs...), as...)}
}

func (m *mochiLogs) WithGroup(name string) slog.Handler {
	return &mochiLogs{next: m.next.WithGroup(name), attrs: m.attrs}
}

// refusedByUs reports the errors that end a connection authHook or protocolHook
// refused: they logged it already, with the reason.
func refusedByUs(err error) bool {
	for _, e := range []error{errBadCredentials, errReservedID, errWillDenied, packets.ErrRejectPacket,
		packets.ErrNotAuthorized, packets.ErrTopicNameInvalid} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
