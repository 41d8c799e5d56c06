package main

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// fakeRoom is a tiny imflow server: it answers auth, room.join and room.post, and sends each
// post at once as a room.batch to every viewer but those drop(viewer, post) names, twice to
// those twice(viewer, post) names; post refuse(post) gets an error instead. A one-to-one send
// (numbered k by its cmid) is stored at once (`sent`) and pushed to its receiver (`msg`) under
// the same drop and twice rules.
type fakeRoom struct {
	listener net.Listener
	mu       sync.Mutex
	viewers  map[string]*fakeConn // by user
	drop     func(user string, n int64) bool
	twice    func(user string, n int64) bool
	refuse   func(n int64) bool
}

type fakeConn struct {
	mu   sync.Mutex
	conn net.Conn
}

func (c *fakeConn) send(payload []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _ = c.conn.Write(serverFrame(true, opText, payload))
}

// startFake serves f on a loopback port until the test ends.
func startFake(t *testing.T, f *fakeRoom) *fakeRoom {
	listener, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Close() })
	f.listener, f.viewers = listener, map[string]*fakeConn{}
	go f.serve()
	return f
}

func (f *fakeRoom) url() string { return "ws://" + f.listener.Addr().String() + "/ws" }

func (f *fakeRoom) serve() {
	for {
		conn, err := f.listener.Accept()
		if err != nil {
			return
		}
		go f.session(conn)
	}
}

func (f *fakeRoom) session(conn net.Conn) {
	defer conn.Close()
	reader := bufio.NewReader(conn)
	request, err := http.ReadRequest(reader)
	if err != nil {
		return
	}
	sum := sha1.Sum([]byte(request.Header.Get("Sec-WebSocket-Key") + acceptGUID))
	fmt.Fprintf(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
		base64.StdEncoding.EncodeToString(sum[:]))
	c := &fakeConn{conn: conn}
	user := ""
	for {
		var head [2]byte
		if _, err := io.ReadFull(reader, head[:]); err != nil {
			return
		}
		length := int(head[1] & 0x7f)
		if length == 126 {
			var ext [2]byte
			_, _ = io.ReadFull(reader, ext[:])
			length = int(binary.BigEndian.Uint16(ext[:]))
		}
		var key [4]byte
		_, _ = io.ReadFull(reader, key[:])
		payload := make([]byte, length)
		if _, err := io.ReadFull(reader, payload); err != nil {
			return
		}
		for i := range payload {
			payload[i] ^= key[i%4]
		}
		if head[0]&0x0f == opClose {
			return
		}
		var frame map[string]any
		_ = json.Unmarshal(payload, &frame)
		switch frame["op"] {
		case "auth":
			user = frame["token"].(string) // the tests' tokens are the users' names
			f.mu.Lock()
			f.viewers[user] = c
			f.mu.Unlock()
			c.send([]byte(`{"op":"welcome","user":"` + user + `"}`))
		case "send":
			cmid, to := frame["cmid"].(string), frame["to"].(string)
			k, _, _ := parseCmid(cmid)
			c.send([]byte(fmt.Sprintf(`{"op":"sent","cmid":%q,"conversation":"p:x:y","mid":1,"seq":%d}`, cmid, k+1)))
			body, _ := json.Marshal(frame["body"])
			push := []byte(fmt.Sprintf(`{"op":"msg","message":{"mid":1,"seq":%d,"sender":%q,"type":"text","body":%s}}`, k+1, user, body))
			f.mu.Lock()
			receiver := f.viewers[to]
			f.mu.Unlock()
			if !f.drop(to, k) {
				receiver.send(push)
			}
			if f.twice(to, k) {
				receiver.send(push)
			}
		case "room.join":
			c.send([]byte(`{"op":"room.join","room":"r","viewers":1,"host":null,"ref":0}`))
		case "room.post":
			n := int64(frame["ref"].(float64))
			if f.refuse(n) {
				c.send([]byte(fmt.Sprintf(`{"op":"error","code":"room.bad_request","ref":%d}`, n)))
				continue
			}
			c.send([]byte(fmt.Sprintf(`{"op":"room.post","room":"r","id":"x%d","ref":%d}`, n, n)))
			text, _ := json.Marshal(frame["text"])
			batch := []byte(fmt.Sprintf(`{"op":"room.batch","room":"r","messages":[{"id":"x%d","room":"r","sender":"%s","kind":"chat","text":%s,"priority":0,"at_ms":1}]}`, n, user, text))
			f.mu.Lock()
			for name, viewer := range f.viewers {
				if !f.drop(name, n) {
					viewer.send(batch)
				}
				if f.twice(name, n) {
					viewer.send(batch)
				}
			}
			f.mu.Unlock()
		}
	}
}

