/**
 * A tiny TOML writer for the engine config files. It supports exactly what
 * the recipes render: top-level keys, tables, arrays of tables (one level of
 * nesting, e.g. [[datasets.subsets]]), strings, numbers, booleans and flat
 * arrays of those. Strings are always written as escaped basic strings, so
 * user text can never break out of a value.
 */

/**
 * A number the engine's schema requires as a TOML float: JavaScript has one
 * number type, and `30` would be read back by Python as an int, which
 * musubi-tuner's voluptuous schema rejects for `source_fps` (type float).
 */
export class TomlFloat {
  constructor(readonly value: number) {}
}

export function tomlFloat(value: number): TomlFloat {
  return new TomlFloat(value);
}

export type TomlScalar = string | number | boolean | TomlFloat;
export type TomlValue = TomlScalar | TomlScalar[];
export type TomlTable = { [key: string]: TomlValue | TomlTable | TomlTable[] | undefined };

const BARE_KEY = /^[A-Za-z0-9_-]+$/;

export function tomlString(s: string): string {
  let out = '"';
  for (const ch of s) {
    const code = ch.codePointAt(0)!;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (code < 0x20 || code === 0x7f) out += `\\u${code.toString(16).padStart(4, '0')}`;
    else out += ch;
  }
  return out + '"';
}

function key(k: string): string {
  return BARE_KEY.test(k) ? k : tomlString(k);
}

function scalar(v: TomlScalar): string {
  if (typeof v === 'string') return tomlString(v);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (v instanceof TomlFloat) {
    if (!Number.isFinite(v.value)) throw new Error(`TOML cannot encode number ${v.value}`);
    const s = String(v.value);
    return /[.eE]/.test(s) ? s : `${s}.0`;
  }
  if (!Number.isFinite(v)) throw new Error(`TOML cannot encode number ${v}`);
  return String(v);
}

function value(v: TomlValue): string {
  return Array.isArray(v) ? `[${v.map(scalar).join(', ')}]` : scalar(v);
}

function isTable(v: unknown): v is TomlTable {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof TomlFloat);
}

function isTableArray(v: unknown): v is TomlTable[] {
  return Array.isArray(v) && v.length > 0 && v.every(isTable);
}

function writeBody(table: TomlTable, prefix: string, lines: string[]): void {
  for (const [k, v] of Object.entries(table)) {
    if (v === undefined || isTable(v) || isTableArray(v)) continue;
    lines.push(`${key(k)} = ${value(v as TomlValue)}`);
  }
  for (const [k, v] of Object.entries(table)) {
    const name = prefix ? `${prefix}.${key(k)}` : key(k);
    if (isTable(v)) {
      lines.push('', `[${name}]`);
      writeBody(v, name, lines);
    } else if (isTableArray(v)) {
      for (const item of v) {
        lines.push('', `[[${name}]]`);
        writeBody(item, name, lines);
      }
    }
  }
}

export function toToml(table: TomlTable): string {
  const lines: string[] = [];
  writeBody(table, '', lines);
  return lines.join('\n').replace(/^\n+/, '') + '\n';
}
