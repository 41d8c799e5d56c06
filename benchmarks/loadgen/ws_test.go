package main

import (
	"bytes"
	"encoding/binary"
	"sync"
	"syscall"
	"testing"
	"time"
)

// serverFrame is a frame as a server writes it: unmasked.
func serverFrame(fin bool, opcode byte, payload []byte) []byte {
	b := []byte{opcode}
	if fin {
		b[0] |= 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, byte(n))
	case n < 1<<16:
		b = append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, payload...)
}

// stream: short, 126-length and 127-length messages, a fragmented one, and a ping between.
func stream() ([]byte, [][]byte) {
	long, huge := bytes.Repeat([]byte("a"), 300), bytes.Repeat([]byte("b"), 70000)
	var data []byte
	data = append(data, serverFrame(true, opText, []byte("hello"))...)
	data = append(data, serverFrame(true, opText, long)...)
	data = append(data, serverFrame(false, opText, []byte("frag-"))...)
	data = append(data, serverFrame(true, opPing, []byte("p"))...)
	data = append(data, serverFrame(true, opContinuation, []byte("ment"))...)
	data = append(data, serverFrame(true, opBinary, huge)...)
	return data, [][]byte{[]byte("hello"), long, []byte("frag-ment"), huge}
}

// The poller puts messages together whatever the chunks the socket hands over, and answers pings.
func TestPollerReadsMessagesSplitAnywhere(t *testing.T) {
	data, want := stream()
	for _, chunk := range []int{1, 7, 1000, len(data)} {
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var got [][]byte
		ps, err := newPollers(1, 1, func(p *peer, m []byte) {
			mu.Lock()
			got = append(got, append([]byte(nil), m...))
			mu.Unlock()
		}, func(*peer, error) {})
		if err != nil {
			t.Fatal(err)
		}
		if err := ps.add(&peer{index: 0, fd: fds[0]}); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(data); i += chunk {
			if _, err := syscall.Write(fds[1], data[i:min(i+chunk, len(data))]); err != nil {
				t.Fatal(err)
			}
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			n := len(got)
			mu.Unlock()
			if n == len(want) || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		ps.close()
		if len(got) != len(want) {
			t.Fatalf("chunks of %d: %d messages, want %d", chunk, len(got), len(want))
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("chunks of %d: message %d differs (%d bytes, want %d)", chunk, i, len(got[i]), len(want[i]))
			}
		}
		pong := make([]byte, 16)
		n, _ := syscall.Read(fds[1], pong)
		if n < 7 || pong[0] != 0x80|opPong || pong[1] != 0x80|1 { // masked pong of 1 byte (then the close)
			t.Fatalf("chunks of %d: no pong, got % x", chunk, pong[:n])
		}
		syscall.Close(fds[1])
	}
}

// A client frame is masked, and unmasks to what was written.
func TestWriteFrameMasks(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fds[1])
	p := &peer{fd: fds[0], mask: [4]byte{1, 2, 3, 4}}
	defer p.close()
	payload := bytes.Repeat([]byte("xyz"), 100)
	if err := p.write(payload); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1024)
	n, _ := syscall.Read(fds[1], buf)
	if buf[0] != 0x80|opText || buf[1] != 0x80|126 || int(binary.BigEndian.Uint16(buf[2:])) != len(payload) || n != 8+len(payload) {
		t.Fatalf("header % x, %d bytes", buf[:8], n)
	}
	for i := range payload {
		buf[8+i] ^= buf[4+i%4]
	}
	if !bytes.Equal(buf[8:n], payload) {
		t.Fatal("the payload does not unmask to what was written")
	}
}