// lost, duplicates, refusals and expected deliveries are counted exactly, per post and viewer.
func TestRoomCountsEveryDeliveryExactly(t *testing.T) {
	// 5 posts a second for 0.4 s of warm-up (posts 0, 1) and 2 s measured (posts 2 … 11)
	f := startFake(t, &fakeRoom{
		drop: func(user string, n int64) bool {
			return (user == "v1" && (n == 1 || n == 4 || n == 7)) || (user == "v2" && n == 9)
		},
		twice:  func(user string, n int64) bool { return user == "v3" && n == 5 },
		refuse: func(n int64) bool { return n == 6 },
	})
	tokens := []string{"v0", "v1", "v2", "v3"}
	out, err := runRoom(roomConfig{target: imflowTarget{}, targetName: "imflow", url: f.url(), room: "r", tokens: tokens,
		viewers: 4, posters: 2, size: 40, rate: 5, connectRate: 0, seconds: 2, warmup: 0.4, drain: 2})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{
		"posts_sent": 10, "posts_acked": 9, "posts_failed": 1, // post 6 refused (and not broadcast)
		"expected_deliveries": 9 * 4,
		"lost":                3, // v1: 4 and 7 (1 is warm-up), v2: 9
		"deliveries":          9*4 - 3,
		"duplicates":          1, // v3 got 5 twice
	}
	for key, value := range want {
		if got := toInt(out[key]); got != value {
			t.Errorf("%s = %d, want %d (%v)", key, got, value, out)
		}
	}
	if latency := out["latency_ms"].(map[string]any); latency["count"].(uint64) != uint64(want["deliveries"]) {
		t.Errorf("latency samples %v, want one per delivery", latency["count"])
	}
}

func toInt(v any) int64 {
	switch n := v.(type) {
	case int64:
		return n
	case int:
		return int64(n)
	case float64:
		return int64(n)
	}
	panic(fmt.Sprintf("%T", v))
}

