package main

import (
	"strings"
	"testing"
)

func collect(frame string, timeKey, numberKey []byte) []stamp {
	var got []stamp
	scanStamps([]byte(frame), timeKey, numberKey, func(s stamp) { got = append(got, s) })
	return got
}

func TestScanStampsImflowBatch(t *testing.T) {
	frame := `{"op":"room.batch","room":"r","messages":[` +
		`{"id":"a1","room":"r","sender":"u=1","kind":"chat","text":"t=1764506400123456789 n=0 xxxx","priority":0,"at_ms":1},` +
		`{"id":"a2","room":"r","sender":"u2","kind":"chat","text":"t=1764506400123456999 n=17","priority":0,"at_ms":2},` +
		`{"id":"a3","text":"t=bad n=3"},{"id":"a4","text":"hello t=5 n=6"}]}`
	got := collect(frame, imflowTimeKey, imflowNumberKey)
	want := []stamp{{1764506400123456789, 0}, {1764506400123456999, 17}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestScanStampsCentrifugoPush(t *testing.T) {
	line := `{"push":{"channel":"room:bench","pub":{"data":{"t":1764506400000000001,"n":42,"p":"xxx"},"offset":3}}}`
	got := collect(line, centrifugoTimeKey, centrifugoNumberKey)
	if len(got) != 1 || got[0] != (stamp{1764506400000000001, 42}) {
		t.Fatalf("got %v", got)
	}
}

func TestStampedTextRoundTrip(t *testing.T) {
	var frame []byte
	frame = imflowTarget{}.post(frame, "bench-room", 7, 123456789, strings.Repeat("x", 10))
	got := collect(`{"messages":[{"text":"`+string(frame[strings.Index(string(frame), `"text":"`)+8:]), imflowTimeKey, imflowNumberKey)
	if len(got) != 1 || got[0] != (stamp{123456789, 7}) {
		t.Fatalf("got %v from %s", got, frame)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.record(i, int64(i)*1_000_000) // 1 … 1000 ms
	}
	s := h.summary()
	for name, want := range map[string]float64{"p50": 500, "p90": 900, "p99": 990, "max": 1000} {
		got := s[name].(float64)
		if got < want*0.98 || got > want*1.02 {
			t.Errorf("%s = %v, want about %v", name, got, want)
		}
	}
	if s["count"].(uint64) != 1000 {
		t.Errorf("count %v", s["count"])
	}
}

func TestParseCmid(t *testing.T) {
	k, ts, ok := parseCmid("3kx9a-12-345-1764506400123456789")
	if !ok || k != 345 || ts != 1764506400123456789 {
		t.Fatalf("got %d %d %v", k, ts, ok)
	}
	if _, _, ok := parseCmid("other"); ok {
		t.Fatal("a foreign cmid parsed")
	}
}
