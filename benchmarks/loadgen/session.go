package main

// What every mode shares: the connections, the epoll loops reading them, and the counts of how
// they ended.

import (
	"sync"
	"sync/atomic"
	"time"
)

const handshakeTimeout = 60 * time.Second

// session holds a mode's connections and what happened to them.
type session struct {
	peers    []*peer
	pollers  *pollers
	alive    atomic.Int64
	frames   counter
	errors   tally // error codes: refusals of requests, connect failures ("connect:…")
	closed   tally // close codes of connections the server ended
	connectS float64
}

// connect opens n connections at rate a second; each is handed to handshake (blocking reads
// and writes), then to a poller that stamps each message's arrival (p.now) and passes it to
// receive, from the poller's goroutine: receive must not block.
func (s *session) connect(url string, n int, rate float64, handshake func(p *peer) error, receive func(p *peer, message []byte)) error {
	var err error
	s.pollers, err = newPollers(0, n, func(p *peer, message []byte) {
		s.frames.add(p.index, 1)
		receive(p, message)
	}, func(p *peer, err error) {
		s.closed.add(closeCode(err))
		s.alive.Add(-1)
	})
	if err != nil {
		return err
	}
	start := time.Now()
	s.peers = connectAll(n, rate, func(i int) (*peer, error) {
		p, err := dial(url, i, handshakeTimeout)
		if err != nil {
			return nil, err
		}
		if err := handshake(p); err != nil {
			p.close()
			return nil, err
		}
		s.alive.Add(1)
		if err := s.pollers.add(p); err != nil {
			s.alive.Add(-1)
			p.close()
			return nil, err
		}
		return p, nil
	}, &s.errors)
	s.connectS = round(time.Since(start).Seconds(), 3)
	return nil
}

// connected is how many connections made it through their handshake.
func (s *session) connected() int {
	n := 0
	for _, p := range s.peers {
		if p != nil {
			n++
		}
	}
	return n
}

// stop ends the pollers and closes every connection.
func (s *session) stop() {
	if s.pollers != nil {
		s.pollers.close()
	}
}

// report is the part of the output every mode has.
func (s *session) report(out map[string]any) map[string]any {
	out["connect_s"] = s.connectS
	out["connected"] = s.connected()
	out["frames_received"] = s.frames.load()
	out["errors"] = s.errors.snapshot()
	out["closed"] = s.closed.snapshot()
	out["rss_mb"] = rssMB()
	return out
}

// cpuWindow is the process's CPU use between two times, taken in the background.
type cpuWindow struct {
	before, after usage
	done          sync.WaitGroup
}

// measureCPU starts taking the process's CPU use from from to to.
func measureCPU(from, to time.Time) *cpuWindow {
	w := &cpuWindow{}
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		sleepUntil(from)
		w.before = usageNow()
		sleepUntil(to)
		w.after = usageNow()
	}()
	return w
}

// wait returns the usage at both ends once the window has closed.
func (w *cpuWindow) wait() (usage, usage) {
	w.done.Wait()
	return w.before, w.after
}

// drain waits up to limit seconds for done to hold; it returns how long it waited.
func drain(limit float64, done func() bool) float64 {
	start := time.Now()
	for time.Since(start) < seconds(limit) && !done() {
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start).Seconds()
}

// sleepUntil sleeps until t (at once if t has passed).
func sleepUntil(t time.Time) {
	if d := time.Until(t); d > 0 {
		time.Sleep(d)
	}
}
