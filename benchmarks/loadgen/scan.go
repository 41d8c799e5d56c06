package main

// Finding the stamps in received frames without decoding them: a room batch holds many
// messages and every viewer gets every batch, so this is the generator's hot path.

import "bytes"

// stamp is what a sent payload carries: the send time (Unix ns) and the payload's number.
type stamp struct {
	t int64
	n int64
}

// digits parses the decimal integer at the start of b: its value and length (0: none).
func digits(b []byte) (int64, int) {
	var v int64
	i := 0
	for i < len(b) && b[i] >= '0' && b[i] <= '9' && i < 19 {
		v = v*10 + int64(b[i]-'0')
		i++
	}
	return v, i
}

// scanStamps calls found for each stamp in frame: timeKey followed by digits, then, within the
// next 64 bytes, numberKey followed by digits. imflow: timeKey `"text":"t=`, numberKey `n=`
// (the text "t=<ns> n=<k> <padding>"); Centrifugo: `"t":` and `"n":` (data {"t","n","p"}).
// It returns how many it found.
func scanStamps(frame, timeKey, numberKey []byte, found func(stamp)) int {
	// searched by its rarest byte: '=' hardly occurs in JSON, where '"' is every few bytes
	anchor := bytes.IndexByte(timeKey, '=')
	if anchor < 0 {
		anchor = len(timeKey) - 1
	}
	count := 0
	for {
		i := bytes.IndexByte(frame[min(anchor, len(frame)):], timeKey[anchor])
		if i < 0 {
			return count
		}
		// i is where the anchor byte is, counted from frame[anchor:]: the key would start at i
		if !bytes.Equal(frame[i:min(i+len(timeKey), len(frame))], timeKey) {
			frame = frame[i+anchor+1:]
			continue
		}
		frame = frame[i+len(timeKey):]
		t, nt := digits(frame)
		if nt == 0 {
			continue
		}
		frame = frame[nt:]
		window := frame[:min(len(frame), 64)]
		j := bytes.Index(window, numberKey)
		if j < 0 {
			continue
		}
		n, nn := digits(window[j+len(numberKey):])
		if nn == 0 {
			continue
		}
		frame = frame[j+len(numberKey)+nn:]
		found(stamp{t, n})
		count++
	}
}

// hasPrefixWithin: is key among the first limit bytes of frame (how a frame's op is told
// without parsing it: the op comes first in every frame the servers write).
func hasPrefixWithin(frame, key []byte, limit int) bool {
	return bytes.Contains(frame[:min(len(frame), limit)], key)
}
