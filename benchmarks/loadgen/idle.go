package main

// The idle mode: N connections authenticated (and in a room with --room), doing nothing, so a
// caller can measure what the server holds per connection.

import (
	"fmt"
	"io"
	"os"
	"time"
)

type idleConfig struct {
	target            target
	targetName, url   string
	room              string
	tokens            []string
	connections       int
	connectRate, hold float64
}

func runIdle(cfg idleConfig) (map[string]any, error) {
	var s session
	ev := &events{
		delivered: func(*peer, stamp) {},
		replied:   func(*peer, int64, string) {},
		other:     s.errors.add,
	}
	if err := s.connect(cfg.url, cfg.connections, cfg.connectRate, func(p *peer) error {
		return cfg.target.handshake(p, token(cfg.tokens, p.index), cfg.room)
	}, func(p *peer, frame []byte) { cfg.target.receive(p, frame, ev) }); err != nil {
		return nil, err
	}
	logf("%d/%d connections ready in %.1f s", s.connected(), cfg.connections, s.connectS)
	fmt.Printf("ready %d\n", s.connected())
	before := usageNow()
	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	var deadline <-chan time.Time
	if cfg.hold > 0 {
		deadline = time.After(seconds(cfg.hold))
	}
	select {
	case <-stdinClosed:
	case <-deadline:
	}
	after := usageNow()
	out := map[string]any{"mode": "idle", "target": cfg.targetName, "connections": cfg.connections, "room": cfg.room,
		"cpu": cpuBetween(before, after), "open_at_end": s.alive.Load()}
	out = s.report(out) // the generator's own RSS while every connection is still open
	s.stop()
	return out, nil
}
