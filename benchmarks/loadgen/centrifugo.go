package main

// Centrifugo v6's client protocol, JSON over WebSocket (github.com/centrifugal/protocol):
// commands {"id":N,"connect":{...}}, {"id":N,"subscribe":{"channel":..}},
// {"id":N,"publish":{"channel":..,"data":..}}; replies carry the command's id (and "error"
// {code, message} when refused); publications come as {"push":{"channel":..,"pub":{"data":..}}};
// the server's ping is an empty object {} that the client answers with {}. One WebSocket frame
// may hold several of these, one per line.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

type centrifugoTarget struct{}

const (
	centrifugoConnectID   = 1
	centrifugoSubscribeID = 2
	centrifugoPostBase    = 100 // publish commands carry id = base + the post's number
)

var (
	centrifugoTimeKey   = []byte(`"t":`)
	centrifugoNumberKey = []byte(`"n":`)
	centrifugoPush      = []byte(`{"push":`)
	centrifugoPing      = []byte(`{}`)
)

// centrifugoReply is the part of a reply the generator looks at.
type centrifugoReply struct {
	ID    int64 `json:"id"`
	Error *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Push *struct {
		Disconnect *struct {
			Code int `json:"code"`
		} `json:"disconnect"`
	} `json:"push"`
}

func (r centrifugoReply) code() string {
	if r.Error == nil {
		return ""
	}
	return "centrifugo." + strconv.Itoa(r.Error.Code)
}

// eachLine calls f with each non-empty line of frame.
func eachLine(frame []byte, f func([]byte)) {
	for len(frame) > 0 {
		line := frame
		if i := bytes.IndexByte(frame, '\n'); i >= 0 {
			line, frame = frame[:i], frame[i+1:]
		} else {
			frame = nil
		}
		if len(bytes.TrimSpace(line)) > 0 {
			f(line)
		}
	}
}

// centrifugoCommand writes command and reads until the reply with its id, answering pings.
func centrifugoCommand(p *peer, id int64, command []byte) error {
	if err := p.write(command); err != nil {
		return err
	}
	for {
		data, err := p.read()
		if err != nil {
			return err
		}
		var result error
		found := false
		eachLine(data, func(line []byte) {
			if bytes.Equal(bytes.TrimSpace(line), centrifugoPing) {
				_ = p.write(centrifugoPing)
				return
			}
			var reply centrifugoReply
			if json.Unmarshal(line, &reply) == nil && reply.ID == id {
				found = true
				if code := reply.code(); code != "" {
					result = protocolError{code}
				}
			}
		})
		if found {
			return result
		}
	}
}

func (centrifugoTarget) handshake(p *peer, token, room string) error {
	connect := map[string]any{}
	if token != "" {
		connect["token"] = token
	}
	frame, _ := json.Marshal(map[string]any{"id": centrifugoConnectID, "connect": connect})
	if err := centrifugoCommand(p, centrifugoConnectID, frame); err != nil {
		return err
	}
	if room == "" {
		return nil
	}
	frame, _ = json.Marshal(map[string]any{"id": centrifugoSubscribeID, "subscribe": map[string]string{"channel": room}})
	return centrifugoCommand(p, centrifugoSubscribeID, frame)
}

func (centrifugoTarget) post(dst []byte, room string, n, t int64, pad string) []byte {
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendInt(dst, centrifugoPostBase+n, 10)
	dst = append(dst, `,"publish":{"channel":`...)
	dst = strconv.AppendQuote(dst, room)
	dst = append(dst, `,"data":{"t":`...)
	dst = strconv.AppendInt(dst, t, 10)
	dst = append(dst, `,"n":`...)
	dst = strconv.AppendInt(dst, n, 10)
	dst = append(dst, `,"p":"`...)
	dst = append(dst, pad...)
	return append(dst, `"}}}`...)
}

func (centrifugoTarget) receive(p *peer, frame []byte, ev *events) {
	eachLine(frame, func(line []byte) {
		switch {
		case bytes.HasPrefix(line, centrifugoPush) && bytes.Contains(line, []byte(`"pub":`)):
			scanStamps(line, centrifugoTimeKey, centrifugoNumberKey, func(s stamp) { ev.delivered(p, s) })
		case bytes.Equal(bytes.TrimSpace(line), centrifugoPing):
			if err := p.write(centrifugoPing); err != nil {
				ev.other("pong_failed")
			}
		default:
			var reply centrifugoReply
			if err := json.Unmarshal(line, &reply); err != nil {
				ev.other("bad_json")
				return
			}
			switch {
			case reply.ID >= centrifugoPostBase:
				ev.replied(p, reply.ID-centrifugoPostBase, reply.code())
			case reply.Push != nil && reply.Push.Disconnect != nil:
				ev.other(fmt.Sprintf("centrifugo.disconnect.%d", reply.Push.Disconnect.Code))
			case reply.Error != nil:
				ev.other(reply.code())
			}
		}
	})
}

func (centrifugoTarget) defaultRoom() string { return "room:bench" }
