// Messages on their way: each keeps its cmid until the server's 'sent' frame names its mid
// and seq. Sends that get no answer are resent with the same cmid (the server stores them
// once), also after a reconnect or a page reload (the outbox lives in sessionStorage).
// States: 'sending' (first try), 'retrying' (no answer yet, or offline), 'failed' (refused:
// `code` and `error`, the refusal explained).

import { explain } from './refusals.js';

const RESEND_AFTER_MS = 5000;
// errors that a resend may cure; any other refusal is final until the user retries
const TRANSIENT = new Set(['unavailable', 'internal']);

export class Outbox extends EventTarget {
  #timers = new Map();

  constructor(connection, storageKey) {
    super();
    this.connection = connection;
    this.storageKey = storageKey;
    this.entries = new Map(); // cmid -> entry, in the order sent
    for (const entry of this.#load()) this.entries.set(entry.cmid, { ...entry, state: 'retrying' });
  }

  /** Entries waiting in one conversation, oldest first. */
  in(conversation) {
    return [...this.entries.values()].filter((entry) => entry.conversation === conversation);
  }

  /** Queue a message (`meta`: what the page shows of it meanwhile, never sent: an attachment's name and size). */
  submit({ conversation, type, body, meta = null }) {
    const entry = { cmid: newCmid(), conversation, type, body, meta, createdAt: Date.now(), state: 'sending', error: null, code: null };
    this.entries.set(entry.cmid, entry);
    this.#save();
    this.#transmit(entry);
    return entry;
  }

  /** Send everything still waiting (after a welcome). */
  resendAll() {
    for (const entry of this.entries.values()) if (entry.state !== 'failed') this.#transmit(entry);
  }

  retry(cmid) {
    const entry = this.entries.get(cmid);
    if (!entry) return;
    entry.state = 'retrying';
    entry.error = entry.code = null;
    this.#transmit(entry);
  }

  discard(cmid) {
    this.#finish(cmid);
  }

  /** The server stored it: the entry leaves the outbox (null if it was not ours or known). */
  settle(cmid) {
    const entry = this.entries.get(cmid);
    if (entry) this.#finish(cmid);
    return entry || null;
  }

  refused(cmid, frame) {
    const entry = this.entries.get(cmid);
    if (!entry) return;
    const transient = TRANSIENT.has(frame.code);
    entry.state = transient ? 'retrying' : 'failed';
    entry.error = transient ? null : explain(frame);
    entry.code = transient ? null : frame.code;
    if (!transient) clearTimeout(this.#timers.get(cmid));
    this.#changed();
  }

  /** The connection dropped: what was on its way may or may not have arrived. */
  offline() {
    for (const entry of this.entries.values()) if (entry.state === 'sending') entry.state = 'retrying';
    this.#changed();
  }

  #transmit(entry) {
    clearTimeout(this.#timers.get(entry.cmid));
    const frame = { op: 'send', ref: entry.cmid, cmid: entry.cmid, conversation: entry.conversation, type: entry.type, body: entry.body };
    if (!this.connection.post(frame)) {
      entry.state = 'retrying'; // resent after the next welcome
      this.#changed();
      return;
    }
    this.#timers.set(entry.cmid, setTimeout(() => {
      if (!this.entries.has(entry.cmid) || entry.state === 'failed') return;
      entry.state = 'retrying';
      this.#changed();
      this.#transmit(entry);
    }, RESEND_AFTER_MS));
    this.#changed();
  }

  #finish(cmid) {
    clearTimeout(this.#timers.get(cmid));
    this.#timers.delete(cmid);
    this.entries.delete(cmid);
    this.#save();
    this.#changed();
  }

  #changed() {
    this.dispatchEvent(new Event('change'));
  }

  #load() {
    try {
      return JSON.parse(sessionStorage.getItem(this.storageKey) || '[]');
    } catch {
      return [];
    }
  }

  #save() {
    const kept = [...this.entries.values()].map(({ cmid, conversation, type, body, meta, createdAt }) => ({ cmid, conversation, type, body, meta, createdAt }));
    sessionStorage.setItem(this.storageKey, JSON.stringify(kept));
  }
}

function newCmid() {
  const random = crypto.getRandomValues(new Uint32Array(2));
  return `w${Date.now().toString(36)}${random[0].toString(36)}${random[1].toString(36)}`;
}
