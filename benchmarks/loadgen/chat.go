package main

// The chat mode (imflow only): pairs of users, user 2i sending one-to-one messages to user 2i+1,
// either at a fixed total rate (open loop) or keeping a window of sends in flight per sender.
// Each message's number and send time travel in its text and its ref, so the sender's reader
// and the receiver's reader each keep their own per-pair record, without locks.
// With --offline K the receivers of the last K pairs sign in once (so their names are known)
// and leave before the load: messages to them are stored and ACKed but pushed to nobody (the
// server's offline path), so they count in ack_ms and offline_acked, never in lost.

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type chatConfig struct {
	url                    string
	tokens                 []string
	pairs, inflight        int
	offline                int // the last offline pairs' receivers leave before the load
	rate, connectRate      float64
	seconds, warmup, drain float64
}

// pair: what the sender's reader saw (acked[k] = send time of message k once stored, minus it
// when refused)
// and what the receiver's reader saw (received[k] = copies of message k).
type pair struct {
	index            int
	sender, receiver *peer  // receiver nil for an offline pair
	to               string // the receiver's user
	offline          bool
	acked            []int64
	received         []uint8
	window           chan struct{} // --inflight: a slot per send in flight
}

type chatRun struct {
	cfg              chatConfig
	s                session
	pairs            []*pair
	nonce            string
	latency, ack     histogram
	sent, acked      atomic.Int64
	failed           atomic.Int64
	sentIn, ackedIn  counter // sends inside the measured window, and those stored (to online receivers)
	offlineIn        counter // measured sends to offline receivers, stored
	gotIn, inWindow  counter
	dups, unknown    counter
	winStart, winEnd int64
	ended            chan struct{} // closed at the window's end
}

func grow[T any](s []T, n int) []T {
	for len(s) <= n {
		s = append(s, *new(T))
	}
	return s
}

func runChat(cfg chatConfig) (map[string]any, error) {
	if len(cfg.tokens) < 2*cfg.pairs {
		return nil, fmt.Errorf("--tokens has %d lines, --pairs %d needs %d", len(cfg.tokens), cfg.pairs, 2*cfg.pairs)
	}
	if (cfg.rate > 0) == (cfg.inflight > 0) {
		return nil, fmt.Errorf("give one of --rate and --inflight")
	}
	if cfg.offline < 0 || cfg.offline >= cfg.pairs {
		return nil, fmt.Errorf("--offline must be 0 .. pairs-1")
	}
	// a cmid is the sender's idempotency key: a run of its own never meets an earlier run's
	r := &chatRun{cfg: cfg, nonce: strconv.FormatUint(rand.Uint64(), 36), ended: make(chan struct{})}
	r.pairs = make([]*pair, cfg.pairs)
	for i := range r.pairs {
		r.pairs[i] = &pair{index: i, offline: i >= cfg.pairs-cfg.offline}
		if cfg.inflight > 0 {
			r.pairs[i].window = make(chan struct{}, cfg.inflight)
		}
	}
	r.winStart, r.winEnd = 1<<62, 1<<62 // nothing is measured before the window is set
	// an offline receiver's name, as its welcome said (each handshake writes its own slot)
	offlineNames := make([]string, cfg.pairs)
	if err := r.s.connect(cfg.url, 2*cfg.pairs, cfg.connectRate, func(p *peer) error {
		if err := imflowAuth(p, cfg.tokens[p.index]); err != nil {
			return err
		}
		if pr := r.pairs[p.index/2]; pr.offline && p.index%2 == 1 {
			offlineNames[pr.index] = p.user
			_ = p.writeFrame(opClose, []byte{0x03, 0xe8}) // leaves as a client going offline does
			return errNotKept
		}
		return nil
	}, r.receive); err != nil {
		return nil, err
	}
	logf("%d/%d users signed in in %.1f s (%d receivers left again: offline)", r.s.connected(), 2*cfg.pairs,
		r.s.connectS, cfg.offline)
	var ready []*pair
	for i, pr := range r.pairs {
		pr.sender, pr.receiver = r.s.peers[2*i], r.s.peers[2*i+1]
		if pr.receiver != nil {
			pr.to = pr.receiver.user
		} else if pr.offline {
			pr.to = offlineNames[i]
		}
		if pr.sender != nil && pr.to != "" {
			ready = append(ready, pr)
		}
	}
	if cfg.offline > 0 { // the gateway records who left in batches: let it, so the first sends see them offline
		time.Sleep(time.Second)
	}
	if len(ready) == 0 {
		r.s.stop()
		return nil, fmt.Errorf("no pair connected: %v", r.s.errors.snapshot())
	}
	start := time.Now().Add(100 * time.Millisecond)
	windowStart := start.Add(seconds(cfg.warmup))
	end := windowStart.Add(seconds(cfg.seconds))
	atomic.StoreInt64(&r.winEnd, end.UnixNano())
	atomic.StoreInt64(&r.winStart, windowStart.UnixNano())
	cpu := measureCPU(windowStart, end)
	stopProgress := r.progress()
	ended := time.AfterFunc(time.Until(end), func() { close(r.ended) })
	defer ended.Stop()
	var sending sync.WaitGroup
	for i, pr := range ready {
		sending.Add(1)
		first := start
		if cfg.rate > 0 { // the senders' schedules interleave evenly
			first = start.Add(time.Duration(float64(i) / cfg.rate * float64(time.Second)))
		}
		go func() {
			defer sending.Done()
			r.send(pr, first, end, len(ready))
		}()
	}
	sending.Wait()
	before, after := cpu.wait()
	drainS := drain(cfg.drain, r.drained)
	stopProgress()
	r.s.stop()
	return r.report(len(ready), before, after, drainS), nil
}

