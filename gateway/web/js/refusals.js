// What a refusal means to a person: the server's stable error codes (docs/protocol.md,
// "Errors") as a sentence that names the code, so the cause is clear and a test can read it.

const EXPLAINED = {
  blocked: 'one of you has blocked the other',
  contacts_only: 'they take messages from their contacts only',
  user_deactivated: 'that account is deactivated',
  conflict: 'that is done already (already contacts, a request pending, or blocked already)',
  not_found: 'not found: no such user, request, contact or conversation',
};

/** A refusal ({code, message}: an error frame or a RequestError) as one line, its code last. */
export function explain(refusal) {
  const code = refusal?.code;
  if (!code) return refusal?.message || 'Something went wrong';
  const meaning = EXPLAINED[code];
  // the other codes (plugin codes have a dot) say it best in the server's own words (a limit, a wait)
  const text = meaning ? `${meaning[0].toUpperCase()}${meaning.slice(1)}` : refusal.message;
  return text ? `${text} (${code})` : code;
}

/** Show a refusal in an element that says what went wrong (a form's error line): text and data-code. */
export function showRefusal(el, refusal) {
  el.textContent = refusal ? explain(refusal) : '';
  el.dataset.code = refusal?.code || '';
}
