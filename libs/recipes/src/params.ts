/**
 * Parameter-schema helpers shared by every recipe: zod 4 field builders that
 * carry their allowed range, validation that reports every problem at once
 * with a dotted path, and the JSON Schema export for UIs.
 */
import { z } from 'zod';
import type { ValidationIssue, ValidationResult } from './contract';

/** Path prefix of every parameter issue, so callers can merge issues from several sources. */
export const PARAMETERS_PATH = 'parameters';

/** Integer field in [min, max] with a default. */
export function intField(min: number, max: number, def: number, description: string) {
  return z.number().int().min(min).max(max).default(def).describe(description);
}

/** Integer field in [min, max], a multiple of `step`, with a default. */
export function stepField(min: number, max: number, step: number, def: number, description: string) {
  return z.number().int().min(min).max(max).multipleOf(step).default(def).describe(description);
}

/** One of a few integer values (e.g. 32 | 64). */
export function choiceField<const T extends readonly [number, ...number[]]>(values: T, def: T[number], description: string) {
  return z.literal(values).default(def as never).describe(description);
}

/** Number field in [min, max] with a default. */
export function numberField(min: number, max: number, def: number, description: string) {
  return z.number().min(min).max(max).default(def).describe(description);
}

export function enumField<const T extends readonly [string, ...string[]]>(values: T, def: T[number], description: string) {
  return z.enum(values).default(def as never).describe(description);
}

export function boolField(def: boolean, description: string) {
  return z.boolean().default(def).describe(description);
}

/** Human-readable allowed range of one field, derived from the schema itself. */
export function allowedRange(field: z.ZodType): string | undefined {
  let inner: z.ZodType = field;
  // Unwrap ZodDefault / ZodOptional layers.
  for (let i = 0; i < 5; i++) {
    const def = (inner as unknown as { def: { type: string; innerType?: z.ZodType } }).def;
    if ((def.type === 'default' || def.type === 'optional' || def.type === 'prefault') && def.innerType) {
      inner = def.innerType;
    } else {
      break;
    }
  }
  if (inner instanceof z.ZodNumber) {
    const lo = inner.minValue;
    const hi = inner.maxValue;
    const range = `${fmt(lo)}..${fmt(hi)}`;
    const step = (inner as unknown as { _zod: { bag: { multipleOf?: number } } })._zod.bag.multipleOf;
    return `${inner.isInt ? 'integer ' : ''}${range}${step ? `, multiple of ${step}` : ''}`;
  }
  if (inner instanceof z.ZodLiteral) {
    return [...inner.values].map(String).join('|');
  }
  if (inner instanceof z.ZodEnum) {
    return (inner.options as string[]).join('|');
  }
  if (inner instanceof z.ZodBoolean) {
    return 'true|false';
  }
  return undefined;
}

function fmt(n: number | null): string {
  if (n === null || !Number.isFinite(n)) return '';
  // 1e-6 reads better than 0.000001 for learning rates.
  return Math.abs(n) > 0 && Math.abs(n) < 1e-3 ? n.toExponential() : String(n);
}

/** Validate raw user input against a strict object schema; every problem at once. */
export function validateWith<P>(schema: z.ZodObject, raw: unknown, extra?: (value: P) => ValidationIssue[]): ValidationResult<P> {
  const input = raw === undefined || raw === null ? {} : raw;
  const result = schema.safeParse(input);
  if (!result.success) {
    const issues: ValidationIssue[] = [];
    for (const issue of result.error.issues) {
      if (issue.code === 'unrecognized_keys') {
        for (const key of issue.keys) {
          issues.push({
            path: joinPath([...issue.path, key]),
            message: `unknown parameter '${key}'`,
            allowed: Object.keys(schema.shape).join(', '),
          });
        }
        continue;
      }
      const top = issue.path[0];
      const field = typeof top === 'string' ? (schema.shape as Record<string, z.ZodType>)[top] : undefined;
      issues.push({
        path: joinPath(issue.path),
        message: issue.message,
        ...(field && allowedRange(field) ? { allowed: allowedRange(field) } : {}),
      });
    }
    return { ok: false, issues };
  }
  const value = result.data as P;
  const extraIssues = extra ? extra(value) : [];
  if (extraIssues.length > 0) return { ok: false, issues: extraIssues };
  return { ok: true, value };
}

export function joinPath(path: ReadonlyArray<PropertyKey>): string {
  return [PARAMETERS_PATH, ...path.map((p) => String(p))].join('.');
}

/** JSON Schema (draft 2020-12) of what a UI may send: fields with defaults are optional. */
export function toJsonSchema(schema: z.ZodType, title: string): Record<string, unknown> {
  const json = z.toJSONSchema(schema, { target: 'draft-2020-12', io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
  return { ...json, title };
}

/** Throw a readable error listing every issue (used where input must already be valid). */
export function assertValid<P>(result: ValidationResult<P>, what: string): P {
  if (result.ok) return result.value;
  const lines = result.issues.map((i) => `  - ${i.path}: ${i.message}${i.allowed ? ` (allowed: ${i.allowed})` : ''}`);
  throw new Error(`${what}: invalid parameters\n${lines.join('\n')}`);
}
