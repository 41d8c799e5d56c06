package main

// The room mode: N viewers in one room, K of them posting at a fixed total rate; every viewer
// counts every message it gets, per message number, so lost and duplicated deliveries are exact.

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type roomConfig struct {
	target                 target
	targetName, url, room  string
	tokens                 []string
	viewers, posters, size int
	rate, connectRate      float64
	seconds, warmup, drain float64
}

// stampLength is about how long "t=<ns> n=<k> " is: --size counts it in.
const stampLength = 30

// post states
const (
	pending uint32 = iota
	accepted
	refused
)

type roomRun struct {
	cfg      roomConfig
	s        session
	total    int64 // posts scheduled (warm-up included)
	lo, hi   int64 // the measured posts: numbers in [lo, hi)
	sentAt   []atomic.Int64
	state    []atomic.Uint32
	seen     [][]uint64 // per viewer: a bit per post number
	dups     []int64    // per viewer
	unknown  []int64    // per viewer: stamps with a number never posted
	latency  histogram  // post → a viewer has it (measured posts)
	ack      histogram  // post → its reply
	sent     atomic.Int64
	acked    atomic.Int64
	failed   atomic.Int64
	ackedIn  atomic.Int64 // accepted measured posts
	gotIn    counter      // deliveries of measured posts
	messages counter      // every delivery
	inWindow counter      // deliveries that arrived inside the measured window
	winStart atomic.Int64 // Unix ns
	winEnd   atomic.Int64
}

func runRoom(cfg roomConfig) (map[string]any, error) {
	if cfg.posters < 1 || cfg.posters > cfg.viewers {
		return nil, fmt.Errorf("--posters must be 1..viewers")
	}
	if cfg.tokens != nil && len(cfg.tokens) < cfg.viewers {
		return nil, fmt.Errorf("--tokens has %d lines, --viewers needs %d", len(cfg.tokens), cfg.viewers)
	}
	r := &roomRun{cfg: cfg}
	r.total = int64(cfg.rate * (cfg.warmup + cfg.seconds))
	r.lo, r.hi = int64(cfg.rate*cfg.warmup), r.total
	r.sentAt = make([]atomic.Int64, r.total)
	r.state = make([]atomic.Uint32, r.total)
	r.seen = make([][]uint64, cfg.viewers)
	words := (r.total + 63) / 64
	for i := range r.seen {
		r.seen[i] = make([]uint64, words)
	}
	r.dups = make([]int64, cfg.viewers)
	r.unknown = make([]int64, cfg.viewers)
	ev := &events{delivered: r.delivered, replied: r.replied, other: r.s.errors.add}

	if err := r.s.connect(cfg.url, cfg.viewers, cfg.connectRate, func(p *peer) error {
		return cfg.target.handshake(p, token(cfg.tokens, p.index), cfg.room)
	}, func(p *peer, frame []byte) { cfg.target.receive(p, frame, ev) }); err != nil {
		return nil, err
	}
	logf("%d/%d viewers in %s in %.1f s", r.s.connected(), cfg.viewers, cfg.room, r.s.connectS)
	var posters []*peer
	for _, p := range r.s.peers[:cfg.posters] {
		if p != nil {
			posters = append(posters, p)
		}
	}
	if len(posters) == 0 {
		r.s.stop()
		return nil, fmt.Errorf("no poster connected: %v", r.s.errors.snapshot())
	}
	time.Sleep(time.Second) // let the server settle the joins (viewer counts, registries)

	start := time.Now().Add(100 * time.Millisecond)
	windowStart := start.Add(seconds(cfg.warmup))
	windowEnd := windowStart.Add(seconds(cfg.seconds))
	r.winStart.Store(windowStart.UnixNano())
	r.winEnd.Store(windowEnd.UnixNano())
	cpu := measureCPU(windowStart, windowEnd)
	stopProgress := r.progress()
	pad := strings.Repeat("x", max(0, cfg.size-stampLength))
	var posting sync.WaitGroup
	for j, p := range posters {
		posting.Add(1)
		go func() {
			defer posting.Done()
			r.post(p, int64(j), int64(len(posters)), start, pad)
		}()
	}
	posting.Wait()
	before, after := cpu.wait()
	drainS := drain(cfg.drain, r.drained)
	stopProgress()
	r.s.stop()
	return r.report(before, after, drainS), nil
}

// post sends posts j, j+k, j+2k, … each at its time on the shared schedule (open loop).
func (r *roomRun) post(p *peer, j, k int64, start time.Time, pad string) {
	frame := make([]byte, 0, 256+len(pad))
	for n := j; n < r.total; n += k {
		sleepUntil(start.Add(time.Duration(float64(n) / r.cfg.rate * float64(time.Second))))
		t := time.Now().UnixNano()
		r.sentAt[n].Store(t)
		frame = r.cfg.target.post(frame[:0], r.cfg.room, n, t, pad)
		r.sent.Add(1)
		if err := p.write(frame); err != nil {
			r.reply(n, "write_failed", t)
			return
		}
	}
}

