// The social graph as this user sees it (docs/protocol.md, "Accounts, contacts, blocking and
// presence"): contacts, friend requests both ways, blocks, profiles, contacts' presence and the
// privacy setting. After every (re)connect it reads the lists again and watches the contacts'
// presence (watches end with their connection); then the replies and the pushes keep the store
// current: `contact` (a change by another device of mine, or by the other user), `privacy`,
// `presence`. Actions throw the server's refusal (a RequestError with its code) to the view.

const PROFILES_AT_ONCE = 100; // the `profiles` frame's limit
const WATCH_AT_ONCE = 1000; // the `watch_presence` frame's limit
const PROFILES_DELAY_MS = 30; // gathers the names a render needs into one request

function chunks(items, size) {
  const parts = [];
  for (let i = 0; i < items.length; i += size) parts.push(items.slice(i, i + size));
  return parts;
}

export class Contacts {
  #profilesTimer = null;
  #asking = new Set(); // users whose profile is on its way

  constructor(connection, store) {
    this.connection = connection;
    this.store = store;
    connection.addEventListener('welcome', () => this.refresh().catch((error) => console.warn('contacts refresh failed; again after the next reconnect', error)));
    connection.addEventListener('frame', (event) => this.#frame(event.detail));
    store.addEventListener('change', (event) => {
      if (event.detail.has('wanted')) this.#askProfilesSoon();
    });
  }

  /** Everything again from the server: the lists, every profile known, the contacts' presence. */
  async refresh() {
    const { connection, store } = this;
    const [contacts, requests, blocked] = await Promise.all([
      connection.request({ op: 'contacts' }),
      connection.request({ op: 'contact_requests' }),
      connection.request({ op: 'blocked' }),
    ]);
    store.contacts = new Map(contacts.contacts.map(({ user, since_ms }) => [user, { since_ms }]));
    store.incoming = new Map(requests.incoming.map(({ user, note, at_ms }) => [user, { note, at_ms }]));
    store.outgoing = new Map(requests.outgoing.map(({ user, note, at_ms }) => [user, { note, at_ms }]));
    store.blocked = new Map(blocked.users.map(({ user, at_ms }) => [user, at_ms]));
    for (const user of store.presence.keys()) if (!store.contacts.has(user)) store.presence.delete(user);
    // the lists carry names and avatars: they refresh what is known, custom fields stay
    for (const entry of [...contacts.contacts, ...requests.incoming]) this.#mergeProfile(entry);
    store.changed('people', 'list', 'pane');
    await Promise.all([
      this.loadProfiles([store.me, ...store.profiles.keys(), ...store.wanted]),
      this.#watch([...store.contacts.keys()]),
    ]);
  }

  /** Ask for the profiles of these users (all at once, in frames of 100). */
  async loadProfiles(users) {
    const { store } = this;
    const asked = [...new Set(users)].filter((user) => !this.#asking.has(user));
    if (!asked.length || !this.connection.online) return;
    for (const user of asked) this.#asking.add(user);
    try {
      for (const part of chunks(asked, PROFILES_AT_ONCE)) {
        const reply = await this.connection.request({ op: 'profiles', users: part });
        store.setProfiles(reply.profiles, reply.unknown);
        for (const user of part) store.wanted.delete(user);
        const mine = reply.profiles.find((profile) => profile.user === store.me);
        if (mine && mine.dm && mine.presence) this.#setPrivacy(mine); // when the server tells its own user
      }
    } finally {
      for (const user of asked) this.#asking.delete(user);
    }
  }

  #askProfilesSoon() {
    if (this.#profilesTimer) return;
    this.#profilesTimer = setTimeout(() => {
      this.#profilesTimer = null;
      // a failure leaves them wanted: the refresh after the next welcome asks again
      this.loadProfiles([...this.store.wanted]).catch(() => null);
    }, PROFILES_DELAY_MS);
  }

  #mergeProfile({ user, display_name: displayName, avatar_url: avatarUrl, status }) {
    const known = this.store.profiles.get(user);
    const profile = { user, custom: {}, status: null, ...(known && !known.unknown ? known : {}), display_name: displayName ?? null, avatar_url: avatarUrl ?? null };
    if (status) profile.status = status;
    this.store.profiles.set(user, profile);
  }

  async #watch(users) {
    for (const part of chunks(users, WATCH_AT_ONCE)) {
      try {
        const reply = await this.connection.request({ op: 'watch_presence', users: part });
        this.store.setPresence(reply.users);
      } catch (error) {
        // `forbidden`: one of them stopped being a contact meanwhile; the next refresh settles it
        console.warn('watch_presence', error.code || error.message);
      }
    }
  }

  // -- pushes and replies

  #frame(frame) {
    switch (frame.op) {
      case 'contact':
        this.#apply(frame);
        break;
      case 'privacy':
        this.#setPrivacy(frame);
        break;
      case 'presence':
        this.store.setPresence(frame.users || []);
        break;
      default:
        break;
    }
  }

  /** One `contact` frame, a reply or a push: the same event reads the same from either side. */
  #apply({ event, user, note, at_ms: atMs, since_ms: sinceMs }) {
    const { store } = this;
    switch (event) {
      case 'request_sent':
        store.outgoing.set(user, { note: note || '', at_ms: atMs });
        break;
      case 'request_received':
        store.incoming.set(user, { note: note || '', at_ms: atMs });
        break;
      case 'accepted':
        store.incoming.delete(user);
        store.outgoing.delete(user);
        store.contacts.set(user, { since_ms: sinceMs });
        this.#watch([user]);
        break;
      case 'declined': // theirs to mine, or mine to theirs (only one of the two can be pending)
      case 'cancelled':
        store.incoming.delete(user);
        store.outgoing.delete(user);
        break;
      case 'removed':
        this.#forget(user);
        break;
      case 'blocked': // blocking ends the contact and the requests both ways
        this.#forget(user);
        store.incoming.delete(user);
        store.outgoing.delete(user);
        store.blocked.set(user, atMs);
        break;
      case 'unblocked':
        store.blocked.delete(user);
        break;
      default:
        return;
    }
    store.changed('people', 'list', 'pane');
  }

  #forget(user) {
    const { store } = this;
    if (store.contacts.delete(user) && this.connection.online) {
      this.connection.request({ op: 'unwatch_presence', users: [user] }).catch(() => null);
    }
    store.presence.delete(user);
  }

  #setPrivacy({ dm, presence }) {
    this.store.privacy = { dm, presence };
    this.store.changed('people');
  }

  // -- actions (each answers with the server's `contact` or `privacy` frame, or throws its refusal)

  /** A change about `user`: op is contact_request (with `note`), contact_accept, contact_decline,
   * contact_cancel, contact_remove, block or unblock. */
  async change(op, user, fields = {}) {
    const reply = await this.connection.request({ op, user, ...fields });
    this.#apply(reply);
    return reply;
  }

  /** `changes`: {dm?: 'anyone'|'contacts', presence?: 'visible'|'hidden'}. */
  async setPrivacy(changes) {
    const reply = await this.connection.request({ op: 'set_privacy', ...changes });
    this.#setPrivacy(reply);
    return reply;
  }
}
