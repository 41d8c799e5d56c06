// Command imflow-loadgen is the compiled load generator of imflow's benchmarks (issue #14): it
// opens thousands of real WebSocket connections from one process cheaply enough that the server,
// not the generator, is what gets measured, and it reports its own CPU so a reader can check.
//
//	imflow-loadgen room --target imflow|centrifugo --url WS_URL [--tokens FILE] --viewers N
//	                    --rate POSTS_PER_S --seconds S [--warmup S] [--room NAME] [--posters K]
//	                    [--size BYTES] [--connect-rate PER_S] [--drain S]
//	imflow-loadgen chat --target imflow --url WS_URL --tokens FILE --pairs N
//	                    (--rate MSGS_PER_S | --inflight W) --seconds S [--warmup S] [--drain S] [--offline K]
//	imflow-loadgen idle --target imflow|centrifugo --url WS_URL [--tokens FILE] --connections N
//	                    [--room NAME] [--hold S]
//	imflow-loadgen watch --url WS_URL --tokens FILE --connections N [--connect-rate PER_S]
//
// room: N viewers join one room (imflow `room.join`; Centrifugo: subscribe to the channel); the
// first K of them post at a fixed total rate on one open-loop schedule (post n at n/rate s), each
// post's text "t=<send ns> n=<post number> <padding>" (Centrifugo: publish data {"t","n","p"}), so
// a viewer that receives it knows the latency and which post it is. Every viewer keeps a bit per
// post: deliveries, duplicates and lost (accepted posts a live or closed viewer never got) are
// exact per message, not sampled. The posts of the first --warmup seconds are sent but not
// measured; the measured ones are the next --seconds; after the last post the generator waits
// up to --drain seconds for what is still on its way.
// chat (imflow only): user 2i sends to user 2i+1 (tokens line by line), either at --rate messages
// a second in total or keeping --inflight sends unanswered per sender; latency is send → the
// receiver's `msg` push, ack is send → `sent`. --offline K: the receivers of the last K pairs
// sign in once and leave before the load, so what is sent to them takes the offline path.
// idle: N connections authenticated (and in --room), "ready N" on stdout once they are, held
// until stdin closes or --hold seconds pass.
// watch (imflow only): N connections signed in, "ready N" on stdout; then stdin's "arm OP" and
// "wait T0_NS TIMEOUT_S" lines time each connection's first OP frame from T0 (one JSON line per
// wait; see watch.go), until stdin closes.
//
// Output: progress on stderr, then ONE JSON object on stdout: posts_sent / posts_acked /
// posts_failed (the measured ones; posts_unanswered: no reply by the end of the drain; chat:
// offline_acked of them to offline receivers, expected nowhere),
// deliveries, expected_deliveries (accepted posts × viewers), lost, duplicates, deliveries_per_s
// (deliveries that arrived within the measured window, per second), frames_received, latency_ms and ack_ms ({count, mean, p50, p90, p99, p999, max}, from
// a log-linear histogram with under 1.6 % error: no per-sample memory), errors {code: n},
// closed {close code: n} (connections the server ended), connect_s, cpu {user_s, sys_s, wall_s,
// cores_used, from_unix_s, to_unix_s} over the measured window (getrusage), rss_mb.
//
// Cost: the WebSocket client is the generator's own (ws.go, standard library only): after its
// handshake each socket is read by one of a few epoll loops (one per core), one read a wake-up,
// instead of a goroutine per connection woken per frame (Go's net package reads twice per frame
// and wakes a goroutine: about 16 µs a frame on this machine, against 6–12 µs here, most of it
// the kernel's read). A room batch is never decoded, only searched for its stamps, so the
// generator stays well under a core: measured at 10,000 viewers × 100 posts/s on imflow (1 M
// deliveries/s in ~30,000 frames/s) 0.37 cores; against Centrifugo at 1,000 viewers (74,000
// frames/s, one or two messages each) 0.47 cores. Connections open at --connect-rate a second
// (256 handshakes at most at once) so a gateway is not stormed. Latency is the receive time
// minus the send time on one clock: the generator and the server must share the machine.
//
// Profile the generator itself with IMFLOW_LOADGEN_CPUPROFILE=FILE (go tool pprof).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"runtime/pprof"
)

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

func fail(format string, args ...any) {
	logf("imflow-loadgen: "+format, args...)
	os.Exit(2)
}

const usageText = `usage:
  imflow-loadgen room --target imflow|centrifugo --url WS_URL [--tokens FILE] --viewers N --rate POSTS_PER_S --seconds S
                      [--warmup S] [--room NAME] [--posters K] [--size BYTES] [--connect-rate PER_S] [--drain S]
  imflow-loadgen chat --target imflow --url WS_URL --tokens FILE --pairs N (--rate MSGS_PER_S | --inflight W) --seconds S
                      [--warmup S] [--connect-rate PER_S] [--drain S]
  imflow-loadgen idle --target imflow|centrifugo --url WS_URL [--tokens FILE] --connections N [--room NAME] [--hold S]
                      [--connect-rate PER_S]
  imflow-loadgen watch --url WS_URL --tokens FILE --connections N [--connect-rate PER_S]   (then stdin: arm OP / wait T0_NS TIMEOUT_S)
(each mode's -h lists its options)`

