// Who is signed in: the token and user, kept for this tab (sessionStorage), so a reload stays
// signed in while two tabs can be two different users.

const KEY = 'imflow.session';

export class DevLoginOff extends Error {}

export function loadSession() {
  try {
    const session = JSON.parse(sessionStorage.getItem(KEY) || 'null');
    return session && session.token && session.user ? session : null;
  } catch {
    return null;
  }
}

export function saveSession(session) {
  sessionStorage.setItem(KEY, JSON.stringify(session));
  localStorage.setItem('imflow.lastUser', session.user); // prefills the next sign-in
}

export function clearSession() {
  sessionStorage.clear();
}

export const lastUser = () => localStorage.getItem('imflow.lastUser') || '';

/** A development token from the gateway (POST /dev/token); DevLoginOff where it has none. */
export async function devToken(user) {
  const response = await fetch('/dev/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user }),
  });
  if (response.status === 404 || response.status === 405) throw new DevLoginOff('development sign-in is off on this server');
  const reply = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(reply.error?.message || `sign-in failed (${response.status})`);
  return reply.token;
}

/** The user a token names (its `sub`); the server checks the signature, this only reads it. */
export function tokenUser(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(payload)).sub || null;
  } catch {
    return null;
  }
}
