/**
 * The webhook signature contract (docs/job-events.md):
 *
 *   X-StationThis-Timestamp: <unix seconds>
 *   X-StationThis-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>
 *
 * Signing the timestamp with the body lets a receiver refuse replays of an old
 * delivery (it checks the timestamp is recent) without trusting an unsigned header.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export const HEADER_EVENT_ID = 'X-StationThis-Event-Id';
export const HEADER_TIMESTAMP = 'X-StationThis-Timestamp';
export const HEADER_SIGNATURE = 'X-StationThis-Signature';
export const HEADER_SUBSCRIPTION = 'X-StationThis-Subscription';

export function signWebhook(secret: string, timestamp: number, body: string): string {
  return `sha256=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}

export interface VerifyInput {
  secret: string;
  /** The X-StationThis-Timestamp header as received. */
  timestamp: string | undefined;
  /** The raw request body, byte for byte (not re-serialized JSON). */
  body: string;
  /** The X-StationThis-Signature header as received. */
  signature: string | undefined;
  /** Refuse deliveries older or newer than this (default 300 s). */
  toleranceSeconds?: number;
  nowSeconds?: number;
}

/** What a receiver runs: true only for a fresh delivery signed with `secret`. */
export function verifyWebhook(input: VerifyInput): boolean {
  const ts = Number(input.timestamp);
  if (!input.timestamp || !Number.isSafeInteger(ts) || !input.signature) return false;
  const now = input.nowSeconds ?? Math.floor(Date.now() / 1000);
  if (Math.abs(now - ts) > (input.toleranceSeconds ?? 300)) return false;
  const expected = Buffer.from(signWebhook(input.secret, ts, input.body));
  const given = Buffer.from(input.signature);
  return expected.length === given.length && timingSafeEqual(expected, given);
}