func main() {
	if len(os.Args) < 2 {
		fail("%s", usageText)
	}
	// a reader allocates little but often; memory is cheap here, collector time is not
	debug.SetGCPercent(400)
	if path := os.Getenv("IMFLOW_LOADGEN_CPUPROFILE"); path != "" { // for work on the generator itself
		if f, err := os.Create(path); err == nil && pprof.StartCPUProfile(f) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	mode, args := os.Args[1], os.Args[2:]
	flags := flag.NewFlagSet(mode, flag.ExitOnError)
	targetName := flags.String("target", "imflow", "imflow or centrifugo")
	url := flags.String("url", "", "the server's WebSocket URL (imflow: ws://HOST:PORT/ws; Centrifugo: ws://HOST:PORT/connection/websocket)")
	tokensFile := flags.String("tokens", "", "a file of tokens, one per line: line i is connection i's")
	connectRate := flags.Float64("connect-rate", 1000, "connections opened per second (0: as fast as possible)")
	room := flags.String("room", "", "the room (imflow) or channel (Centrifugo); default bench-room / room:bench")
	seconds := flags.Float64("seconds", 10, "the measured window, in seconds")
	warmup := flags.Float64("warmup", 2, "seconds of load before the measured window")
	drain := flags.Float64("drain", 10, "at most this many seconds after the last post for late deliveries")
	rate := flags.Float64("rate", 0, "posts (room) or messages (chat) a second, in total")
	var viewers, posters, size, pairs, inflight, connections, offline *int
	var hold *float64
	switch mode {
	case "room":
		viewers = flags.Int("viewers", 0, "connections in the room (posters included)")
		posters = flags.Int("posters", 0, "how many of the viewers post (default: 10, or fewer viewers)")
		size = flags.Int("size", 100, "each post's text length in bytes, its stamp included")
	case "chat":
		pairs = flags.Int("pairs", 0, "sender/receiver pairs (tokens 2i and 2i+1)")
		inflight = flags.Int("inflight", 0, "instead of --rate: sends each sender keeps unanswered")
		offline = flags.Int("offline", 0, "the receivers of the last K pairs sign in, then leave before the load")
	case "idle":
		connections = flags.Int("connections", 0, "connections to open")
		hold = flags.Float64("hold", 0, "seconds to hold them (0: until stdin closes)")
	case "watch":
		connections = flags.Int("connections", 0, "connections to open")
	default:
		fail("unknown mode %q\n%s", mode, usageText)
	}
	_ = flags.Parse(args)
	if *url == "" {
		fail("--url is required")
	}
	tgt, ok := targetNamed(*targetName)
	if !ok {
		fail("--target must be imflow or centrifugo")
	}
	if *room == "" && mode != "chat" && mode != "watch" {
		*room = tgt.defaultRoom()
	}
	tokens, err := readTokens(*tokensFile)
	if err != nil {
		fail("reading --tokens: %v", err)
	}
	needed := map[string]*int{"room": viewers, "idle": connections, "watch": connections}[mode]
	if *targetName == "imflow" && needed != nil && len(tokens) < *needed {
		fail("imflow signs every connection in: --tokens needs %d lines, has %d", *needed, len(tokens))
	}
	var out map[string]any
	switch mode {
	case "room":
		if *viewers < 1 || *rate <= 0 || *seconds <= 0 {
			fail("room needs --viewers N, --rate R and --seconds S")
		}
		if *posters == 0 {
			*posters = min(10, *viewers)
		}
		out, err = runRoom(roomConfig{target: tgt, targetName: *targetName, url: *url, room: *room, tokens: tokens,
			viewers: *viewers, posters: *posters, size: *size, rate: *rate, connectRate: *connectRate,
			seconds: *seconds, warmup: *warmup, drain: *drain})
	case "chat":
		if *targetName != "imflow" {
			fail("chat speaks imflow's one-to-one protocol only")
		}
		if *pairs < 1 || *seconds <= 0 {
			fail("chat needs --pairs N and --seconds S")
		}
		out, err = runChat(chatConfig{url: *url, tokens: tokens, pairs: *pairs, inflight: *inflight, rate: *rate,
			connectRate: *connectRate, seconds: *seconds, warmup: *warmup, drain: *drain, offline: *offline})
	case "idle":
		if *connections < 1 {
			fail("idle needs --connections N")
		}
		flagGiven := false
		flags.Visit(func(f *flag.Flag) { flagGiven = flagGiven || f.Name == "room" })
		if !flagGiven {
			*room = "" // idle joins a room only when asked
		}
		out, err = runIdle(idleConfig{target: tgt, targetName: *targetName, url: *url, room: *room, tokens: tokens,
			connections: *connections, connectRate: *connectRate, hold: *hold})
	case "watch":
		if *targetName != "imflow" || *connections < 1 {
			fail("watch speaks imflow's protocol only, and needs --connections N")
		}
		out, err = runWatch(watchConfig{url: *url, tokens: tokens, connections: *connections, connectRate: *connectRate},
			os.Stdin, os.Stdout)
	}
	if err != nil {
		pprof.StopCPUProfile()
		fail("%v", err)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("writing the result: %v", err)
	}
}
