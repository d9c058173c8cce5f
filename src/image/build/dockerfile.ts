// Dockerfile syntax, as Docker's parser reads it (moby/buildkit frontend/dockerfile/parser and
// instructions): parser directives at the top (`# escape=`; `# syntax=` is ignored), comments, line
// continuations with the escape character, instructions case-insensitive, JSON (exec) form where an
// instruction has one, `--flag=value` options, and variable substitution ($VAR, ${VAR},
// ${VAR:-word}, ${VAR:+word}, ${VAR-word}, ${VAR+word}; the escape character quotes a $).

import { ImageError } from '../types.js';

export interface Instruction {
  /** Upper case: FROM, RUN, COPY ... */
  cmd: string;
  /** `--name=value` options (a repeated one: its last value). */
  flags: Record<string, string>;
  /** Every `--name=value` option, in order, repeats included (RUN --mount). */
  flagList: [string, string][];
  /** The rest of the line, continuation lines joined (the escape character and newline removed). */
  rest: string;
  /** The exec form's array, when the rest is a JSON array of strings. */
  json: string[] | null;
  /** The instruction as written, on one line (for history entries and the cache key). */
  original: string;
  /** 1-based line of the instruction's start. */
  line: number;
  /** Its here-documents (RUN, COPY, ADD): name, content (each line ends with a newline), and whether variables expand in it (an unquoted name). */
  heredocs?: { name: string; body: string; expand: boolean }[];
}

export interface Dockerfile {
  escape: string;
  instructions: Instruction[];
}

const KNOWN = new Set(['FROM', 'RUN', 'CMD', 'LABEL', 'MAINTAINER', 'EXPOSE', 'ENV', 'ADD', 'COPY', 'ENTRYPOINT', 'VOLUME', 'USER',
  'WORKDIR', 'ARG', 'ONBUILD', 'STOPSIGNAL', 'HEALTHCHECK', 'SHELL']);

function fail(line: number, msg: string): ImageError {
  return new ImageError(`Dockerfile line ${line}: ${msg}`, 1);
}

