package main

// A minimal WebSocket client (RFC 6455) on raw sockets, and the epoll loops that read all the
// connections. Why not a library's connection type: with Go's net package every frame costs its
// connection's goroutine a wake-up and two read calls (one finds the frame, the next finds
// nothing and parks), about 16 µs a frame here; a few epoll loops, each reading whatever
// socket is ready once, take a fraction of that, which is what lets one process absorb 100,000
// room batches a second. The client side of the protocol is small: an HTTP upgrade, masked
// frames out, unmasked frames in (continuations, ping, pong, close).

import (
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/url"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
	maxMessage     = 16 << 20
)

// closeError: the server closed the connection with this WebSocket close code (1006: without one).
type closeError struct{ code int }

func (e closeError) Error() string { return "closed " + strconv.Itoa(e.code) }

// peer is one client connection: its socket, what has been read of it and not yet handled, and
// a message being put together from fragments.
type peer struct {
	index   int
	fd      int
	now     int64  // when the frames being handled arrived (Unix ns)
	user    string // imflow: from the welcome frame
	pending []byte // bytes read but not yet a whole frame
	frag    []byte // a fragmented message so far
	fragOp  byte
	mask    [4]byte
	wmu     sync.Mutex // one writer at a time; closing takes it too, so no write meets a reused fd
	wbuf    []byte
	closed  bool // under wmu
}

// dial opens a TCP connection to a ws:// URL and upgrades it; the socket is blocking with
// timeouts until detach makes it non-blocking for a poller.
func dial(rawURL string, index int, timeout time.Duration) (*peer, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "ws" {
		return nil, fmt.Errorf("want a ws:// URL, got %q", rawURL)
	}
	addr, err := net.ResolveTCPAddr("tcp4", u.Host)
	if err != nil {
		return nil, err
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	p := &peer{index: index, fd: fd}
	tv := syscall.NsecToTimeval(timeout.Nanoseconds())
	_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &tv)
	_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	sa := &syscall.SockaddrInet4{Port: addr.Port}
	copy(sa.Addr[:], addr.IP.To4())
	if err := connect(fd, sa); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	if err := p.upgrade(u); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	return p, nil
}

func connect(fd int, sa syscall.Sockaddr) error {
	for {
		err := syscall.Connect(fd, sa)
		if err != syscall.EINTR {
			return err
		}
	}
}

const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func (p *peer) upgrade(u *url.URL) error {
	var key [16]byte
	_, _ = rand.Read(key[:])
	_, _ = rand.Read(p.mask[:])
	encoded := base64.StdEncoding.EncodeToString(key[:])
	path := u.RequestURI()
	request := "GET " + path + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + encoded + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if err := p.writeAll([]byte(request)); err != nil {
		return err
	}
	var response []byte
	buf := make([]byte, 4096)
	for {
		n, err := syscall.Read(p.fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return closeError{1006}
		}
		response = append(response, buf[:n]...)
		if end := bytes.Index(response, []byte("\r\n\r\n")); end >= 0 {
			p.pending = append(p.pending, response[end+4:]...) // a frame the server sent at once
			response = response[:end]
			break
		}
		if len(response) > 16384 {
			return errors.New("an upgrade response without an end")
		}
	}
	status := response[:max(0, bytes.IndexByte(response, '\r'))]
	if !bytes.HasPrefix(status, []byte("HTTP/1.1 101")) {
		return fmt.Errorf("upgrade refused: %s", status)
	}
	sum := sha1.Sum([]byte(encoded + acceptGUID))
	if !bytes.Contains(bytes.ToLower(response), bytes.ToLower([]byte(base64.StdEncoding.EncodeToString(sum[:])))) {
		return errors.New("upgrade without the right Sec-WebSocket-Accept")
	}
	return nil
}

// writeAll writes b whole: on a non-blocking socket whose buffer is full it waits a little
// and goes on (the server is not reading: that is its slowness, measured as such).
func (p *peer) writeAll(b []byte) error {
	for len(b) > 0 {
		n, err := syscall.Write(p.fd, b)
		switch {
		case err == syscall.EAGAIN:
			time.Sleep(time.Millisecond)
			continue
		case err == syscall.EINTR:
			continue
		case err != nil:
			return err
		}
		b = b[n:]
	}
	return nil
}

