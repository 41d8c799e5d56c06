package main

// What the modes need from a server's protocol: a handshake, a post frame, and received frames
// told apart (deliveries, replies to posts, everything else).

// events receives what a frame holds. delivered is called once per message a viewer got;
// replied once per reply to a post (code "" when it was accepted, else the error code);
// other for any other error code or notice (counted under errors).
type events struct {
	delivered func(p *peer, s stamp)
	replied   func(p *peer, n int64, code string)
	other     func(code string)
}

// target is one server's client protocol.
type target interface {
	// handshake authenticates p (token may be "" where the server allows it) and, if room is
	// not "", makes p a viewer of room; it returns a protocolError when the server refuses.
	handshake(p *peer, token, room string) error
	// post appends to dst the frame that posts payload n, sent at t (Unix ns), with pad, to room.
	post(dst []byte, room string, n, t int64, pad string) []byte
	// receive sorts one received frame into ev's callbacks; it may answer the server (pings).
	receive(p *peer, frame []byte, ev *events)
	// defaultRoom is the room (channel) used when --room is not given.
	defaultRoom() string
}

func targetNamed(name string) (target, bool) {
	switch name {
	case "imflow":
		return imflowTarget{}, true
	case "centrifugo":
		return centrifugoTarget{}, true
	}
	return nil, false
}
