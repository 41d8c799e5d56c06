package main

// Opening many connections at a controlled rate, naming how they fail or end, tokens, progress.

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// closeCode names how a connection ended: its WebSocket close code (1006: the socket ended
// without one), or "error".
func closeCode(err error) string {
	var ce closeError
	if errors.As(err, &ce) {
		return strconv.Itoa(ce.code)
	}
	if errors.Is(err, syscall.ECONNRESET) {
		return "1006"
	}
	return "error"
}

// connectAll opens n connections, starting at most rate a second (and at most 256 handshakes at
// once), each through open (dial, then the protocol's handshake). It returns the peers that
// made it, in index order with nil for failures, and the failures by reason.
func connectAll(n int, rate float64, open func(i int) (*peer, error), failures *tally) []*peer {
	peers := make([]*peer, n)
	var wg sync.WaitGroup
	slots := make(chan struct{}, 256)
	var done atomic.Int64
	start := time.Now()
	stopProgress := progressEvery(2*time.Second, func() string {
		return fmt.Sprintf("connecting: %d/%d in %.1f s", done.Load(), n, time.Since(start).Seconds())
	})
	for i := 0; i < n; i++ {
		if rate > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))))
		}
		slots <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-slots }()
			p, err := open(i)
			if errors.Is(err, errNotKept) { // signed in, then let go by the mode: not a failure
				return
			}
			if err != nil {
				failures.add(failureName(err))
				return
			}
			peers[i] = p
			done.Add(1)
		}(i)
	}
	wg.Wait()
	stopProgress()
	return peers
}

// errNotKept: a handshake that succeeded, after which the mode closed the connection on purpose
// (chat --offline: a receiver that signs in once, then goes offline).
var errNotKept = errors.New("not kept")

// protocolError is a refusal by the server during a handshake: its error code.
type protocolError struct{ code string }

func (e protocolError) Error() string { return e.code }

func failureName(err error) string {
	var pe protocolError
	var ce closeError
	switch {
	case errors.As(err, &pe):
		return "connect:" + pe.code
	case errors.As(err, &ce):
		return "connect:close " + strconv.Itoa(ce.code)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connect:refused"
	case errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.ETIMEDOUT):
		return "connect:timeout"
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		return "connect:reset"
	}
	return "connect:other"
}

// progressEvery prints line() on stderr every period until the returned stop is called.
func progressEvery(period time.Duration, line func() string) (stop func()) {
	quit := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		ticker := time.NewTicker(period)
		defer ticker.Stop()
		for {
			select {
			case <-quit:
				return
			case <-ticker.C:
				fmt.Fprintln(os.Stderr, line())
			}
		}
	}()
	return func() { close(quit); <-finished }
}

// readTokens: one token per line, blank lines skipped.
func readTokens(path string) ([]string, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var tokens []string
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 64*1024), 1<<20)
	for scanner.Scan() {
		if line := strings.TrimSpace(scanner.Text()); line != "" {
			tokens = append(tokens, line)
		}
	}
	return tokens, scanner.Err()
}
