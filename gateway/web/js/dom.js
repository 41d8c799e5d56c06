// Small DOM and formatting helpers shared by the views.

/** h('div.card', {onclick}, child, ...): an element with classes, attributes and children. */
export function h(tag, attrs = {}, ...children) {
  const [name, ...classes] = tag.split('.');
  const el = document.createElement(name || 'div');
  if (classes.length) el.className = classes.join(' ');
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'dataset') {
      for (const [name, data] of Object.entries(value)) if (data !== null && data !== undefined) el.dataset[name] = data;
    }
    else if (key === 'html') el.innerHTML = value; // only for our own icon markup
    else el.setAttribute(key, value === true ? '' : value);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

// Stroke icons drawn inline (no icon font, no network).
const ICONS = {
  edit: '<path d="M4 20h4L19 9l-4-4L4 16v4z"/><path d="M14 6l4 4"/>',
  group: '<circle cx="9" cy="8" r="3.2"/><path d="M3 19c0-3.3 2.7-5.5 6-5.5s6 2.2 6 5.5"/><path d="M16 5.2a3 3 0 0 1 0 5.6M18 13.8c1.9.6 3 2.4 3 5.2"/>',
  send: '<path d="M4 12l16-8-6 16-2.5-6.5L4 12z"/>',
  back: '<path d="M15 5l-7 7 7 7"/>',
  packet: '<rect x="4" y="3" width="16" height="18" rx="2.5"/><path d="M4 8.5c2.5 2 5.2 3 8 3s5.5-1 8-3"/><circle cx="12" cy="11.5" r="2"/>',
  logout: '<path d="M14 4h4a2 2 0 0 1 2 2v12a2 2 0 0 1-2 2h-4"/><path d="M9 8l-4 4 4 4M5 12h11"/>',
  clock: '<circle cx="12" cy="12" r="8"/><path d="M12 8v4.5l3 2"/>',
  check: '<path d="M5 12.5l4.5 4.5L19 7.5"/>',
  alert: '<circle cx="12" cy="12" r="8.5"/><path d="M12 7.5v5.5M12 16.3v.2"/>',
  gift: '<rect x="3.5" y="9" width="17" height="11.5" rx="1.5"/><path d="M2.5 9h19v-2.8h-19zM12 6.2v14.3"/><path d="M12 6.2C10.5 3 7 2.6 7 4.6c0 1.4 2.5 1.6 5 1.6zM12 6.2c1.5-3.2 5-3.6 5-1.6 0 1.4-2.5 1.6-5 1.6z"/>',
  live: '<circle cx="12" cy="12" r="2.2"/><path d="M8.3 15.7a5.2 5.2 0 0 1 0-7.4M15.7 8.3a5.2 5.2 0 0 1 0 7.4M5.3 18.7a9.5 9.5 0 0 1 0-13.4M18.7 5.3a9.5 9.5 0 0 1 0 13.4"/>',
  retry: '<path d="M19 12a7 7 0 1 1-2.1-5"/><path d="M19 4.5V9h-4.5"/>',
  contacts: '<circle cx="12" cy="8" r="3.5"/><path d="M5 20c0-3.9 3.1-6.5 7-6.5s7 2.6 7 6.5"/>',
  addPerson: '<circle cx="10" cy="8" r="3.5"/><path d="M3 20c0-3.9 3.1-6.5 7-6.5 1.6 0 3 .4 4.2 1.2"/><path d="M18 14v6M15 17h6"/>',
  settings: '<circle cx="12" cy="12" r="3"/><path d="M12 3v2.5M12 18.5V21M3 12h2.5M18.5 12H21M5.6 5.6l1.8 1.8M16.6 16.6l1.8 1.8M5.6 18.4l1.8-1.8M16.6 7.4l1.8-1.8"/>',
  pin: '<path d="M9 4h6l-1 5 3 3v2H7v-2l3-3-1-5z"/><path d="M12 14v6"/>',
  mute: '<path d="M6 9h3l5-4v14l-5-4H6z"/><path d="M17 9.5l4 5M21 9.5l-4 5"/>',
  archive: '<rect x="3.5" y="4.5" width="17" height="4" rx="1"/><path d="M5 8.5v10a1.5 1.5 0 0 0 1.5 1.5h11a1.5 1.5 0 0 0 1.5-1.5v-10M10 12.5h4"/>',
  unread: '<path d="M20 11.5V18a2 2 0 0 1-2 2H6a2 2 0 0 1-2-2V8a2 2 0 0 1 2-2h8"/><circle cx="18.5" cy="6" r="2.5"/>',
  block: '<circle cx="12" cy="12" r="8.5"/><path d="M6 6l12 12"/>',
  attach: '<path d="M20 11.5l-7.8 7.8a5 5 0 0 1-7.1-7.1l8.5-8.5a3.3 3.3 0 0 1 4.7 4.7l-8.5 8.5a1.7 1.7 0 0 1-2.4-2.4l7.8-7.8"/>',
  file: '<path d="M14 3H7a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h10a2 2 0 0 0 2-2V8z"/><path d="M14 3v5h5M9 13h6M9 17h6"/>',
  read: '<path d="M2.5 12.5L7 17l9.5-9.5"/><path d="M11.5 16l1 1L22 7.5"/>',
};