func (r *roomRun) delivered(p *peer, s stamp) {
	v := p.index
	if s.n < 0 || s.n >= r.total {
		r.unknown[v]++
		return
	}
	word, bit := &r.seen[v][s.n/64], uint64(1)<<(s.n%64)
	if *word&bit != 0 {
		r.dups[v]++
		return
	}
	*word |= bit
	r.messages.add(v, 1)
	if p.now >= r.winStart.Load() && p.now < r.winEnd.Load() {
		r.inWindow.add(v, 1)
	}
	if s.n >= r.lo {
		r.gotIn.add(v, 1)
		r.latency.record(v, p.now-s.t)
	}
}

func (r *roomRun) replied(p *peer, n int64, code string) {
	if n < 0 || n >= r.total {
		r.s.errors.add("unknown_reply")
		return
	}
	r.reply(n, code, p.now)
}

// reply settles post n once: accepted (code "") or refused with code.
func (r *roomRun) reply(n int64, code string, now int64) {
	want := accepted
	if code != "" {
		want = refused
	}
	if !r.state[n].CompareAndSwap(pending, want) {
		return
	}
	if code != "" {
		r.failed.Add(1)
		r.s.errors.add(code)
		return
	}
	r.acked.Add(1)
	r.ack.record(int(n), now-r.sentAt[n].Load())
	if n >= r.lo {
		r.ackedIn.Add(1)
	}
}

// drained: every post answered and every accepted measured post at every live viewer.
func (r *roomRun) drained() bool {
	return r.acked.Load()+r.failed.Load() >= r.sent.Load() && r.gotIn.load() >= r.ackedIn.Load()*r.s.alive.Load()
}

func (r *roomRun) progress() func() {
	last, lastFrames, lastAt := int64(0), int64(0), usageNow()
	return progressEvery(time.Second, func() string {
		now, got, frames := usageNow(), r.messages.load(), r.s.frames.load()
		wall := now.wall.Sub(lastAt.wall).Seconds()
		line := fmt.Sprintf("posts sent %d acked %d failed %d | %.0f deliveries/s, %.0f frames/s | generator %.2f cores | %d open",
			r.sent.Load(), r.acked.Load(), r.failed.Load(), float64(got-last)/wall, float64(frames-lastFrames)/wall,
			cpuBetween(lastAt, now)["cores_used"], r.s.alive.Load())
		last, lastFrames, lastAt = got, frames, now
		return line
	})
}

func (r *roomRun) report(before, after usage, drainS float64) map[string]any {
	var deliveries, lost, dups, unknown int64
	viewers := int64(0)
	for v, p := range r.s.peers {
		if p == nil {
			continue
		}
		viewers++
		dups += r.dups[v]
		unknown += r.unknown[v]
		for n := r.lo; n < r.hi; n++ {
			got := r.seen[v][n/64]&(uint64(1)<<(n%64)) != 0
			if got {
				deliveries++
			} else if r.state[n].Load() == accepted {
				lost++
			}
		}
	}
	sentIn := int64(0)
	failedIn := int64(0)
	for n := r.lo; n < r.hi; n++ {
		if r.sentAt[n].Load() != 0 {
			sentIn++
		}
		if r.state[n].Load() == refused {
			failedIn++
		}
	}
	out := map[string]any{
		"mode": "room", "target": r.cfg.targetName, "room": r.cfg.room,
		"viewers": viewers, "posters": r.cfg.posters, "rate": r.cfg.rate, "size": r.cfg.size,
		"seconds": r.cfg.seconds, "warmup": r.cfg.warmup, "drain_s": round(drainS, 3),
		"posts_sent": sentIn, "posts_acked": r.ackedIn.Load(), "posts_failed": failedIn,
		"posts_sent_total": r.sent.Load(), "posts_unanswered": r.sent.Load() - r.acked.Load() - r.failed.Load(),
		"deliveries": deliveries, "expected_deliveries": r.ackedIn.Load() * viewers, "lost": lost,
		"duplicates": dups, "unknown_messages": unknown,
		"deliveries_per_s": round(float64(r.inWindow.load())/r.cfg.seconds, 1),
		"latency_ms":       r.latency.summary(), "ack_ms": r.ack.summary(),
		"cpu": cpuBetween(before, after),
	}
	return r.s.report(out)
}

func token(tokens []string, i int) string {
	if i < len(tokens) {
		return tokens[i]
	}
	return ""
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
