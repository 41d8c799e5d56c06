// One WebSocket to the gateway that served this page. It authenticates with the first frame,
// matches replies to requests by `ref`, and reconnects by itself after a growing pause.
// A session lasts as long as its token: given a `renew` function (async, resolves to a fresh
// token of the same user), it re-authenticates on the open socket before the token expires.
// Events: 'status' {status, retryInMs}, 'welcome' (frame), 'frame' (pushes and unmatched
// frames), 'unauthorized' (the error frame that refused or ended the session), 'token' (the
// fresh token a re-authentication put in place).

export const CONNECTING = 'connecting';
export const ONLINE = 'online';
export const OFFLINE = 'offline';

const REQUEST_TIMEOUT_MS = 10_000;
const PING_EVERY_MS = 20_000; // notices a connection that died without a close
const BACKOFF_MS = [300, 600, 1200, 2000, 3000];
const AUTH_ERRORS = new Set(['unauthenticated', 'token_invalid', 'token_expired', 'token_revoked', 'unknown_user', 'user_deactivated']);
const RENEW_BEFORE_MS = 60_000; // renew a minute before expiry (at 80% of a short token's life)

export class RequestError extends Error {
  constructor(frame) {
    super(frame.message || frame.code);
    this.code = frame.code;
    this.frame = frame;
  }
}

export class Connection extends EventTarget {
  #ws = null;
  #refs = 0;
  #pending = new Map(); // ref -> {resolve, reject, timer}
  #attempt = 0;
  #retryTimer = null;
  #pingTimer = null;
  #renewTimer = null;
  #ended = null; // the error frame that ended a welcomed session (token_expired, token_revoked)
  #stopped = true;

  constructor(url, token, { renew = null } = {}) {
    super();
    this.url = url;
    this.token = token;
    this.renew = renew;
    this.status = OFFLINE;
  }

  get online() {
    return this.status === ONLINE;
  }

  start() {
    this.#stopped = false;
    if (!this.#ws) this.#open();
  }

  stop() {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
    if (this.#ws) this.#drop(this.#ws, 'signed out');
    this.#setStatus(OFFLINE);
  }

  /** Send a frame and wait for the frame that answers it (its ref); errors reject. */
  request(frame, timeoutMs = REQUEST_TIMEOUT_MS) {
    if (!this.online) return Promise.reject(new Error('offline'));
    const ref = `r${++this.#refs}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(ref);
        reject(new Error(`no answer to ${frame.op} in ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(ref, { resolve, reject, timer });
      this.#ws.send(JSON.stringify({ ...frame, ref }));
    });
  }

  /** Send a frame without waiting; false when offline (the caller keeps it for later). */
  post(frame) {
    if (!this.online) return false;
    this.#ws.send(JSON.stringify(frame));
    return true;
  }

  #open() {
    clearTimeout(this.#retryTimer);
    this.#setStatus(CONNECTING);
    const ws = new WebSocket(this.url);
    this.#ws = ws;
    this.#ended = null;
    let welcomed = false;
    let refusal = null;
    ws.onopen = () => ws.send(JSON.stringify({ op: 'auth', token: this.token }));
    ws.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (welcomed) return this.#dispatch(frame);
      if (frame.op === 'welcome') {
        welcomed = true;
        this.#attempt = 0;
        this.#setStatus(ONLINE);
        this.#keepAlive(ws);
        this.#scheduleRenewal(ws, frame.expires_in_ms);
        this.dispatchEvent(new CustomEvent('welcome', { detail: frame }));
      } else if (frame.op === 'error') {
        refusal = frame;
      }
    };
    ws.onclose = (event) => {
      if (this.#ws !== ws) return; // dropped on purpose already
      if (welcomed && refusal === null) refusal = this.#ended; // the frame that ended the session
      if (event.code === 4401 || AUTH_ERRORS.has(refusal?.code)) {
        this.#drop(ws, 'refused');
        this.#stopped = true;
        this.#setStatus(OFFLINE);
        this.dispatchEvent(new CustomEvent('unauthorized', { detail: refusal || { code: 'unauthenticated' } }));
        return;
      }
      this.#lost(ws, `closed (${event.code})`);
    };
  }

  #dispatch(frame) {
    if (frame.op === 'error' && frame.ref === undefined && AUTH_ERRORS.has(frame.code)) this.#ended = frame;
    const waiting = frame.ref !== undefined && this.#pending.get(frame.ref);
    if (waiting) {
      this.#pending.delete(frame.ref);
      clearTimeout(waiting.timer);
      if (frame.op === 'error') waiting.reject(new RequestError(frame));
      else waiting.resolve(frame);
      if (frame.op !== 'error' || frame.cmid === undefined) return;
    }
    this.dispatchEvent(new CustomEvent('frame', { detail: frame }));
  }

  /** Re-authenticate on this socket shortly before the token expires, when there is a way to renew. */
  #scheduleRenewal(ws, expiresInMs) {
    clearTimeout(this.#renewTimer);
    if (!this.renew || typeof expiresInMs !== 'number') return;
    const lead = expiresInMs < 5 * RENEW_BEFORE_MS ? expiresInMs * 0.2 : RENEW_BEFORE_MS;
    this.#renewTimer = setTimeout(() => this.#renewOn(ws), Math.max(0, expiresInMs - lead));
  }

  async #renewOn(ws) {
    if (this.#ws !== ws) return;
    try {
      const token = await this.renew();
      const reply = await this.request({ op: 'auth', token });
      if (this.#ws !== ws) return;
      this.token = token;
      this.dispatchEvent(new CustomEvent('token', { detail: token }));
      this.#scheduleRenewal(ws, reply.expires_in_ms);
    } catch (error) {
      // the session ends at expiry; 'unauthorized' then lets the page sign in again
      console.warn('could not renew the token', error);
    }
  }

  #keepAlive(ws) {
    clearInterval(this.#pingTimer);
    this.#pingTimer = setInterval(() => {
      if (this.#ws !== ws) return;
      this.request({ op: 'ping' }).catch(() => this.#lost(ws, 'no pong'));
    }, PING_EVERY_MS);
  }

  /** Forget a socket: fail what waits on it and close it (its late events are ignored). */
  #drop(ws, reason) {
    if (this.#ws === ws) this.#ws = null;
    clearInterval(this.#pingTimer);
    clearTimeout(this.#renewTimer);
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      ws.close();
    } catch {
      /* closing a socket that never opened */
    }
    for (const [ref, waiting] of this.#pending) {
      clearTimeout(waiting.timer);
      waiting.reject(new Error(`connection ${reason}`));
      this.#pending.delete(ref);
    }
  }

  #lost(ws, reason) {
    if (this.#ws !== ws) return;
    this.#drop(ws, reason);
    if (this.#stopped) return;
    const pause = BACKOFF_MS[Math.min(this.#attempt, BACKOFF_MS.length - 1)] * (0.8 + Math.random() * 0.4);
    this.#attempt += 1;
    this.#setStatus(OFFLINE, Math.round(pause));
    this.#retryTimer = setTimeout(() => this.#open(), pause);
  }

  #setStatus(status, retryInMs = null) {
    this.status = status;
    this.dispatchEvent(new CustomEvent('status', { detail: { status, retryInMs } }));
  }
}
