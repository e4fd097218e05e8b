// Package metrics is onebox's Prometheus registry: one per process, holding the
// Go runtime and process collectors plus whatever the running parts register
// (the invoker's runs, the broker's clients and messages). Handler serves it in
// the text exposition format; any HTTP server may mount it (the HTTP bridge's
// /metrics, or Serve's own listener for `--metrics-listen`).
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every onebox metric.
const Namespace = "onebox"

var (
	once sync.Once
	reg  *prometheus.Registry
)

// Registry is the process-wide registry, created on first use with the Go and
// process collectors.
func Registry() *prometheus.Registry {
	once.Do(func() {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	})
	return reg
}

// Register adds collectors to Registry. A collector already registered (the
// same metrics registered twice, e.g. a part restarted in a test) is kept and
// not an error.
func Register(cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := Registry().Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				continue
			}
			return err
		}
	}
	return nil
}

// Unregister removes collectors from Registry (a part that stopped).
func Unregister(cs ...prometheus.Collector) {
	for _, c := range cs {
		Registry().Unregister(c)
	}
}

// Handler serves Registry on GET, e.g. mux.Handle("/metrics", metrics.Handler()).
func Handler() http.Handler {
	return HandlerFor(Registry())
}

// HandlerFor serves r (tests use their own registry).
func HandlerFor(r *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(r, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Server is a listener that serves /metrics only.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Serve listens on addr (e.g. 127.0.0.1:9100, or :0 for any port) and serves
// Handler on /metrics until Close or ctx ends.
func Serve(ctx context.Context, addr string, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: cannot listen on %q: %w (set another address with --metrics-listen, or leave it empty to turn metrics off)", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", Handler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "onebox metrics: GET /metrics")
	})
	s := &Server{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln: ln}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && log != nil {
			log.Warn("metrics server stopped", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		_ = s.Close()
	}()
	if log != nil {
		log.Info("metrics listening", "url", "http://"+ln.Addr().String()+"/metrics")
	}
	return s, nil
}

// Addr is the address Serve listens on, with the actual port.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the listener.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return s.srv.Shutdown(ctx)
}