// writeFrame sends one masked frame of opcode with payload; safe from any goroutine.
func (p *peer) writeFrame(opcode byte, payload []byte) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if p.closed {
		return closeError{1006}
	}
	b := append(p.wbuf[:0], 0x80|opcode)
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n < 1<<16:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	b = append(b, p.mask[:]...)
	start := len(b)
	b = append(b, payload...)
	for i := range b[start:] {
		b[start+i] ^= p.mask[i&3]
	}
	p.wbuf = b
	return p.writeAll(b)
}

// write sends a text frame.
func (p *peer) write(frame []byte) error { return p.writeFrame(opText, frame) }

// close shuts the socket (at most once).
func (p *peer) close() {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if !p.closed {
		p.closed = true
		_ = syscall.Close(p.fd)
	}
}

// frames handles the whole frames at the start of data: each complete message goes to
// message (which returns false to stop after it); pings are answered; a close frame ends it
// with a closeError. It returns how many bytes it used.
func (p *peer) frames(data []byte, message func([]byte) bool) (int, error) {
	used := 0
	for {
		b := data[used:]
		if len(b) < 2 {
			return used, nil
		}
		fin, opcode, masked := b[0]&0x80 != 0, b[0]&0x0f, b[1]&0x80 != 0
		length, header := int64(b[1]&0x7f), 2
		switch length {
		case 126:
			if len(b) < 4 {
				return used, nil
			}
			length, header = int64(binary.BigEndian.Uint16(b[2:])), 4
		case 127:
			if len(b) < 10 {
				return used, nil
			}
			length, header = int64(binary.BigEndian.Uint64(b[2:])), 10
		}
		if masked {
			header += 4
		}
		if length > maxMessage {
			return used, fmt.Errorf("a frame of %d bytes", length)
		}
		if int64(len(b)) < int64(header)+length {
			return used, nil
		}
		payload := b[header : int64(header)+length]
		if masked { // servers do not mask; tolerated all the same
			key := b[header-4 : header]
			for i := range payload {
				payload[i] ^= key[i&3]
			}
		}
		used += header + int(length)
		switch opcode {
		case opText, opBinary:
			if fin {
				if !message(payload) {
					return used, nil
				}
			} else {
				p.frag, p.fragOp = append(p.frag[:0], payload...), opcode
			}
		case opContinuation:
			p.frag = append(p.frag, payload...)
			if fin {
				more := message(p.frag)
				p.frag = p.frag[:0]
				if !more {
					return used, nil
				}
			}
		case opPing:
			_ = p.writeFrame(opPong, payload)
		case opPong:
		case opClose:
			code := 1005
			if len(payload) >= 2 {
				code = int(binary.BigEndian.Uint16(payload))
			}
			_ = p.writeFrame(opClose, payload[:min(2, len(payload))])
			return used, closeError{code}
		default:
			return used, fmt.Errorf("opcode %d", opcode)
		}
	}
}

// read blocks until one whole message has arrived and returns it (handshakes only: a peer
// handed to a poller is read there); what follows it stays pending.
func (p *peer) read() ([]byte, error) {
	buf := make([]byte, 16384)
	for {
		var got []byte
		used, err := p.frames(p.pending, func(m []byte) bool {
			got = append([]byte(nil), m...)
			return false
		})
		p.pending = p.pending[used:]
		if got != nil {
			return got, nil
		}
		if err != nil {
			return nil, err
		}
		n, err := syscall.Read(p.fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, closeError{1006}
		}
		p.pending = append(p.pending, buf[:n]...)
	}
}

// poller is one epoll loop reading its share of the connections.
type poller struct {
	epfd   int
	buf    []byte
	table  []atomic.Pointer[peer] // by peer index (the epoll event carries it)
	handle func(p *peer, message []byte)
	ended  func(p *peer, err error)
	stop   *atomic.Bool
}

// pollers read all connections once they are detached; one per core by default.
type pollers struct {
	all  []*poller
	next atomic.Int64
	stop atomic.Bool
	wg   sync.WaitGroup
}

