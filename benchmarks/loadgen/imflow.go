package main

// imflow's client protocol (docs/protocol.md; live rooms in docs/plugins.md): an auth frame
// answered by welcome, room.join / room.post requests answered with the same ref, room.batch
// frames, and for chat send / sent / msg.

import (
	"encoding/json"
	"fmt"
	"strconv"
)

type imflowTarget struct{}

var (
	imflowTimeKey   = []byte(`"text":"t=`)
	imflowNumberKey = []byte(`n=`)
	imflowBatch     = []byte(`"room.batch"`)
)

// imflowReply is the part of a non-batch frame the generator looks at.
type imflowReply struct {
	Op   string          `json:"op"`
	Ref  json.RawMessage `json:"ref"`
	Code string          `json:"code"`
	User string          `json:"user"`
	Cmid string          `json:"cmid"`
}

func (r imflowReply) ref() (int64, bool) {
	n, err := strconv.ParseInt(string(r.Ref), 10, 64)
	return n, err == nil
}

// request writes frame and reads until the reply whose op is want (or an error frame).
func imflowRequest(p *peer, frame []byte, want string) (imflowReply, error) {
	if err := p.write(frame); err != nil {
		return imflowReply{}, err
	}
	for {
		data, err := p.read()
		if err != nil {
			return imflowReply{}, err
		}
		if hasPrefixWithin(data, imflowBatch, 64) {
			continue
		}
		var reply imflowReply
		if err := json.Unmarshal(data, &reply); err != nil {
			return reply, fmt.Errorf("a frame that is not JSON: %w", err)
		}
		switch reply.Op {
		case want:
			return reply, nil
		case "error":
			return reply, protocolError{reply.Code}
		}
	}
}

// imflowAuth sends the auth frame and waits for welcome; p.user is the token's user.
func imflowAuth(p *peer, token string) error {
	frame, _ := json.Marshal(map[string]string{"op": "auth", "token": token})
	reply, err := imflowRequest(p, frame, "welcome")
	p.user = reply.User
	return err
}

func (imflowTarget) handshake(p *peer, token, room string) error {
	if token == "" {
		return fmt.Errorf("imflow needs a token per connection (--tokens)")
	}
	if err := imflowAuth(p, token); err != nil {
		return err
	}
	if room == "" {
		return nil
	}
	frame, _ := json.Marshal(map[string]any{"op": "room.join", "room": room, "ref": 0})
	_, err := imflowRequest(p, frame, "room.join")
	return err
}

// stampedText appends "t=<t> n=<n> <pad>" (the text every timed imflow payload carries).
func stampedText(dst []byte, n, t int64, pad string) []byte {
	dst = append(dst, "t="...)
	dst = strconv.AppendInt(dst, t, 10)
	dst = append(dst, " n="...)
	dst = strconv.AppendInt(dst, n, 10)
	if pad != "" {
		dst = append(dst, ' ')
		dst = append(dst, pad...)
	}
	return dst
}

func (imflowTarget) post(dst []byte, room string, n, t int64, pad string) []byte {
	dst = append(dst, `{"op":"room.post","ref":`...)
	dst = strconv.AppendInt(dst, n, 10)
	dst = append(dst, `,"room":`...)
	dst = strconv.AppendQuote(dst, room)
	dst = append(dst, `,"kind":"chat","text":"`...)
	dst = stampedText(dst, n, t, pad)
	return append(dst, `"}`...)
}

func (imflowTarget) receive(p *peer, frame []byte, ev *events) {
	if hasPrefixWithin(frame, imflowBatch, 64) {
		scanStamps(frame, imflowTimeKey, imflowNumberKey, func(s stamp) { ev.delivered(p, s) })
		return
	}
	var reply imflowReply
	if err := json.Unmarshal(frame, &reply); err != nil {
		ev.other("bad_json")
		return
	}
	switch reply.Op {
	case "room.batch":
		scanStamps(frame, imflowTimeKey, imflowNumberKey, func(s stamp) { ev.delivered(p, s) })
	case "room.post":
		if n, ok := reply.ref(); ok {
			ev.replied(p, n, "")
		}
	case "error":
		if n, ok := reply.ref(); ok {
			ev.replied(p, n, reply.Code)
		} else {
			ev.other(reply.Code)
		}
	}
}

func (imflowTarget) defaultRoom() string { return "bench-room" }
