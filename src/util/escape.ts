/**
 * Peer-supplied text (VQNs, TLS identities, NBD export names, what a target's admin queue
 * reports) shown to a person: in log lines and in a CLI's output. A peer must not be able to
 * forge a log line (newline, carriage return), move the cursor or recolour a terminal (ESC and
 * the other C0/C1 controls), or reorder what an operator reads (Unicode bidirectional controls,
 * line and paragraph separators). One family of functions, one set of dangerous characters:
 *
 * - quotePeerString: log lines and messages. Every such character, the quote and the backslash
 *   become escapes, and the result is quoted so an empty or space-padded name stays visible.
 * - escapePeerText: table cells and free text (no quotes around it). The same characters are
 *   escaped; quote and backslash are left alone (there is no quoting to break out of, and text
 *   the peer already escaped is not escaped twice).
 * - jsonForTerminal: JSON output. JSON.stringify escapes C0 controls, quotes and backslashes but
 *   lets C1 controls, bidi marks and U+2028/U+2029 through as raw characters; they become
 *   \uXXXX escapes, which JSON.parse reads back as the same string.
 */
/** Beyond the C0 controls: DEL and C1, then Unicode's invisible, bidi and separator characters. */
const DANGEROUS_BEYOND_C0 = '\\u007f-\\u009f\\u061c\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u2069\\ufeff\\ufff9-\\ufffb';
const DANGEROUS = `\\u0000-\\u001f${DANGEROUS_BEYOND_C0}`;
const UNSAFE = new RegExp(`[${DANGEROUS}"\\\\]`, 'gu');
const UNSAFE_IN_TEXT = new RegExp(`[${DANGEROUS}]`, 'gu');
/** Outside the C0 range, which JSON.stringify escapes itself. */
const UNSAFE_IN_JSON = new RegExp(`[${DANGEROUS_BEYOND_C0}]`, 'gu');
const HAS_DANGEROUS = new RegExp(`[${DANGEROUS}]`, 'u');

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

/** The first MAX_LOGGED_CHARS characters escaped by `unsafe`, and a note of the length when cut. */
function escapeCut(text: string, unsafe: RegExp): { escaped: string; note: string } {
  const cut = text.length > MAX_LOGGED_CHARS ? text.slice(0, MAX_LOGGED_CHARS) : text;
  return { escaped: cut.replace(unsafe, escapeChar), note: cut.length < text.length ? `…(${text.length} chars)` : '' };
}

/** `"text"` with every control, bidi, quote and backslash character escaped; long text is cut. */
export function quotePeerString(text: string): string {
  const { escaped, note } = escapeCut(text, UNSAFE);
  return `"${escaped}"${note}`;
}

/** `text` with every control and bidi character escaped (no quotes added); long text is cut. */
export function escapePeerText(text: string): string {
  const { escaped, note } = escapeCut(text, UNSAFE_IN_TEXT);
  return `${escaped}${note}`;
}

/** JSON.stringify, with the characters a terminal would act on escaped as \uXXXX. */
export function jsonForTerminal(value: unknown, replacer?: (key: string, value: unknown) => unknown, space?: number): string {
  const json = JSON.stringify(value, replacer, space) ?? 'null';
  return json.replace(UNSAFE_IN_JSON, (c) => `\\u${c.codePointAt(0)!.toString(16).padStart(4, '0')}`);
}

/** Whether `text` holds a character this family escapes as dangerous (controls, bidi, separators). */
export function hasControlCharacters(text: string): boolean {
  return HAS_DANGEROUS.test(text);
}