func newPollers(n, peers int, handle func(p *peer, message []byte), ended func(p *peer, err error)) (*pollers, error) {
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	ps := &pollers{}
	for i := 0; i < n; i++ {
		epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			return nil, err
		}
		pl := &poller{epfd: epfd, buf: make([]byte, 256<<10), table: make([]atomic.Pointer[peer], peers),
			handle: handle, ended: ended, stop: &ps.stop}
		ps.all = append(ps.all, pl)
		ps.wg.Add(1)
		go func() {
			defer ps.wg.Done()
			pl.loop()
		}()
	}
	return ps, nil
}

// add hands p to a poller: from now on its messages go to handle, its end to ended.
func (ps *pollers) add(p *peer) error {
	// what arrived with the handshake replies is handled first, by the poller's own goroutine
	pl := ps.all[int(ps.next.Add(1))%len(ps.all)]
	if err := syscall.SetNonblock(p.fd, true); err != nil {
		return err
	}
	pl.table[p.index].Store(p)
	event := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(p.fd), Pad: int32(p.index)}
	if len(p.pending) > 0 {
		event.Events |= syscall.EPOLLOUT // wakes the poller at once (a fresh socket is writable), see readable
	}
	return syscall.EpollCtl(pl.epfd, syscall.EPOLL_CTL_ADD, p.fd, &event)
}

// close stops the loops, then closes every connection (a close frame 1000 first, as a client
// that leaves normally does).
func (ps *pollers) close() {
	ps.stop.Store(true)
	ps.wg.Wait()
	for _, pl := range ps.all {
		for i := range pl.table {
			if p := pl.table[i].Load(); p != nil {
				_ = p.writeFrame(opClose, []byte{0x03, 0xe8})
				p.close()
			}
		}
		_ = syscall.Close(pl.epfd)
	}
}

func (pl *poller) loop() {
	events := make([]syscall.EpollEvent, 512)
	for !pl.stop.Load() {
		n, err := syscall.EpollWait(pl.epfd, events, 100)
		if err != nil {
			if err == syscall.EINTR {
				continue
			}
			panic(err)
		}
		for i := 0; i < n; i++ {
			p := pl.table[events[i].Pad].Load()
			if p == nil {
				continue
			}
			p.now = time.Now().UnixNano()               // per connection: a long batch of events must not age the last ones
			if events[i].Events&syscall.EPOLLOUT != 0 { // the one-off wake-up of add: back to reading only
				event := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(p.fd), Pad: int32(p.index)}
				_ = syscall.EpollCtl(pl.epfd, syscall.EPOLL_CTL_MOD, p.fd, &event)
			}
			if err := pl.readable(p, events[i].Events); err != nil {
				pl.table[p.index].Store(nil)
				_ = syscall.EpollCtl(pl.epfd, syscall.EPOLL_CTL_DEL, p.fd, nil)
				p.close()
				if !pl.stop.Load() {
					pl.ended(p, err)
				}
			}
		}
	}
}

// readable reads what p has (one read: epoll is level-triggered, what is left wakes it again)
// and handles the whole frames in it.
func (pl *poller) readable(p *peer, flags uint32) error {
	var data []byte
	n, err := syscall.Read(p.fd, pl.buf)
	switch {
	case err == syscall.EAGAIN || err == syscall.EINTR:
		n = 0
	case err != nil:
		return err
	case n == 0:
		if len(p.pending) == 0 {
			return closeError{1006}
		}
	}
	if len(p.pending) > 0 {
		p.pending = append(p.pending, pl.buf[:n]...)
		data = p.pending
	} else {
		data = pl.buf[:n]
	}
	used, ferr := p.frames(data, func(m []byte) bool {
		pl.handle(p, m)
		return true
	})
	rest := data[used:]
	switch {
	case len(rest) == 0:
		p.pending = p.pending[:0]
		if cap(p.pending) > 64<<10 {
			p.pending = nil // a big message passed: give its buffer back
		}
	case len(p.pending) > 0:
		p.pending = p.pending[:copy(p.pending, rest)]
	default:
		p.pending = append(p.pending[:0], rest...)
	}
	if ferr != nil {
		return ferr
	}
	if n == 0 && err == nil {
		return closeError{1006}
	}
	return nil
}