export function icon(name, label) {
  const el = h('span.icon', { 'aria-hidden': label ? null : 'true', title: label || null });
  el.innerHTML = `<svg viewBox="0 0 24 24" width="20" height="20" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round">${ICONS[name]}</svg>`;
  return el;
}

/** A round avatar with the name's initial, its colour fixed by the name; the picture at `url`
 * over it when there is one (the initial shows if it fails to load); a presence dot when
 * `presence` ({online}) is given. */
export function avatar(name, kind = 'user', { url = null, presence = null } = {}) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  const hue = hash % 360;
  const initial = [...name.trim()][0]?.toUpperCase() || (kind === 'group' ? '#' : '?');
  const picture = url ? h('img', { src: url, alt: '', loading: 'lazy', referrerpolicy: 'no-referrer', onerror: (event) => event.target.remove() }) : null;
  const dot = presence ? h('span.presence-dot', { dataset: { online: String(Boolean(presence.online)) } }) : null;
  return h(`span.avatar.avatar-${kind}`, { style: `--hue:${hue}`, 'aria-hidden': 'true' }, initial, picture, dot);
}

/** What a presence state says: 'Online', 'Last seen …', or 'Offline' (hidden, or never seen). */
export function presenceText(state) {
  if (!state) return '';
  if (state.online) return 'Online';
  if (!state.last_seen_ms) return 'Offline';
  const minutes = Math.floor((Date.now() - state.last_seen_ms) / 60e3);
  if (minutes < 1) return 'Last seen just now';
  if (minutes < 60) return `Last seen ${minutes} min ago`;
  const day = dayLabel(state.last_seen_ms);
  const when = day === 'Today' || day === 'Yesterday' ? day.toLowerCase() : `on ${date.format(state.last_seen_ms)}`;
  return `Last seen ${when} at ${clockTime(state.last_seen_ms)}`;
}

const time = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const weekday = new Intl.DateTimeFormat(undefined, { weekday: 'short' });
const date = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short' });
const longDate = new Intl.DateTimeFormat(undefined, { weekday: 'long', day: 'numeric', month: 'long' });

export const clockTime = (ms) => time.format(ms);

/** A conversation list timestamp: the time today, the weekday this week, else the date. */
export function shortWhen(ms) {
  const now = new Date();
  const then = new Date(ms);
  if (then.toDateString() === now.toDateString()) return time.format(then);
  if (now - then < 6 * 86400e3) return weekday.format(then);
  return date.format(then);
}

export function dayLabel(ms) {
  const then = new Date(ms);
  const today = new Date();
  const yesterday = new Date(today.getTime() - 86400e3);
  if (then.toDateString() === today.toDateString()) return 'Today';
  if (then.toDateString() === yesterday.toDateString()) return 'Yesterday';
  return longDate.format(then);
}

export const money = (cents) => `¥${(cents / 100).toFixed(2)}`;

export const USER_ID = /^[A-Za-z0-9_.-]{1,64}$/;
