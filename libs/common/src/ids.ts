import { ObjectId } from 'mongodb';

/**
 * The platform stores some ids as ObjectId and others (or legacy rows) as hex
 * strings. Queries must match both forms; writes keep whatever form the
 * collection uses (see stationthis-platform.md section 1.7).
 */
export type IdLike = string | ObjectId;

export function isObjectIdHex(value: string): boolean {
  return /^[0-9a-fA-F]{24}$/.test(value);
}

/** `{ $in: [ObjectId, string] }` for a field that may hold either form. */
export function idForms(id: IdLike): Array<string | ObjectId> {
  const text = String(id);
  return isObjectIdHex(text) ? [new ObjectId(text), text] : [text];
}

/** ObjectId for an `_id` lookup, or the string itself when it is not hex (legacy string ids). */
export function toObjectIdOrString(id: IdLike): ObjectId | string {
  if (id instanceof ObjectId) return id;
  return isObjectIdHex(id) ? new ObjectId(id) : id;
}

/** ObjectId, throwing a clear error for a malformed id (where the platform requires ObjectId). */
export function toObjectId(id: IdLike, what: string): ObjectId {
  if (id instanceof ObjectId) return id;
  if (!isObjectIdHex(id)) throw new Error(`${what} "${id}" is not a 24-character hex ObjectId.`);
  return new ObjectId(id);
}
