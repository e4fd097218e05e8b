package runwait

import (
	"sync"
	"testing"
	"time"

	"github.com/onebox-dev/onebox/internal/record"
)

type msg struct {
	topic   string
	payload []byte
}

func (m msg) Duplicate() bool   { return false }
func (m msg) Qos() byte         { return 1 }
func (m msg) Retained() bool    { return false }
func (m msg) Topic() string     { return m.topic }
func (m msg) MessageID() uint16 { return 1 }
func (m msg) Payload() []byte   { return m.payload }
func (m msg) Ack()              {}

func rec(id, state string, started bool) []byte {
	r := record.Record{ID: id, State: state}
	if started {
		r.StartedAt = record.TimePtr(time.Now())
	}
	return r.Marshal()
}

func done(x *Wait) bool {
	select {
	case <-x.Done():
		return true
	default:
		return false
	}
}

func TestResultThenFinal(t *testing.T) {
	w := New()
	x := w.Register("a")
	w.Handle(nil, msg{"status/a", rec("a", record.Queued, false)})
	w.Handle(nil, msg{"result/a", []byte("out")})
	if done(x) {
		t.Fatal("done before the final record")
	}
	w.Handle(nil, msg{"status/a", rec("a", record.Succeeded, true)})
	if !done(x) {
		t.Fatal("not done after result and final record")
	}
	a := x.Answer()
	if string(a.Result) != "out" || !a.HasResult || a.Record.State != record.Succeeded {
		t.Fatalf("%+v", a)
	}
	x.Cancel()
	if w.Len() != 0 {
		t.Fatalf("Len = %d after Cancel", w.Len())
	}
}

func TestFinalThenResult(t *testing.T) {
	w := New()
	x := w.Register("b")
	w.Handle(nil, msg{"status/b", rec("b", record.Failed, true)})
	if done(x) {
		t.Fatal("a run that started is done before its result")
	}
	w.Handle(nil, msg{"result/b", []byte("late")})
	if !done(x) || string(x.Answer().Result) != "late" {
		t.Fatalf("answer %+v", x.Answer())
	}
}

func TestRejectedNeedsNoResultAndOthersIgnored(t *testing.T) {
	w := New()
	x := w.Register("c")
	w.Handle(nil, msg{"status/other", rec("other", record.Succeeded, true)})
	w.Handle(nil, msg{"status/c", rec("WRONG", record.Succeeded, true)}) // id mismatch
	w.Handle(nil, msg{"status/c", []byte("not json")})
	if done(x) {
		t.Fatal("done from someone else's record")
	}
	w.Handle(nil, msg{"status/c", rec("c", record.Rejected, false)})
	if !done(x) || x.Answer().HasResult {
		t.Fatalf("rejected: %+v", x.Answer())
	}
}

func TestMissingResultGivesUpAfterGrace(t *testing.T) {
	w := New()
	w.ResultGrace = 50 * time.Millisecond
	x := w.Register("d")
	w.Handle(nil, msg{"status/d", rec("d", record.Succeeded, true)})
	select {
	case <-x.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("never done without a result")
	}
	if x.Answer().HasResult {
		t.Fatal("a result appeared from nowhere")
	}
}

func TestConcurrentWaiters(t *testing.T) {
	w := New()
	var wg sync.WaitGroup
	for i := 0; i < 100; i++ {
		id := string(rune('a'+i%26)) + string(rune('a'+i/26))
		x := w.Register(id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.Handle(nil, msg{"result/" + id, []byte(id)})
			w.Handle(nil, msg{"status/" + id, rec(id, record.Succeeded, true)})
			<-x.Done()
			if string(x.Answer().Result) != id {
				t.Errorf("%s got %q", id, x.Answer().Result)
			}
			x.Cancel()
		}()
	}
	wg.Wait()
	if w.Len() != 0 {
		t.Fatalf("Len = %d", w.Len())
	}
}