// send runs one sender until end: at rate/pairs a second from first, or --inflight at a time.
func (r *chatRun) send(pr *pair, first, end time.Time, pairs int) {
	to := strconv.Quote(pr.to)
	frame, cmid := make([]byte, 0, 256), make([]byte, 0, 64)
	for k := int64(0); ; k++ {
		if r.cfg.rate > 0 {
			sleepUntil(first.Add(time.Duration(float64(k) * float64(pairs) / r.cfg.rate * float64(time.Second))))
		} else {
			select {
			case pr.window <- struct{}{}:
			case <-r.ended:
				return
			}
		}
		if !time.Now().Before(end) {
			return
		}
		t := time.Now().UnixNano()
		// the cmid "<run>-<pair>-<k>-<t>" is the ref too: `sent` echoes the cmid, an error the ref
		cmid = append(cmid[:0], r.nonce...)
		cmid = append(strconv.AppendInt(append(cmid, '-'), int64(pr.index), 10), '-')
		cmid = append(strconv.AppendInt(cmid, k, 10), '-')
		cmid = strconv.AppendInt(cmid, t, 10)
		frame = append(frame[:0], `{"op":"send","ref":"`...)
		frame = append(frame, cmid...)
		frame = append(frame, `","cmid":"`...)
		frame = append(frame, cmid...)
		frame = append(frame, `","to":`...)
		frame = append(frame, to...)
		frame = append(frame, `,"body":{"text":"`...)
		frame = stampedText(frame, k, t, "")
		frame = append(frame, `"}}`...)
		r.sent.Add(1)
		if r.measured(t) {
			r.sentIn.add(pr.index, 1)
		}
		if err := pr.sender.write(frame); err != nil {
			r.failed.Add(1)
			r.s.errors.add("write_failed")
			return
		}
	}
}

var imflowMsg = []byte(`"op":"msg"`)

// receive handles a frame on any user's connection: a push of a message (receivers), or a
// reply to a send (senders).
func (r *chatRun) receive(p *peer, frame []byte) {
	pr := r.pairs[p.index/2]
	if hasPrefixWithin(frame, imflowMsg, 32) {
		scanStamps(frame, imflowTimeKey, imflowNumberKey, func(s stamp) { r.delivered(pr, p, s) })
		return
	}
	var reply imflowReply
	if err := json.Unmarshal(frame, &reply); err != nil {
		r.s.errors.add("bad_json")
		return
	}
	switch reply.Op {
	case "msg":
		scanStamps(frame, imflowTimeKey, imflowNumberKey, func(s stamp) { r.delivered(pr, p, s) })
	case "sent", "error":
		id := reply.Cmid
		if id == "" {
			_ = json.Unmarshal(reply.Ref, &id)
		}
		k, t, ok := parseCmid(id)
		if !ok {
			r.s.errors.add(reply.Code)
			return
		}
		r.settled(pr, p, k, t, reply.Code)
	}
}

// parseCmid reads k and t back from a cmid "<run>-<pair>-<k>-<t>".
func parseCmid(cmid string) (k, t int64, ok bool) {
	parts := strings.Split(cmid, "-")
	if len(parts) != 4 {
		return 0, 0, false
	}
	k, err1 := strconv.ParseInt(parts[2], 10, 64)
	t, err2 := strconv.ParseInt(parts[3], 10, 64)
	return k, t, err1 == nil && err2 == nil
}

