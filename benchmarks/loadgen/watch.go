package main

// The watch mode (imflow only): N signed-in connections that record, per connection, when the
// first frame of a given op arrived after they were armed, so a caller can time one event that
// reaches many members (a recall or an edit in a 10,000-member group) from its own request.
// It is driven line by line on stdin:
//
//	arm OP                 forget what came before; from now on note each connection's first OP frame
//	                       → "armed OP"
//	wait T0_NS TIMEOUT_S   wait until every open connection has had its OP frame, or TIMEOUT_S
//	                       → one JSON line: the arrivals' delays from T0_NS (Unix ns, the caller's
//	                         request time on the same clock)
//
// and ends, printing its final JSON object, when stdin closes.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

type watchConfig struct {
	url         string
	tokens      []string
	connections int
	connectRate float64
}

type watchRun struct {
	s       session
	armed   atomic.Pointer[string] // the op being watched; nil: none
	arrived []atomic.Int64         // per connection: Unix ns of its first armed-op frame, 0 before
	got     atomic.Int64
	others  counter // frames of other ops while armed
}

var imflowOpStart = []byte(`{"op":"`)

// frameOp is a frame's op: imflow writes it first, so it is read without parsing the frame;
// anything else is decoded.
func frameOp(frame []byte) string {
	if bytes.HasPrefix(frame, imflowOpStart) {
		rest := frame[len(imflowOpStart):]
		if end := bytes.IndexByte(rest, '"'); end >= 0 {
			return string(rest[:end])
		}
	}
	var reply imflowReply
	if json.Unmarshal(frame, &reply) != nil {
		return ""
	}
	return reply.Op
}

func (w *watchRun) receive(p *peer, frame []byte) {
	op := w.armed.Load()
	if op == nil {
		return
	}
	if frameOp(frame) != *op {
		w.others.add(p.index, 1)
		return
	}
	if w.arrived[p.index].CompareAndSwap(0, p.now) {
		w.got.Add(1)
	}
}

// arm starts watching for op; earlier arrivals are forgotten.
func (w *watchRun) arm(op string) {
	w.armed.Store(nil)
	for i := range w.arrived {
		w.arrived[i].Store(0)
	}
	w.got.Store(0)
	w.armed.Store(&op)
}

// wait returns once every open connection has its frame (or after timeout), with the delays
// from t0 (Unix ns) of those that have it.
func (w *watchRun) wait(t0 int64, timeout time.Duration) map[string]any {
	start := time.Now()
	for w.got.Load() < w.s.alive.Load() && time.Since(start) < timeout {
		time.Sleep(2 * time.Millisecond)
	}
	waited := time.Since(start).Seconds()
	var delays histogram
	var first, last int64
	for i := range w.arrived {
		at := w.arrived[i].Load()
		if at == 0 {
			continue
		}
		delays.record(i, at-t0)
		if first == 0 || at < first {
			first = at
		}
		last = max(last, at)
	}
	op := ""
	if armed := w.armed.Load(); armed != nil {
		op = *armed
	}
	got := w.got.Load()
	out := map[string]any{"op": op, "open": w.s.alive.Load(), "got": got, "missing": w.s.alive.Load() - got,
		"latency_ms": delays.summary(), "waited_s": round(waited, 3), "other_frames": w.others.load()}
	if got > 0 {
		out["first_ms"], out["spread_ms"] = round(float64(first-t0)/1e6, 3), round(float64(last-first)/1e6, 3)
	}
	return out
}

// runWatch connects, prints "ready N" on out, then serves in's commands until it closes.
func runWatch(cfg watchConfig, in io.Reader, out io.Writer) (map[string]any, error) {
	if len(cfg.tokens) < cfg.connections {
		return nil, fmt.Errorf("--tokens has %d lines, --connections %d needs as many", len(cfg.tokens), cfg.connections)
	}
	w := &watchRun{arrived: make([]atomic.Int64, cfg.connections)}
	if err := w.s.connect(cfg.url, cfg.connections, cfg.connectRate, func(p *peer) error {
		return imflowAuth(p, cfg.tokens[p.index])
	}, w.receive); err != nil {
		return nil, err
	}
	logf("%d/%d connections ready in %.1f s", w.s.connected(), cfg.connections, w.s.connectS)
	fmt.Fprintf(out, "ready %d\n", w.s.connected())
	before := usageNow()
	lines := bufio.NewScanner(in)
	for lines.Scan() {
		fields := strings.Fields(lines.Text())
		switch {
		case len(fields) == 2 && fields[0] == "arm":
			w.arm(fields[1])
			fmt.Fprintf(out, "armed %s\n", fields[1])
		case len(fields) == 3 && fields[0] == "wait":
			t0, err1 := strconv.ParseInt(fields[1], 10, 64)
			timeout, err2 := strconv.ParseFloat(fields[2], 64)
			if err1 != nil || err2 != nil || w.armed.Load() == nil {
				fmt.Fprintf(out, "{\"error\":\"wait needs T0_NS TIMEOUT_S after arm\"}\n")
				continue
			}
			line, _ := json.Marshal(w.wait(t0, seconds(timeout)))
			fmt.Fprintf(out, "%s\n", line)
		default:
			fmt.Fprintf(out, "{\"error\":%q}\n", "unknown command: "+lines.Text())
		}
	}
	after := usageNow()
	result := map[string]any{"mode": "watch", "target": "imflow", "connections": cfg.connections,
		"cpu": cpuBetween(before, after), "open_at_end": w.s.alive.Load()}
	result = w.s.report(result)
	w.s.stop()
	return result, lines.Err()
}
