// Images and files (the attachments plugin): an upload asks for a URL (attachment.upload) and
// PUTs the bytes there; a message carries only the object's key. Download URLs expire, so each
// is asked for (attachment.url) when a message shows it, and again shortly before it expires.

import { RequestError } from './connection.js';

const RENEW_BEFORE_MS = 60_000;
const RETRY_AFTER_MS = 10_000;
export const SHOWN_IMAGES = new Set(['image/jpeg', 'image/png', 'image/gif', 'image/webp']); // sent as 'image'

export class Attachments {
  #urls = new Map(); // object key -> {url, expiresAt} | {pending: true, url} | {failedAt}

  constructor(connection, store) {
    this.connection = connection;
    this.store = store;
  }

  /** Upload a File to a conversation; resolves with its object key. A refusal rejects with a
   * RequestError (its code: attachment.too_large, attachment.type_refused, ...). */
  async upload(conversation, file) {
    const contentType = (file.type || 'application/octet-stream').toLowerCase();
    const grant = await this.connection.request({
      op: 'attachment.upload', conversation, name: file.name || 'file', size: file.size, content_type: contentType,
    });
    let response;
    try {
      response = await fetch(grant.url, { method: 'PUT', body: file, headers: grant.headers });
    } catch (error) {
      throw new RequestError({ code: 'attachment.upload_failed', message: `the upload did not get through (${error.message})` });
    }
    if (!response.ok) {
      const answer = await response.json().catch(() => ({}));
      throw new RequestError({ code: answer.code || 'attachment.upload_failed', message: answer.message || `the upload failed (HTTP ${response.status})` });
    }
    return grant.object;
  }

  /** The object's download URL while it is fresh, else null for now: it is asked for, and the
   * pane renders again when it comes. An old URL is kept until its successor arrives. */
  url(key) {
    const known = this.#urls.get(key);
    const now = Date.now();
    if (known?.expiresAt && known.expiresAt - now > RENEW_BEFORE_MS) return known.url;
    if (known?.pending || (known?.failedAt && now - known.failedAt < RETRY_AFTER_MS) || !this.connection.online) {
      return known?.url ?? null;
    }
    this.#urls.set(key, { pending: true, url: known?.url ?? null });
    this.connection.request({ op: 'attachment.url', object: key })
      .then((reply) => this.#urls.set(key, { url: reply.url, expiresAt: reply.expires_at_ms }))
      .catch(() => this.#urls.set(key, { failedAt: Date.now(), url: null }))
      .finally(() => this.store.changed('pane'));
    return known?.url ?? null;
  }
}

/** A size in bytes as a person reads it. */
export function byteSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(bytes < 10 * 1024 ? 1 : 0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}