func (r *chatRun) delivered(pr *pair, p *peer, s stamp) {
	if p.index%2 != 1 || s.n < 0 || s.n > 1<<31 {
		r.unknown.add(p.index, 1)
		return
	}
	pr.received = grow(pr.received, int(s.n))
	pr.received[s.n]++
	if pr.received[s.n] > 1 {
		r.dups.add(p.index, 1)
		return
	}
	if p.now >= atomic.LoadInt64(&r.winStart) && p.now < atomic.LoadInt64(&r.winEnd) {
		r.inWindow.add(p.index, 1)
	}
	if r.measured(s.t) {
		r.gotIn.add(p.index, 1)
		r.latency.record(p.index, p.now-s.t)
	}
}

func (r *chatRun) measured(t int64) bool {
	return t >= atomic.LoadInt64(&r.winStart) && t < atomic.LoadInt64(&r.winEnd)
}

// settled: the reply to send k (sent at t) came: stored, or refused with code.
func (r *chatRun) settled(pr *pair, p *peer, k, t int64, code string) {
	if pr.window != nil {
		select {
		case <-pr.window:
		default:
		}
	}
	if p.index%2 != 0 || k < 0 || k > 1<<31 || t <= 0 {
		r.s.errors.add("unknown_reply")
		return
	}
	pr.acked = grow(pr.acked, int(k))
	if code != "" {
		pr.acked[k] = -t
		r.failed.Add(1)
		r.s.errors.add(code)
		return
	}
	pr.acked[k] = t
	r.acked.Add(1)
	r.ack.record(p.index, p.now-t)
	if r.measured(t) && pr.offline {
		r.offlineIn.add(p.index, 1)
	} else if r.measured(t) {
		r.ackedIn.add(p.index, 1)
	}
}

func (r *chatRun) drained() bool {
	return r.acked.Load()+r.failed.Load() >= r.sent.Load() && r.gotIn.load() >= r.ackedIn.load()
}

func (r *chatRun) progress() func() {
	last, lastAt := int64(0), usageNow()
	return progressEvery(time.Second, func() string {
		now, acked := usageNow(), r.acked.Load()
		line := fmt.Sprintf("sent %d stored %d failed %d | %.0f stored/s | generator %.2f cores | %d open",
			r.sent.Load(), acked, r.failed.Load(), float64(acked-last)/now.wall.Sub(lastAt.wall).Seconds(),
			cpuBetween(lastAt, now)["cores_used"], r.s.alive.Load())
		last, lastAt = acked, now
		return line
	})
}

func (r *chatRun) report(pairs int, before, after usage, drainS float64) map[string]any {
	var ackedIn, failedIn, lost, deliveries, offlineAcked int64
	for _, pr := range r.pairs {
		for k, t := range pr.acked {
			got := k < len(pr.received) && pr.received[k] > 0
			switch {
			case t < 0 && r.measured(-t):
				failedIn++
			case t > 0 && r.measured(t) && pr.offline:
				offlineAcked++
			case t > 0 && r.measured(t):
				ackedIn++
				if got {
					deliveries++
				} else {
					lost++
				}
			}
		}
	}
	out := map[string]any{
		"mode": "chat", "target": "imflow", "pairs": pairs, "rate": r.cfg.rate, "inflight": r.cfg.inflight,
		"seconds": r.cfg.seconds, "warmup": r.cfg.warmup, "drain_s": round(drainS, 3),
		"posts_sent": r.sentIn.load(), "posts_acked": ackedIn + offlineAcked, "posts_failed": failedIn,
		"offline_pairs": r.cfg.offline, "offline_acked": offlineAcked, "posts_sent_total": r.sent.Load(),
		"posts_unanswered": r.sent.Load() - r.acked.Load() - r.failed.Load(),
		"deliveries":       deliveries, "expected_deliveries": ackedIn, "lost": lost,
		"duplicates": r.dups.load(), "unknown_messages": r.unknown.load(),
		"deliveries_per_s": round(float64(r.inWindow.load())/r.cfg.seconds, 1),
		"acked_per_s":      round(float64(r.ackedIn.load()+r.offlineIn.load())/r.cfg.seconds, 1),
		"latency_ms":       r.latency.summary(), "ack_ms": r.ack.summary(),
		"cpu": cpuBetween(before, after),
	}
	return r.s.report(out)
}
