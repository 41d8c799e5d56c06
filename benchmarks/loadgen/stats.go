package main

// Counters, the latency histogram and the process's own CPU and memory.

import (
	"math"
	"math/bits"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const shards = 16 // counters and histograms are split so that readers on several cores rarely share a cache line

// counter is an int64 added to from many goroutines: shard by connection index.
type counter struct {
	shard [shards]struct {
		v atomic.Int64
		_ [56]byte
	}
}

func (c *counter) add(i int, n int64) { c.shard[i%shards].v.Add(n) }

func (c *counter) load() int64 {
	var total int64
	for i := range c.shard {
		total += c.shard[i].v.Load()
	}
	return total
}

// Histogram buckets: values in microseconds, log-linear with 64 sub-buckets per power of two
// (under 1.6 % error), from 1 µs to 2^47 µs; no per-sample memory, however many samples.
const (
	subBits    = 6
	subCount   = 1 << subBits
	maxExp     = 42
	bucketsLen = (maxExp + 1) * subCount
)

// histogram of latencies, safe for concurrent use.
type histogram struct {
	shard [shards]struct {
		counts [bucketsLen]atomic.Uint64
		max    atomic.Int64
		sum    atomic.Int64
	}
}

func bucketOf(us int64) int {
	if us < subCount {
		if us < 0 {
			return 0
		}
		return int(us)
	}
	e := bits.Len64(uint64(us)) - subBits - 1 // us>>e is in [64, 128)
	if e > maxExp-1 {
		return bucketsLen - 1
	}
	return (e+1)*subCount + int(us>>e) - subCount
}

// bucketValue is the middle of a bucket, in microseconds.
func bucketValue(i int) float64 {
	if i < subCount {
		return float64(i)
	}
	e := i/subCount - 1
	low := float64(int64(i%subCount+subCount) << e)
	return low + float64(int64(1)<<e)/2
}

// record one latency given in nanoseconds, from connection i.
func (h *histogram) record(i int, ns int64) {
	s := &h.shard[i%shards]
	us := ns / 1000
	s.counts[bucketOf(us)].Add(1)
	s.sum.Add(us)
	for {
		m := s.max.Load()
		if us <= m || s.max.CompareAndSwap(m, us) {
			return
		}
	}
}

// summary in milliseconds: {"count","mean","p50","p90","p99","p999","max"}; zeros when empty.
func (h *histogram) summary() map[string]any {
	var merged [bucketsLen]uint64
	var total uint64
	var sum, maxUs int64
	for s := range h.shard {
		for i := range merged {
			c := h.shard[s].counts[i].Load()
			merged[i] += c
			total += c
		}
		sum += h.shard[s].sum.Load()
		maxUs = max(maxUs, h.shard[s].max.Load())
	}
	out := map[string]any{"count": total}
	quantile := func(q float64) float64 {
		if total == 0 {
			return 0
		}
		rank := uint64(math.Ceil(q * float64(total)))
		var seen uint64
		for i, c := range merged {
			seen += c
			if seen >= rank && c > 0 {
				return math.Min(bucketValue(i), float64(maxUs)) / 1000
			}
		}
		return float64(maxUs) / 1000
	}
	for _, q := range []struct {
		name string
		q    float64
	}{{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}, {"p999", 0.999}} {
		out[q.name] = round(quantile(q.q), 3)
	}
	out["max"] = round(float64(maxUs)/1000, 3)
	if total > 0 {
		out["mean"] = round(float64(sum)/float64(total)/1000, 3)
	} else {
		out["mean"] = 0.0
	}
	return out
}

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

// tally counts names (error codes, close codes): rare events, a mutex is enough.
type tally struct {
	mu sync.Mutex
	n  map[string]int64
}

func (t *tally) add(name string) {
	t.mu.Lock()
	if t.n == nil {
		t.n = map[string]int64{}
	}
	t.n[name]++
	t.mu.Unlock()
}

func (t *tally) snapshot() map[string]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]int64, len(t.n))
	for k, v := range t.n {
		out[k] = v
	}
	return out
}

func (t *tally) total() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var n int64
	for _, v := range t.n {
		n += v
	}
	return n
}

// usage is a point in time and the process's CPU time until then.
type usage struct {
	wall      time.Time
	user, sys time.Duration
}

func usageNow() usage {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return usage{time.Now(), time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())}
}

// cpuBetween: {"user_s","sys_s","wall_s","cores_used"} (cpu seconds / wall seconds), and the
// span's ends as Unix seconds (from_unix_s, to_unix_s: a caller can measure a server over the same span).
func cpuBetween(a, b usage) map[string]float64 {
	wall := b.wall.Sub(a.wall).Seconds()
	user, sys := (b.user - a.user).Seconds(), (b.sys - a.sys).Seconds()
	cores := 0.0
	if wall > 0 {
		cores = (user + sys) / wall
	}
	return map[string]float64{"user_s": round(user, 3), "sys_s": round(sys, 3), "wall_s": round(wall, 3), "cores_used": round(cores, 3),
		"from_unix_s": round(float64(a.wall.UnixNano())/1e9, 3), "to_unix_s": round(float64(b.wall.UnixNano())/1e9, 3)}
}

// rssMB is the resident set size now, in MB (0 if /proc is not there).
func rssMB() float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			kb, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
			return round(kb/1024, 1)
		}
	}
	return 0
}
