// What the bundle uses for `string-width` (yargs' and cliui's help layout): the width of a string in
// terminal columns, without the grapheme segmenter and the Unicode-property regular expressions
// (RGI emoji and others) whose compilation took 18-29 ms of every strata command's start, as yargs
// loads them. Escape sequences count 0, combining and control characters 0, East Asian wide and
// fullwidth characters 2, the rest 1: exact for the help texts strata prints.
import { eastAsianWidth } from 'get-east-asian-width';

const ANSI = /\u001B\[[0-9;?]*[ -/]*[@-~]|\u001B\][^\u0007\u001B]*(?:\u0007|\u001B\\)/g;

export default function stringWidth(text, options = {}) {
  if (typeof text !== 'string' || text.length === 0) return 0;
  const plain = options.countAnsiEscapeCodes ? text : text.replace(ANSI, '');
  let width = 0;
  for (const ch of plain) {
    const cp = ch.codePointAt(0);
    // controls, zero-width and combining marks
    if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0) || (cp >= 0x300 && cp <= 0x36f) || (cp >= 0x200b && cp <= 0x200f) || cp === 0xfeff ||
      (cp >= 0xfe00 && cp <= 0xfe0f) || (cp >= 0x20d0 && cp <= 0x20ff)) continue;
    width += eastAsianWidth(cp, { ambiguousAsWide: options.ambiguousIsNarrow === false });
  }
  return width;
}
