/**
 * Peer-supplied text (VQNs, TLS identities) in log lines. A peer must not be able to forge a
 * log line (newline, carriage return), move the cursor or recolour a terminal (ESC and the
 * other C0/C1 controls), or reorder what an operator reads (Unicode bidirectional controls,
 * line and paragraph separators). Every such character, the quote and the backslash become
 * escapes, and the result is quoted so an empty or space-padded name stays visible.
 */
const UNSAFE = /[\u0000-\u001f\u007f-\u009f"\\\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb]/gu;

/** Longest part of a peer string kept in a log line (VQNs are at most 255 bytes anyway). */
const MAX_LOGGED_CHARS = 300;

function escapeChar(c: string): string {
  switch (c) {
    case '"':
      return '\\"';
    case '\\':
      return '\\\\';
    case '\n':
      return '\\n';
    case '\r':
      return '\\r';
    case '\t':
      return '\\t';
  }
  const code = c.codePointAt(0)!;
  return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
}

/** `"text"` with every control, bidi, quote and backslash character escaped; long text is cut. */
export function quotePeerString(text: string): string {
  const cut = text.length > MAX_LOGGED_CHARS ? `${text.slice(0, MAX_LOGGED_CHARS)}` : text;
  const escaped = cut.replace(UNSAFE, escapeChar);
  return `"${escaped}"${cut.length < text.length ? `…(${text.length} chars)` : ''}`;
}
