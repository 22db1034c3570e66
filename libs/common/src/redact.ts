/**
 * Strips what must never reach a log or an error message from a URL:
 * credentials (mongodb://user:pass@…, https://key@…) and the query string
 * (presigned signatures, tokens). The host and path stay, so the message
 * still says where. Works for multi-host Mongo strings, which WHATWG URL
 * cannot parse.
 */
export function redactUrl(raw: string): string {
  try {
    const u = new URL(raw);
    if (u.hostname) {
      const hadUser = u.username !== '' || u.password !== '';
      const hadQuery = u.search !== '';
      u.username = '';
      u.password = '';
      u.search = '';
      u.hash = '';
      const out = `${u.toString()}${hadQuery ? '?…' : ''}`;
      return hadUser ? out.replace('//', '//***@') : out;
    }
  } catch {
    /* not a WHATWG URL (e.g. mongodb://a:1,b:2/db): the textual rules below */
  }
  const text = raw.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^@/?#]*@/i, '$1***@').replace(/\?.*$/s, '?…');
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}