/** Parses a Dockerfile's text. */
export function parseDockerfile(text: string): Dockerfile {
  const lines = text.replace(/\r\n/g, '\n').split('\n');
  let escape = '\\';
  let i = 0;
  // Parser directives: only at the very top, before any other line (comment, blank or instruction).
  for (; i < lines.length; i++) {
    const m = /^\s*#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.*?)\s*$/.exec(lines[i]!);
    if (!m) break;
    const key = m[1]!.toLowerCase();
    if (key === 'escape') {
      if (m[2] !== '\\' && m[2] !== '`') throw fail(i + 1, `invalid escape character "${m[2]}" (\\ or \`)`);
      escape = m[2]!;
    } else if (key !== 'syntax' && key !== 'check') {
      break;
    }
  }
  const instructions: Instruction[] = [];
  while (i < lines.length) {
    const raw = lines[i]!;
    const start = i + 1;
    i++;
    if (/^\s*(#.*)?$/.test(raw)) continue;
    // Continuation: a line ending with the escape character (then optional whitespace) goes on;
    // comment and empty lines inside a continued instruction are skipped.
    let text = raw;
    while (new RegExp(`${escape === '\\' ? '\\\\' : '`'}\\s*$`).test(text) && i <= lines.length) {
      text = text.replace(new RegExp(`${escape === '\\' ? '\\\\' : '`'}\\s*$`), '');
      while (i < lines.length && /^\s*(#.*)?$/.test(lines[i]!)) i++;
      if (i >= lines.length) break;
      text += lines[i]!;
      i++;
    }
    const m = /^\s*([A-Za-z]+)(\s+([\s\S]*))?$/.exec(text);
    if (!m) throw fail(start, `cannot parse "${text.trim().slice(0, 60)}"`);
    const cmd = m[1]!.toUpperCase();
    if (!KNOWN.has(cmd)) throw fail(start, `unknown instruction: ${m[1]}`);
    let rest = (m[3] ?? '').trim();
    // Here-documents (BuildKit's): RUN, COPY and ADD take them; the lines up to each terminator belong
    // to the instruction. RUN <<EOF alone runs the document as its script; otherwise the shell gets
    // the command line with its documents (`RUN cat <<EOF > f`), as a shell reads them. COPY <<EOF
    // makes a file of each document (see the builder).
    let heredocScript: string | null = null;
    const docs = [...rest.matchAll(/<<(-?)(["']?)([A-Za-z_][A-Za-z0-9_]*)\2/g)];
    const heredocs: { name: string; body: string; expand: boolean }[] = [];
    if (docs.length > 0 && (cmd === 'RUN' || cmd === 'COPY' || cmd === 'ADD')) {
      const bodies: string[] = [];
      for (const d of docs) {
        const body: string[] = [];
        for (;;) {
          if (i >= lines.length) throw fail(start, `here-document ${d[3]} has no terminating line`);
          const line = d[1] === '-' ? lines[i]!.replace(/^\t+/, '') : lines[i]!;
          i++;
          if (line === d[3]) break;
          body.push(line);
        }
        bodies.push(body.join('\n'));
        heredocs.push({ name: d[3]!, body: body.map((l) => `${l}\n`).join(''), expand: d[2] === '' });
        if (cmd === 'RUN') rest += `\n${body.join('\n')}\n${d[3]}`;
      }
      if (cmd === 'RUN' && docs.length === 1 && /^<<-?(["']?)[A-Za-z_][A-Za-z0-9_]*\1$/.test((m[3] ?? '').trim())) heredocScript = bodies[0]!;
    }
    const flags: Record<string, string> = {};
    const flagList: [string, string][] = [];
    if (cmd !== 'RUN' || rest.startsWith('--')) {
      for (;;) {
        const f = /^--([A-Za-z][A-Za-z0-9-]*)(?:=(\S*))?(\s+|$)/.exec(rest);
        if (!f || cmd === 'ENV' || cmd === 'LABEL' || cmd === 'ARG') break;
        flags[f[1]!] = f[2] ?? 'true';
        flagList.push([f[1]!, f[2] ?? 'true']);
        rest = rest.slice(f[0].length);
      }
    }
    let json: string[] | null = null;
    if (heredocScript !== null) {
      rest = heredocScript;
    } else if (rest.startsWith('[')) {
      try {
        const v = JSON.parse(rest) as unknown;
        if (Array.isArray(v) && v.every((x) => typeof x === 'string')) json = v as string[];
      } catch {
        // shell form that starts with [
      }
    }
    instructions.push({ cmd, flags, flagList, rest, json, original: `${cmd} ${flagList.map(([k, v]) => `--${k}=${v} `).join('')}${rest}`.trim(), line: start,
      ...(heredocs.length > 0 ? { heredocs } : {}) });
  }
  return { escape, instructions };
}

/**
 * Substitutes variables in `text` (vars: name → value; an unset name is empty), as Docker's
 * shell-word lexer does for the instructions that take variables.
 */
export function expand(text: string, vars: ReadonlyMap<string, string>, escape = '\\'): string {
  let out = '';
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (ch === escape && text[i + 1] === '$') {
      out += '$';
      i++;
      continue;
    }
    if (ch !== '$') {
      out += ch;
      continue;
    }
    if (text[i + 1] === '{') {
      const close = text.indexOf('}', i + 2);
      if (close < 0) throw new ImageError(`missing } in "${text.slice(0, 80)}"`);
      const body = text.slice(i + 2, close);
      const m = /^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])([\s\S]*))?$/.exec(body);
      if (!m) throw new ImageError(`bad substitution: \${${body}}`);
      const [, name, op, word] = m;
      const set = vars.has(name!);
      const value = vars.get(name!) ?? '';
      const w = expand(word ?? '', vars, escape);
      if (op === ':-') out += value !== '' ? value : w;
      else if (op === '-') out += set ? value : w;
      else if (op === ':+') out += value !== '' ? w : '';
      else if (op === '+') out += set ? w : '';
      else out += value;
      i = close;
      continue;
    }
    const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(text.slice(i + 1));
    if (!m) {
      out += '$';
      continue;
    }
    out += vars.get(m[0]) ?? '';
    i += m[0].length;
  }
  return out;
}

/**
 * Splits `KEY=VALUE KEY2="VALUE 2"` (ENV, LABEL, ARG) into pairs, with quotes and the escape
 * character as a shell word has them; the legacy `ENV KEY VALUE` form when there is no "=".
 */
export function keyValues(rest: string, vars: ReadonlyMap<string, string>, escape: string, legacy: boolean): [string, string][] {
  const words = shellWords(rest, escape);
  if (words.length === 0) return [];
  if (legacy && !words[0]!.raw.includes('=')) {
    const key = words[0]!.raw;
    const value = rest.trim().slice(key.length).trim();
    return [[key, expand(unquote(value, escape), vars, escape)]];
  }
  return words.map((w) => {
    const eq = w.raw.indexOf('=');
    if (eq <= 0) return [expand(unquote(w.raw, escape), vars, escape), ''];
    return [expand(unquote(w.raw.slice(0, eq), escape), vars, escape), expand(unquote(w.raw.slice(eq + 1), escape), vars, escape)];
  });
}

interface Word {
  raw: string;
}

/** Splits on unquoted whitespace, keeping quotes (removed later by unquote). */
function shellWords(text: string, escape: string): Word[] {
  const out: Word[] = [];
  let cur = '';
  let quote: string | null = null;
  let any = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (ch === escape && quote !== "'" && i + 1 < text.length) {
      cur += ch + text[i + 1]!;
      i++;
      any = true;
      continue;
    }
    if (quote) {
      if (ch === quote) quote = null;
      cur += ch;
      continue;
    }
    if (ch === '"' || ch === "'") {
      quote = ch;
      cur += ch;
      any = true;
      continue;
    }
    if (/\s/.test(ch)) {
      if (any) out.push({ raw: cur });
      cur = '';
      any = false;
      continue;
    }
    cur += ch;
    any = true;
  }
  if (quote) throw new ImageError(`unterminated quote in "${text.slice(0, 80)}"`);
  if (any) out.push({ raw: cur });
  return out;
}

/** Removes quotes and escapes from one shell word (variables stay for expand; \$ is kept as \$). */
function unquote(word: string, escape: string): string {
  let out = '';
  let quote: string | null = null;
  for (let i = 0; i < word.length; i++) {
    const ch = word[i]!;
    if (ch === escape && quote !== "'" && i + 1 < word.length) {
      const next = word[i + 1]!;
      out += next === '$' ? `${escape}$` : next;
      i++;
      continue;
    }
    if (quote) {
      if (ch === quote) quote = null;
      else out += ch === '$' && quote === "'" ? `${escape}$` : ch;
      continue;
    }
    if (ch === '"' || ch === "'") {
      quote = ch;
      continue;
    }
    out += ch;
  }
  return out;
}

/** Splits a list of words (EXPOSE, VOLUME shell form, COPY sources) after substitution, quotes removed. */
export function words(rest: string, vars: ReadonlyMap<string, string>, escape: string): string[] {
  return shellWords(rest, escape).map((w) => expand(unquote(w.raw, escape), vars, escape));
}