// Chat: every stored message missing at its receiver is lost, counted per message.
func TestChatCountsEveryMessageExactly(t *testing.T) {
	// 10 messages a second over 2 pairs: pair i's message k is sent at (i + 2k)/10 s; 0.4 s of
	// warm-up, then 2 s measured: k = 2 … 11 of each pair, 20 messages
	f := startFake(t, &fakeRoom{
		drop: func(user string, k int64) bool {
			return (user == "r0" && (k == 3 || k == 5)) || (user == "r1" && k == 0)
		},
		twice:  func(user string, k int64) bool { return user == "r1" && k == 4 },
		refuse: func(int64) bool { return false },
	})
	out, err := runChat(chatConfig{url: f.url(), tokens: []string{"s0", "r0", "s1", "r1"}, pairs: 2, rate: 10,
		seconds: 2, warmup: 0.4, drain: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"posts_sent": 20, "posts_acked": 20, "posts_failed": 0, "expected_deliveries": 20,
		"lost": 2, "deliveries": 18, "duplicates": 1}
	for key, value := range want {
		if got := toInt(out[key]); got != value {
			t.Errorf("%s = %d, want %d (%v)", key, got, value, out)
		}
	}
	if latency := out["latency_ms"].(map[string]any); latency["count"].(uint64) != 18 {
		t.Errorf("latency samples %v, want one per measured delivery", latency["count"])
	}
}

// Chat --offline: the last pairs' receivers sign in, leave, and what is sent to them is ACKed
// but expected nowhere (not lost); the others count as before.
func TestChatOfflineReceiversAreAckedNotLost(t *testing.T) {
	// 15 messages a second over 3 pairs: pair i's message k at (i + 3k)/15 s; measured 0.4 … 2.4 s:
	// k = 2 … 11 of each pair, 30 messages, 10 of them to pair 2's receiver, who is offline
	f := startFake(t, &fakeRoom{
		drop:   func(string, int64) bool { return false },
		twice:  func(string, int64) bool { return false },
		refuse: func(int64) bool { return false },
	})
	out, err := runChat(chatConfig{url: f.url(), tokens: []string{"s0", "r0", "s1", "r1", "s2", "r2"}, pairs: 3,
		offline: 1, rate: 15, seconds: 2, warmup: 0.4, drain: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"posts_sent": 30, "posts_acked": 30, "offline_acked": 10, "expected_deliveries": 20,
		"deliveries": 20, "lost": 0, "connected": 5}
	for key, value := range want {
		if got := toInt(out[key]); got != value {
			t.Errorf("%s = %d, want %d (%v)", key, got, value, out)
		}
	}
	if errors := out["errors"].(map[string]int64); len(errors) != 0 {
		t.Errorf("errors %v, want none (leaving on purpose is not a failure)", errors)
	}
	if ack := out["ack_ms"].(map[string]any); ack["count"].(uint64) < 30 {
		t.Errorf("ack samples %v, want every stored message's, offline ones too", ack["count"])
	}
}

// broadcast sends payload to every signed-in user to(user) names.
func (f *fakeRoom) broadcast(payload string, to func(user string) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for user, viewer := range f.viewers {
		if to(user) {
			viewer.send([]byte(payload))
		}
	}
}

// Watch: each connection's first frame of the armed op counts once, other ops and frames from
// before the arm not at all; a connection that never gets one is missing.
func TestWatchTimesEachConnectionsFirstFrameOfAnOp(t *testing.T) {
	f := startFake(t, &fakeRoom{})
	users := []string{"w0", "w1", "w2", "w3"}
	stdin, commands := io.Pipe()
	replies, stdout := io.Pipe()
	done := make(chan map[string]any, 1)
	go func() {
		out, err := runWatch(watchConfig{url: f.url(), tokens: users, connections: 4}, stdin, stdout)
		if err != nil {
			t.Error(err)
		}
		stdout.Close()
		done <- out
	}()
	lines := bufio.NewScanner(replies)
	say := func(command string) string {
		if command != "" {
			if _, err := io.WriteString(commands, command+"\n"); err != nil {
				t.Fatal(err)
			}
		}
		if !lines.Scan() {
			t.Fatalf("no reply to %q", command)
		}
		return lines.Text()
	}
	if line := say(""); line != "ready 4" {
		t.Fatalf("first line %q, want ready 4", line)
	}
	everyone := func(string) bool { return true }
	if line := say("arm recalled"); line != "armed recalled" {
		t.Fatalf("got %q", line)
	}
	t0 := time.Now().UnixNano()
	f.broadcast(`{"op":"msg","message":{"op":"recalled"}}`, everyone) // another op (a nested "op" is not the frame's)
	f.broadcast(`{"op":"recalled","seq":1}`, func(user string) bool { return user != "w3" })
	f.broadcast(`{"op":"recalled","seq":1}`, func(user string) bool { return user == "w0" }) // a second one: not counted
	var result map[string]any
	if err := json.Unmarshal([]byte(say(fmt.Sprintf("wait %d 0.5", t0))), &result); err != nil {
		t.Fatal(err)
	}
	if result["got"] != 3.0 || result["missing"] != 1.0 || result["other_frames"] != 4.0 {
		t.Errorf("got %v, missing %v, other frames %v; want 3, 1 (w3), 4 (the msg frames): %v",
			result["got"], result["missing"], result["other_frames"], result)
	}
	latency := result["latency_ms"].(map[string]any)
	if latency["count"] != 3.0 || latency["max"].(float64) <= 0 || latency["max"].(float64) > 500 {
		t.Errorf("latency %v, want 3 samples after t0, within the wait", latency)
	}
	// armed again for another op: everyone has it, and the wait ends without its timeout
	say("arm edited")
	t0 = time.Now().UnixNano()
	f.broadcast(`{"op":"edited","message":{}}`, everyone)
	_ = json.Unmarshal([]byte(say(fmt.Sprintf("wait %d 30", t0))), &result)
	if result["got"] != 4.0 || result["missing"] != 0.0 || result["waited_s"].(float64) > 10 {
		t.Errorf("second round %v, want all 4 at once", result)
	}
	// armed again for the first op: what came before the arm is forgotten
	say("arm recalled")
	_ = json.Unmarshal([]byte(say(fmt.Sprintf("wait %d 0.2", time.Now().UnixNano()))), &result)
	if result["got"] != 0.0 || result["missing"] != 4.0 {
		t.Errorf("third round %v, want nothing (every recalled frame came before the arm)", result)
	}
	commands.Close()
	if final := <-done; toInt(final["connected"]) != 4 || final["mode"] != "watch" {
		t.Errorf("final %v", final)
	}
}
